"""The ``dragsdk`` command line."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from .defaults import DEFAULT_MODEL, MODEL_ENV, RANDOM_MODELS, default_model

_MODEL_HELP = (
    f"hub id, diffusers folder (SD 1.x, 2.x, SDXL), .safetensors / .ckpt checkpoint, or a built-in random "
    f"model for tests ({', '.join(RANDOM_MODELS)}) [default: ${MODEL_ENV}, else {DEFAULT_MODEL}]"
)
ModelConfigOption = Annotated[
    Path | None,
    typer.Option(
        help="for a .safetensors / .ckpt --model: a diffusers folder of the same architecture whose configs and "
        "tokenizers describe it (offline; default: the hub repository diffusers infers)"
    ),
]
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Drag-style editing of real images with diffusion models.",
)
_state = {"debug": False}


@app.callback()
def _options(
    debug: Annotated[
        bool, typer.Option("--debug", help="show the Python traceback of an error (or DRAGSDK_DEBUG=1)")
    ] = False,
) -> None:
    _state["debug"] = debug


def _registry() -> Any:
    from .registry import get_registry

    return get_registry()


def _print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def _load_editor(model: str | None, **kw: Any) -> Any:
    """The Editor of ``--model`` (default :func:`~dragsdk.defaults.default_model`: never a random-weight model)."""
    from .editor import Editor
    from .errors import ModelNotFoundError

    name = model or default_model()
    from_env = os.environ.get(MODEL_ENV, "").strip() == name  # --model reads the variable when not given
    try:
        return Editor.from_pretrained(name, **kw)
    except (
        ModelNotFoundError
    ) as e:  # ModelLoadError too: say where the name came from when the user did not type it
        if from_env:
            raise type(e)(f"model {name!r} from ${MODEL_ENV} (unset it or pass --model): {e}") from e
        raise


def _warn_random(editor: Any) -> None:
    """Name a random-weight model on stderr next to what it made (nothing it outputs is a real edit)."""
    from .models import random_weights_warning

    warning = random_weights_warning(editor.model)
    if warning:
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _one_line(e: BaseException) -> str:
    """An error as one line of at most 1000 characters; an OSError names its file."""
    if (
        isinstance(e, OSError)
        and not str(e).startswith(("out:", "report:", "trace:"))
        and e.filename is not None
    ):
        text = f"{e.filename}: {e.strerror or e}"
    elif isinstance(e, RecursionError):
        text = "the input is nested too deeply"
    else:
        text = str(e) or type(e).__name__
    text = " ".join(text.split())
    return text if len(text) <= 1000 else text[:1000] + "…"


@contextmanager
def _user_errors() -> Iterator[None]:
    """User mistakes (dragsdk errors, invalid spec fields, unreadable or unwritable files) end the command with one
    line on stderr and exit status 2; with ``--debug`` (or ``DRAGSDK_DEBUG=1``) they propagate with the traceback."""
    from pydantic import ValidationError

    from .errors import DragSDKError

    debug = _state["debug"] or os.environ.get("DRAGSDK_DEBUG", "") not in ("", "0")
    try:
        yield
    except typer.Exit:
        raise
    except ValidationError as e:
        if debug:
            raise
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        where = (
            f"spec field {loc}" if loc else f"spec ({e.title})"
        )  # a model-level validator has no field path
        _fail(f"{where}: {first['msg']} ({e.error_count()} error(s))")
    except (DragSDKError, OSError, UnicodeError, RecursionError) as e:
        if debug:
            raise
        _fail(_one_line(e))


def _plan_before_loading(spec_obj: dict[str, Any], image: Any, model_name: str) -> None:
    """Validate and plan the edit before the model loads, so a spec this image cannot take (a patch larger than
    the grid, an object scaled below one cell, too few steps) fails in a second, not after loading. Needs the
    working size (:func:`dragsdk.modes.working_canvas`): the spec's resolution, else the mode's own rule or the
    model's default, read without loading it (:func:`dragsdk.models.peek_layout`); skipped when neither is known, or when a mask is to be
    proposed by the model (the edit then plans after loading, with the same errors)."""
    from .models import peek_layout
    from .modes import PlanContext, build_plan, working_canvas
    from .specfile import spec_from_json

    registry = _registry()
    spec = spec_from_json(dict(spec_obj), registry.spec_models())
    if spec.mode not in registry.modes:
        return  # the edit names the unknown mode with the installed ones
    s = spec.sampler
    family, resolution = peek_layout(model_name) or (None, None)
    canvas = working_canvas(registry.modes[spec.mode], spec, image.size, family, resolution)
    if canvas is None:
        return

    class _NeedsModel(Exception):
        pass

    def needs_model(xy: Any) -> Any:
        raise _NeedsModel

    try:
        build_plan(
            registry.modes[spec.mode],
            spec,
            PlanContext(canvas, image, s.steps, suggest_mask=needs_model),
        )
    except _NeedsModel:
        return


def _edit_inputs(
    input: Path,
    spec: Path | None,
    reference: Path | None,
    mode: str | None,
    assignments: list[str],
    sampler_overrides: dict[str, int | None],
) -> tuple[Path, dict[str, Any], list[Path]]:
    """``dragsdk edit``'s image path, its spec (the sample's or the file's, converted to ``mode``, with ``--set`` and
    the sampler options applied) and the input files no output may overwrite."""
    from .samples import detect_sample, load_sample
    from .specfile import apply_overrides, input_files, read_spec_file

    if not input.exists():
        _fail(f"{input}: no such image or sample folder")
    protect: list[Path] = []
    spec_obj: dict[str, Any] | None = None
    if input.is_dir():
        if detect_sample(input) is None and spec is None:
            _fail(f"{input} is a folder but not a DragBench or Drag100 sample; give an image and --spec")
        image_path, spec_obj = load_sample(input)
        protect += [p for p in input.iterdir() if p.is_file()]
    else:
        if spec is None:
            _fail("an image input needs --spec SPEC.json (or give a sample folder)")
        image_path = input
        protect.append(input)
    if spec is not None:
        spec_obj = read_spec_file(spec)
        protect.append(spec)
    assert spec_obj is not None
    if reference is not None:
        spec_obj["reference"] = str(reference)
        protect.append(reference)
    registered = _registry().modes
    if mode is not None and spec_obj.get("mode") != mode:
        if mode not in registered:
            _fail(f"unknown mode {mode!r}; installed modes are {sorted(registered)}")
        spec_obj = registered[mode].convert_spec(spec_obj, input if input.is_dir() else None)
    spec_obj = apply_overrides(spec_obj, assignments)
    sampler = dict(spec_obj.get("sampler") or {})
    for key, value in sampler_overrides.items():
        if value is not None:
            sampler[key] = value
    spec_obj["sampler"] = sampler
    protect += input_files(spec_obj)
    return image_path, spec_obj, protect


@app.command()
def edit(
    input: Annotated[
        Path, typer.Argument(help="an image (with --spec), or a DragBench / Drag100 sample folder")
    ],
    spec: Annotated[Path | None, typer.Option(help="edit spec JSON (mode, geometry, settings)")] = None,
    model: Annotated[str | None, typer.Option(envvar=MODEL_ENV, show_default=False, help=_MODEL_HELP)] = None,
    model_config: ModelConfigOption = None,
    lora: Annotated[
        list[str] | None, typer.Option(help="LoRA weights to fuse, PATH[:SCALE] (repeatable)")
    ] = None,
    backend: Annotated[str, typer.Option(help="backend name or 'auto'")] = "auto",
    steps: Annotated[int | None, typer.Option(help="override the spec's DDIM steps")] = None,
    seed: Annotated[int | None, typer.Option(help="override the spec's seed")] = None,
    resolution: Annotated[int | None, typer.Option(help="override the working resolution (pixels)")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="set a spec field, FIELD=VALUE (VALUE as JSON, else text; dotted for nested, e.g. "
            "sampler.eta=0.5; repeatable; after --mode's conversion)",
        ),
    ] = None,
    mode: Annotated[
        str | None,
        typer.Option(
            help="run as this mode, converting the sample's or spec's own "
            "(e.g. a DragBench folder with --mode region-drag)"
        ),
    ] = None,
    reference: Annotated[Path | None, typer.Option(help="reference image (appearance, paste)")] = None,
    out: Annotated[Path, typer.Option(help="edited image path")] = Path("edited.png"),
    report: Annotated[Path | None, typer.Option(help="write the report JSON here")] = None,
    trace: Annotated[
        Path | None,
        typer.Option(
            help="write the per-step trace (.npz: timestep, latent before / "
            "after, energies, guidance norm) here"
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="validate and print the plan (working size, steps, LoRA training, UNet evaluations) without "
            "editing or writing anything",
        ),
    ] = False,
    frame: Annotated[
        int | None,
        typer.Option(help="the frame of an animated image or the page of a multi-page TIFF to edit, from 0"),
    ] = None,
) -> None:
    """Edit an image with a spec, or a benchmark sample with its own points and mask."""
    from .io import check_outputs, load_image

    with _user_errors():
        image_path, spec_obj, protect = _edit_inputs(
            input, spec, reference, mode, set_ or [], {"steps": steps, "seed": seed, "resolution": resolution}
        )
        check_outputs({"out": out, "report": report, "trace": trace}, tuple(protect))
        from .models import SINGLE_FILE_SUFFIXES, parse_lora_arg

        if model_config is not None and not (model or default_model()).endswith(SINGLE_FILE_SUFFIXES):
            _fail(
                f"--model-config applies to a .safetensors / .ckpt --model; {model or default_model()!r} is not one"
            )
        image = load_image(image_path, frame=frame)  # decoded (and refused) before the model loads
        _plan_before_loading(spec_obj, image, model or default_model())

        loras = [parse_lora_arg(v) for v in lora or []]
        editor = _load_editor(model, backend=backend, single_file_config=model_config)
        for path, scale in loras:
            editor.load_lora(path, scale)
        if dry_run:
            _print_dry_run(editor.plan(image, spec_obj), json_out)
            return
        result = editor.edit(image, spec_obj, progress=not quiet, trace=trace)
        result.save(out, report, protect=tuple(protect))
        _warn_random(editor)
    r = result.report
    if json_out:
        typer.echo(r.model_dump_json(indent=2))
    else:
        phases = ", ".join(f"{k} {v:.2f}s" for k, v in r.phase_seconds.items())
        typer.echo(
            f"wrote {out} ({r.image_size[0]}×{r.image_size[1]}); {phases}; backend {r.backend}; UNet {r.unet_evaluations}"
            + (f"; image encoder {r.image_encoder_forwards}" if r.image_encoder_forwards else "")
        )


def _print_dry_run(dry: Any, json_out: bool) -> None:
    """``dragsdk edit --dry-run``: what :meth:`dragsdk.editor.Editor.plan` says the edit would do."""
    lora = dry.plan.finetune
    out = {
        "working_size": list(dry.canvas.size),
        "latent_size": list(dry.canvas.latent_size),
        "steps": dry.steps,
        "guided_steps": len(dry.guided_steps),
        "kv_window": list(dry.kv_window) if dry.kv_window else None,
        "optimisation_steps": dry.plan.optimise.max_steps if dry.plan.optimise is not None else 0,
        "finetune": {**lora.settings(), "cached": dry.finetune_cached} if lora is not None else None,
        "inversion_cached": dry.inversion_cached,
        "backend": dry.backend,
        "unet_evaluations": dry.cost.to_dict(),
    }
    if json_out:
        typer.echo(json.dumps(out, indent=2))
        return
    w, h = out["working_size"]
    lora_text = ""
    if lora is not None:
        lora_text = (
            "the cached per-image LoRA, "
            if dry.finetune_cached
            else f"a per-image LoRA trained for {lora.steps} steps (batch {lora.batch_size}), "
        )
    typer.echo(
        f"would edit at {w}×{h}: {lora_text}{dry.steps} DDIM steps, {out['guided_steps']} guided, "
        f"{out['optimisation_steps']} optimisation steps at most; backend {dry.backend}; UNet {out['unet_evaluations']}"
    )


@app.command()
def mask(
    image: Annotated[Path, typer.Argument(help="the image")],
    x: Annotated[float, typer.Argument(help="click x, image pixels")],
    y: Annotated[float, typer.Argument(help="click y, image pixels")],
    out: Annotated[Path, typer.Option(help="mask PNG to write (white = the proposed part)")] = Path(
        "mask.png"
    ),
    model: Annotated[str | None, typer.Option(envvar=MODEL_ENV, show_default=False, help=_MODEL_HELP)] = None,
    model_config: ModelConfigOption = None,
    prompt: Annotated[str, typer.Option(help="prompt describing the image")] = "",
    threshold: Annotated[float, typer.Option(help="similarity threshold in [0, 1]")] = 0.6,
    json_out: Annotated[bool, typer.Option("--json", help="print area and bounding box as JSON")] = False,
) -> None:
    """Propose the mask of the part under a click (diffusion-feature similarity, DIFT)."""
    import numpy as np
    from PIL import Image

    from .io import check_outputs, save_image_atomic

    with _user_errors():
        check_outputs({"out": out}, (image,))
        from .proposal import check_proposal_settings

        check_proposal_settings(
            threshold, 261, 512, 8
        )  # before the model loads (the timestep range: the edit's)
        editor = _load_editor(model, single_file_config=model_config)
        m = editor.suggest_mask(image, (x, y), prompt=prompt, threshold=threshold)
        save_image_atomic(Image.fromarray((m * 255).astype(np.uint8), "L"), out, protect=(image,))
        _warn_random(editor)
    ys, xs = np.nonzero(m)
    info = {
        "out": str(out),
        "area_px": int(m.sum()),
        "fraction": float(m.mean()),
        "bbox": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] if len(xs) else None,
    }
    typer.echo(
        json.dumps(info)
        if json_out
        else f"wrote {out}: {info['area_px']} px ({100 * info['fraction']:.1f}%), bbox {info['bbox']}"
    )


@app.command()
def modes(
    json_out: Annotated[bool, typer.Option("--json", help="JSON with each mode's schema")] = False,
) -> None:
    """List the installed edit modes."""
    reg = _registry()
    items, broken = (
        [],
        [
            f"{f.name} ({f.stage}): {f.error.splitlines()[0]}"
            for f in reg.failures
            if f.stage == "dragsdk_register_modes"
        ],
    )
    for name, m in reg.modes.items():
        try:
            items.append(m.describe())
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # one broken mode never hides the others
            broken.append(f"{name}: describe() failed: {type(e).__name__}: {e}")
    if json_out:
        _print_json(items)
    else:
        for m in items:
            typer.echo(f"{m['name']:<14} {m['description']}")
    for line in broken:
        typer.secho(f"FAILED {line}", fg=typer.colors.YELLOW, err=True)


@app.command()
def schema(mode: str, json_out: Annotated[bool, typer.Option("--json", help="compact JSON")] = False) -> None:
    """Print the JSON Schema of a mode's spec."""
    reg = _registry()
    if mode not in reg.modes:
        _fail(f"unknown mode {mode!r}; installed modes are {sorted(reg.modes)}")
    s = reg.modes[mode].spec_model.model_json_schema()
    typer.echo(json.dumps(s) if json_out else json.dumps(s, indent=2))


@app.command()
def plugins(json_out: Annotated[bool, typer.Option("--json", help="JSON output")] = False) -> None:
    """List loaded plugins, what each registered, and the ones that failed to load."""
    reg = _registry()
    reg.resolve()
    data = {
        "plugins": [vars(p) for p in reg.plugins.values()],
        "failures": [vars(f) for f in reg.failures],
        "overrides": [vars(o) for o in reg.overrides],
    }
    if json_out:
        _print_json(data)
        return
    for p in data["plugins"]:
        what = ", ".join([f"mode {m}" for m in p["modes"]] + [f"backend {b}" for b in p["backends"]])
        typer.echo(f"{p['name']:<14} {p['module']:<28} {what}")
    for o in data["overrides"]:
        typer.secho(
            f"OVERRIDE {o['kind']} {o['name']}: plugin {o['plugin']} replaces the built-in {o['replaces']} "
            "(DRAGSDK_OVERRIDE)",
            fg=typer.colors.YELLOW,
        )
    for f in data["failures"]:
        typer.secho(
            f"FAILED {f['name']} ({f['stage']}): {f['error'].splitlines()[0]}", fg=typer.colors.YELLOW
        )


@app.command()
def backends(
    json_out: Annotated[bool, typer.Option("--json", help="JSON output")] = False,
    bench: Annotated[
        bool, typer.Option("--bench", help="time every available backend and store the table")
    ] = False,
    model: Annotated[
        str | None,
        typer.Option(
            envvar=MODEL_ENV,
            show_default=False,
            help=f"model to time with (--bench); weights do not change the cost: sd15-random times SD 1.5 without "
            f"downloading [default: {DEFAULT_MODEL}]",
        ),
    ] = None,
    model_config: ModelConfigOption = None,
    resolution: Annotated[int, typer.Option(help="working resolution to time at (--bench)")] = 512,
    steps: Annotated[int, typer.Option(help="steps of each timed edit (--bench)")] = 4,
    only: Annotated[
        list[str] | None,
        typer.Option(
            "--only", help="time only this backend (repeatable); merged into the stored table (--bench)"
        ),
    ] = None,
    repeats: Annotated[
        int, typer.Option(min=1, max=50, help="timed runs per edit; the median is stored (--bench)")
    ] = 3,
) -> None:
    """List backends, whether each can run here and why not; with --bench, measure them for `auto`."""
    reg = _registry()
    if bench:
        from dragsdk.backend_bench import bench_backends
        from dragsdk.backends.select import table_path

        # timing only: no output is an edit, so no random-weights warning
        editor = _load_editor(model, registry=reg, single_file_config=model_config)

        def show(row: dict[str, Any]) -> None:
            if not json_out:
                cells = [
                    f"{k} {1000 * row[k]:.1f} ms/step" for k in ("drag_step_s", "region_step_s") if row.get(k)
                ]
                typer.echo(
                    f"{row['backend']:<10} "
                    + (", ".join(cells) if row["available"] else f"skipped: {row['reason']}")
                )

        unknown = sorted(set(only or ()) - set(reg.backends))
        if unknown:
            raise typer.BadParameter(
                f"unknown backend(s) {unknown}; registered: {sorted(reg.backends)}", param_hint="--only"
            )
        entry = bench_backends(
            editor.model, resolution, steps, names=only or None, registry=reg, on_row=show, repeats=repeats
        )
        if json_out:
            _print_json({**entry, "table": str(table_path())})
        else:
            typer.echo(
                f"stored in {table_path()} ({entry['device']}, {entry['model']}, {entry['working_size']})"
            )
        return
    items = [b.describe() for b in reg.backends.values()]
    if json_out:
        _print_json(items)
        return
    for b in items:
        status = "available" if b["available"] else f"unavailable: {b['reason']}"
        typer.echo(f"{b['name']:<10} {status}\n{'':<11}{b['description']}")


@app.command()
def bench(
    dataset: Annotated[
        Path, typer.Argument(help="DragBench, DragBench-SR/DR, Drag100 or a folder of spec JSONs")
    ],
    out: Annotated[
        Path, typer.Option(help="output folder (results.jsonl, summary, plots, report.html); required")
    ],
    address: Annotated[
        str | None,
        typer.Argument(
            help="after --ray: the Ray cluster (auto, ray://host:10001); omitted: a local Ray instance",
            show_default=False,
        ),
    ] = None,
    mode: Annotated[
        str | None, typer.Option(help="edit mode; default: the dataset's own (drag, region-drag for SR/DR)")
    ] = None,
    model: Annotated[str | None, typer.Option(envvar=MODEL_ENV, show_default=False, help=_MODEL_HELP)] = None,
    model_config: ModelConfigOption = None,
    backend: Annotated[str, typer.Option(help="backend name or 'auto'")] = "auto",
    limit: Annotated[int | None, typer.Option(help="only the first N samples (in id order)")] = None,
    dataset_format: Annotated[
        str, typer.Option("--format", help="auto, dragbench, dragbench-sr, dragbench-dr, drag100, folder")
    ] = "auto",
    steps: Annotated[int | None, typer.Option(help="override every spec's steps")] = None,
    resolution: Annotated[
        int | None, typer.Option(help="override every spec's working resolution (pixels)")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="override every spec's seed")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="set a field of every sample's spec, FIELD=VALUE (as dragsdk edit --set; e.g. lora_steps=0)",
        ),
    ] = None,
    metrics: Annotated[
        str, typer.Option(help="comma-separated subset of md,md_regiondrag,dai,psnr_ssim,if")
    ] = "md,md_regiondrag,dai,psnr_ssim,if",
    dift_model: Annotated[
        str, typer.Option(help="DIFT model of MD (protocol: SD 2.1); 'tiny' for plumbing")
    ] = "stabilityai/stable-diffusion-2-1",
    dift_ensemble: Annotated[int, typer.Option(help="DIFT noise draws averaged (protocol: 8)")] = 8,
    ray: Annotated[
        bool, typer.Option("--ray", help="spread samples over Ray actors (optionally give ADDRESS after it)")
    ] = False,
    actors: Annotated[
        int | None, typer.Option(help="Ray actors (default one per GPU, else one per CPU)")
    ] = None,
    allow_outside_paths: Annotated[
        bool,
        typer.Option(
            "--allow-outside-paths", help="let a folder dataset's specs name files outside the dataset folder"
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
) -> None:
    """Edit and score every sample of a benchmark; resumable (run the same command again to continue).

    One run at a time per --out folder: a second one on the same folder stops with a message."""
    from .eval.bench import BenchConfig, run_bench

    if address is not None and not ray:
        _fail(f"unexpected argument {address!r} (a Ray address goes after --ray)")
    with _user_errors():
        config = BenchConfig(
            dataset=str(dataset),
            out=str(out),
            mode=mode,
            model=model or default_model(),
            model_config=str(model_config) if model_config is not None else None,
            backend=backend,
            format=dataset_format,
            limit=limit,
            steps=steps,
            resolution=resolution,
            seed=seed,
            overrides=tuple(set_ or ()),
            metrics=tuple(m.strip() for m in metrics.split(",") if m.strip()),
            dift_model=dift_model,
            dift_ensemble=dift_ensemble,
            allow_outside_paths=allow_outside_paths,
        )
        try:
            result = run_bench(
                config, progress=not quiet, ray=ray, ray_address=address, actors=actors, echo=typer.echo
            )
        except ImportError as e:
            _fail(str(e))
    typer.echo(
        f"{result.ran} sample(s) run, {result.skipped} already done; results {result.paths['results']}, "
        f"report {result.paths['report']}"
    )


@app.command()
def ui(
    model: Annotated[str | None, typer.Option(envvar=MODEL_ENV, show_default=False, help=_MODEL_HELP)] = None,
    model_config: ModelConfigOption = None,
    backend: Annotated[str, typer.Option(help="backend name or 'auto'")] = "auto",
    port: Annotated[int | None, typer.Option(help="port (default: 7860, or the next free one)")] = None,
    host: Annotated[
        str, typer.Option(help="address to serve on; 0.0.0.0 exposes the page to the network")
    ] = "127.0.0.1",
    samples: Annotated[
        list[Path] | None,
        typer.Option(
            help="folder searched for DragBench / Drag100 samples (repeatable; default ../shared/data and examples)"
        ),
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="steps the page starts with (default: the mode's)")
    ] = None,
    resolution: Annotated[int | None, typer.Option(help="working resolution the page starts with")] = None,
    max_steps: Annotated[int, typer.Option(help="most sampling steps one edit may use")] = 100,
    max_resolution: Annotated[int, typer.Option(help="highest working resolution one edit may use")] = 1024,
    max_upload_mb: Annotated[float, typer.Option(help="largest upload, megabytes")] = 20.0,
    max_megapixels: Annotated[
        float, typer.Option(help="largest uploaded or opened image, megapixels")
    ] = 40.0,
    max_run_seconds: Annotated[
        float, typer.Option(help="an edit stops after the step that passes this many seconds")
    ] = 120.0,
    queue_size: Annotated[int, typer.Option(help="runs that may wait for the run slot")] = 16,
) -> None:
    """Open the interactive editor in the browser: click points, brush masks, run, download (needs the ui extra).

    The sample box opens only samples under the --samples folders; the --max-* flags cap what one request may ask."""
    from .errors import DragSDKError

    try:
        from .ui.app import build_app, launch
        from .ui.state import UILimits
    except ImportError as e:
        _fail(f"the browser editor needs Gradio: pip install 'dragsdk[ui]' ({e})")
    try:
        limits = UILimits(
            max_steps, max_resolution, max_upload_mb, max_megapixels, max_run_seconds, queue_size
        )
    except ValueError as e:
        _fail(str(e))
    roots = samples if samples else [p for p in (Path("../shared/data"), Path("examples")) if p.is_dir()]
    try:
        editor = _load_editor(model, backend=backend, single_file_config=model_config)
    except DragSDKError as e:
        _fail(str(e))
    _warn_random(editor)
    typer.echo(
        f"dragsdk ui: model {editor.model.name}, backend {backend}; the page's address follows (Ctrl+C stops)"
    )
    launch(
        build_app(editor, sample_roots=roots, steps=steps, resolution=resolution, limits=limits),
        host=host,
        port=port,
    )


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
