"""The browser editor: a Gradio Blocks page around one :class:`~dragsdk.editor.Editor`.

``build_app(editor)`` returns the page; :func:`launch` serves it (loopback by default). The bookkeeping (clicks,
coordinates, masks, specs, messages) is in :mod:`dragsdk.ui.state`; the run itself in :mod:`dragsdk.ui.run`.
Every handler catches what can go wrong and shows it as a message beside the control it concerns, never a stack
trace (the server log keeps the trace of an unexpected error).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from dragsdk.errors import DragSDKError, SpecError  # noqa: E402

from .forms import FieldControl, PageMode, page_modes  # noqa: E402
from .run import RunControl, RunStopped, run_edit  # noqa: E402
from .state import (  # noqa: E402
    CONTROLS,
    REGION_INPUTS,
    Inputs,
    Session,
    UIError,
    UILimits,
    add_click,
    build_spec,
    clear,
    control_for_field,
    describe_clicks,
    describe_mask,
    editor_background,
    editor_mask,
    find_samples,
    format_report,
    load_upload,
    mask_layer,
    open_sample,
    pydantic_message,
    render_overlay,
    sampler_defaults,
    undo,
    upload_path,
)

log = logging.getLogger("dragsdk.ui")

CSS = """
.dragsdk-msg p { margin: 0.2em 0; }
.dragsdk-msg .error, .dragsdk-msg strong.error { color: #c0392b; }
#points-msg, #mask-msg, #reference-msg, #image-msg, #run-msg, #prompt-msg, #settings-msg { min-height: 1.4em; }
"""


def _slug(*parts: str) -> str:
    """An element id from names (a third-party mode or field name may hold any character)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", "-".join(parts))


def _field_input(control: FieldControl, mode: str) -> Any:
    """The Gradio control of one of a mode's settings (number boxes are text boxes: empty = the default)."""
    common = {
        "label": control.label,
        "info": control.info or None,
        "elem_id": _slug("field", mode, control.name),
    }
    if control.kind == "boolean":
        return gr.Checkbox(value=bool(control.default), **common)
    if control.kind == "choice":
        return gr.Dropdown(list(control.choices), value=control.default, **common)
    return gr.Textbox("", placeholder=control.placeholder, **common)


def _layout(page: PageMode, region_input: str | None) -> dict[str, bool]:
    """Which of the page's inputs ``page``'s mode shows (its UI description)."""
    ui = page.ui
    kind = page.region_kind(region_input)
    return {
        "region_choice": ui.regions is not None and ui.polygons is not None,
        "vertices": kind == "polygons",
        "regions": kind == "regions",
        "scale": ui.scale is not None,
        "reference": ui.reference is not None,
        "reference_prompt": ui.reference is not None and ui.reference.prompt is not None,
        "mask": ui.mask is not None,
    }


def _error(message: str) -> str:
    return f"⚠️ <span class='error'>{_escape(message)}</span>"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _short_data_urls(text: str) -> str:
    return re.sub(
        r'"data:image/png;base64,([A-Za-z0-9+/=]{24})[A-Za-z0-9+/=]*"',
        lambda m: f'"data:image/png;base64,{m.group(1)}…"',
        text,
    )


def _editor_value(image: Image.Image | None, mask: np.ndarray | None = None) -> dict[str, Any] | None:
    if image is None:
        return None
    layers = [mask_layer(mask)] if mask is not None and mask.any() else []
    return {"background": image, "layers": layers, "composite": None}


def build_app(
    editor: Any,
    sample_roots: Iterable[str | Path] = (),
    steps: int | None = None,
    resolution: int | None = None,
    seed: int | None = None,
    workdir: str | Path | None = None,
    limits: UILimits | None = None,
) -> gr.Blocks:
    """The editor page for ``editor``.

    Args:
        editor: a :class:`~dragsdk.editor.Editor` (its model and backend run every edit; it caches the last
            inversion, so a second edit of the same image with the same prompt and settings skips it). The page
            offers every mode of its registry (``editor.registry.modes``), each as its UI description says
            (:attr:`dragsdk.modes.EditMode.ui`, or one derived from its spec schema: :mod:`dragsdk.ui.forms`).
        sample_roots: folders searched for DragBench / Drag100 sample folders (offered in a list).
        steps, resolution, seed: values the settings start with (empty = the mode's default).
        workdir: where each run's files are written (default: a temporary folder).
        limits: the server's caps on steps, resolution, uploads, run time and queue (default :class:`UILimits`).
            The sample box opens only samples under ``sample_roots`` (:func:`~dragsdk.ui.state.open_sample`).
    """
    limits = limits or UILimits()
    sample_roots = [Path(r) for r in sample_roots]
    samples = find_samples(sample_roots)
    control = RunControl()
    root = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="dragsdk-ui-"))
    root.mkdir(parents=True, exist_ok=True)
    model_name = getattr(getattr(editor, "model", None), "name", "?")
    registry = editor.registry
    modes = page_modes(registry)
    first = next(iter(modes))

    def messages(**kw: str) -> dict[str, str]:
        return {c: kw.get(c, "") for c in CONTROLS}

    # The working resolution when the settings leave it empty; never the `resolution` argument's name, which
    # the settings box starts with.
    model_resolution = getattr(getattr(editor, "model", None), "default_resolution", None)
    model_family = getattr(getattr(editor, "model", None), "family", None)

    def overlay(sess: Session, mode_v: str, inputs: Inputs) -> Any:
        """The click view; placements are planned by the editor's own modes at the resolution the run will use
        (the settings', else the model's default)."""
        return render_overlay(sess, mode_v, inputs, editor.registry, model_resolution, model_family)

    with gr.Blocks(title="dragsdk editor", analytics_enabled=False) as app:
        session = gr.State(Session())
        random = getattr(getattr(editor, "model", None), "random_weights", False)
        gr.Markdown(
            f"## dragsdk — drag editing in the browser\nModel **{model_name}**, backend "
            f"**{editor.backend_request}**. Upload an image, pick a mode, click and brush, then run."
            + (
                "\n\n**Random weights**: this model is a built-in test model; its edits are not real edits."
                if random
                else ""
            ),
            elem_id="page-head",
        )
        defaults = sampler_defaults(first, registry)
        start = _layout(modes[first], REGION_INPUTS[0])
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=280):
                image_in = gr.Image(
                    label="Image",
                    type="pil",
                    sources=["upload", "clipboard"],
                    format="png",
                    elem_id="image-input",
                    height=220,
                )
                with gr.Row():
                    sample = gr.Dropdown(
                        choices=list(samples),
                        value=None,
                        label="Sample folder",
                        allow_custom_value=True,
                        elem_id="sample",
                        scale=3,
                        info="a listed DragBench / Drag100 sample, or a folder path",
                    )
                    open_btn = gr.Button("Open", elem_id="open-sample", scale=1, min_width=60)
                image_msg = gr.Markdown(elem_id="image-msg", elem_classes="dragsdk-msg")
                prompt = gr.Textbox(label="Prompt", placeholder="a photo of …", elem_id="prompt", lines=1)
                prompt_msg = gr.Markdown(elem_id="prompt-msg", elem_classes="dragsdk-msg")
                with gr.Accordion("Settings (empty = the mode's default)", open=True):
                    steps_in = gr.Textbox(
                        "" if steps is None else str(steps),
                        label="Steps",
                        elem_id="steps",
                        placeholder=f"default {defaults.get('steps')}",
                    )
                    res_in = gr.Textbox(
                        "" if resolution is None else str(resolution),
                        label="Resolution (working area ≈ px²)",
                        elem_id="resolution",
                        placeholder=f"default {defaults.get('resolution')}",
                    )
                    seed_in = gr.Textbox(
                        "" if seed is None else str(seed),
                        label="Seed",
                        elem_id="seed",
                        placeholder=f"default {defaults.get('seed')}",
                    )
                    # each mode's own settings (ModeUI.fields), built from its spec schema; shown with the mode
                    field_inputs: list[Any] = []
                    field_keys: list[tuple[str, str]] = []
                    field_groups: dict[str, Any] = {}
                    for name, page in modes.items():
                        if not page.controls:
                            continue
                        with gr.Group(visible=name == first, elem_id=_slug("fields", name)) as group:
                            for c in page.controls:
                                field_inputs.append(_field_input(c, name))
                                field_keys.append((name, c.name))
                        field_groups[name] = group
                settings_msg = gr.Markdown(elem_id="settings-msg", elem_classes="dragsdk-msg")
            with gr.Column(scale=2, min_width=360):
                mode = gr.Radio(list(modes), value=first, label="Mode", elem_id="mode")
                help_md = gr.Markdown(modes[first].help, elem_id="mode-help")
                with gr.Row():
                    region_input = gr.Radio(
                        list(REGION_INPUTS),
                        value=REGION_INPUTS[0],
                        label="Region input",
                        visible=start["region_choice"],
                        elem_id="region-input",
                    )
                    vertices = gr.Radio(
                        [3, 4],
                        value=4,
                        label="Vertices per polygon",
                        visible=start["vertices"],
                        elem_id="vertices",
                    )
                scale = gr.Slider(
                    0.1,
                    modes[first].scale_max,
                    value=1.0,
                    step=0.05,
                    label="Scale of the object",
                    visible=start["scale"],
                    elem_id="scale",
                )
                canvas = gr.Image(
                    label="Click on the image (handles, targets, vertices, new position)",
                    interactive=False,
                    type="pil",
                    format="png",
                    elem_id="canvas",
                    buttons=[],
                    height=430,
                )
                with gr.Row():
                    undo_btn = gr.Button("Undo last point", elem_id="undo", size="sm")
                    clear_btn = gr.Button("Clear all", elem_id="clear", size="sm")
                points_msg = gr.Markdown(
                    "Upload an image or open a sample folder.",
                    elem_id="points-msg",
                    elem_classes="dragsdk-msg",
                )
            with gr.Column(scale=2, min_width=360):
                brush = gr.Brush(colors=["rgb(230, 40, 40)"], color_mode="fixed")
                mask_ed = gr.ImageEditor(
                    label=modes[first].mask_label or "Mask",
                    visible=start["mask"],
                    type="numpy",
                    sources=(),
                    transforms=(),
                    layers=False,
                    brush=brush,
                    elem_id="mask-editor",
                    height=430,
                    buttons=[],
                    format="png",
                )
                with gr.Row(visible=start["regions"]) as regions_row:
                    handle_ed = gr.ImageEditor(
                        label="Handle region",
                        type="numpy",
                        sources=(),
                        transforms=(),
                        layers=False,
                        brush=brush,
                        elem_id="handle-editor",
                        buttons=[],
                        format="png",
                    )
                    target_ed = gr.ImageEditor(
                        label="Target region",
                        type="numpy",
                        sources=(),
                        transforms=(),
                        layers=False,
                        brush=gr.Brush(colors=["rgb(40, 110, 240)"], color_mode="fixed"),
                        elem_id="target-editor",
                        buttons=[],
                        format="png",
                    )
                mask_msg = gr.Markdown(elem_id="mask-msg", elem_classes="dragsdk-msg")
                with gr.Group(visible=start["reference"]) as ref_group:
                    ref_ed = gr.ImageEditor(
                        label="Reference image: upload it, brush the object",
                        type="numpy",
                        sources=("upload", "clipboard"),
                        transforms=(),
                        layers=False,
                        brush=gr.Brush(colors=["rgb(40, 200, 90)"], color_mode="fixed"),
                        elem_id="reference-editor",
                        buttons=[],
                        format="png",
                    )
                    ref_prompt = gr.Textbox(
                        label="Reference prompt",
                        elem_id="reference-prompt",
                        visible=start["reference_prompt"],
                    )
                reference_msg = gr.Markdown(elem_id="reference-msg", elem_classes="dragsdk-msg")
        with gr.Row():
            run_btn = gr.Button("Run edit", variant="primary", elem_id="run", scale=1)
            cancel_btn = gr.Button("Cancel", elem_id="cancel", scale=0, min_width=90)
            run_msg = gr.Markdown(elem_id="run-msg", elem_classes="dragsdk-msg")
        with gr.Row(equal_height=True):
            original = gr.Image(
                label="Original", interactive=False, type="pil", format="png", elem_id="original"
            )
            result = gr.Image(label="Result", interactive=False, type="pil", format="png", elem_id="result")
        report_md = gr.Markdown(elem_id="report")
        with gr.Row():
            dl_result = gr.DownloadButton(
                "Download result", value=None, interactive=False, elem_id="download-result"
            )
            dl_spec = gr.DownloadButton(
                "Download spec JSON", value=None, interactive=False, elem_id="download-spec"
            )
        files = gr.File(
            label="All files of the last run (keep reference.png beside spec.json)",
            file_count="multiple",
            interactive=False,
            elem_id="files",
        )
        with gr.Accordion("Spec and report JSON", open=False):
            spec_code = gr.Code(language="json", label="spec.json", elem_id="spec-json", interactive=False)
            report_json = gr.JSON(label="report.json", elem_id="report-json")

        slots = {
            "image": image_msg,
            "prompt": prompt_msg,
            "points": points_msg,
            "mask": mask_msg,
            "reference": reference_msg,
            "settings": settings_msg,
            "run": run_msg,
        }

        def slot_updates(msgs: dict[str, str]) -> dict[Any, Any]:
            return {slots[c]: msgs[c] for c in CONTROLS}

        def points_line(sess: Session, mode_v: str, vertices_v: Any, region_v: str) -> str:
            return (
                describe_clicks(sess, mode_v, int(vertices_v or 4), region_v, registry)
                if sess.image is not None
                else ""
            )

        def field_values(mode_v: str, values: Iterable[Any]) -> dict[str, Any]:
            """The values of ``mode_v``'s own settings controls, by spec field."""
            return {f: v for (m, f), v in zip(field_keys, values, strict=True) if m == mode_v}

        # -- image in ---------------------------------------------------------------------------------------
        image_outputs = [
            session,
            canvas,
            mask_ed,
            handle_ed,
            target_ed,
            original,
            result,
            report_md,
            *slots.values(),
        ]

        def new_image(
            sess: Session,
            img: Image.Image,
            name: str,
            mode_v: str,
            mask: np.ndarray | None = None,
            note: str = "",
        ) -> dict[Any, Any]:
            sess.set_image(img, name, mask)
            w, h = sess.image.size  # type: ignore[union-attr]
            msgs = messages(
                image=f"{name or 'image'}: {w}×{h} pixels" + (f"; {note}" if note else ""),
                points=describe_clicks(sess, mode_v, registry=registry),
            )
            return {
                session: sess,
                canvas: overlay(sess, mode_v, sess.inputs()),
                mask_ed: _editor_value(sess.image, mask),
                handle_ed: _editor_value(sess.image),
                target_ed: _editor_value(sess.image),
                original: sess.image,
                result: None,
                report_md: "",
                **slot_updates(msgs),
            }

        def on_upload(payload: Any, sess: Session, mode_v: str) -> dict[Any, Any]:
            # taken without Gradio's preprocessing (which would end a non-image in a generic "Error"): decoded
            # here, within the server's limits, with any problem shown beside the image control
            upload = upload_path(payload)
            if upload is None:
                sess.image = None
                return {
                    session: sess,
                    canvas: None,
                    mask_ed: None,
                    handle_ed: None,
                    target_ed: None,
                    original: None,
                    result: None,
                    report_md: "",
                    **slot_updates(messages(image="no image: upload one or open a sample folder")),
                }
            try:
                img = load_upload(upload[0], upload[1], limits)
            except UIError as e:
                sess.image = None
                return {
                    session: sess,
                    canvas: None,
                    mask_ed: None,
                    handle_ed: None,
                    target_ed: None,
                    original: None,
                    result: None,
                    report_md: "",
                    image_in: None,
                    **slot_updates(messages(image=_error(e.message))),
                }
            return new_image(sess, img, upload[1] or "uploaded image", mode_v)

        image_in.upload(on_upload, [image_in, session, mode], [*image_outputs, image_in], preprocess=False)
        image_in.clear(on_upload, [image_in, session, mode], [*image_outputs, image_in], preprocess=False)

        def on_open(name: str | None, sess: Session) -> dict[Any, Any]:
            from dragsdk.io import load_mask

            try:
                folder, img, spec = open_sample(name, sample_roots, samples, limits)
                mask = load_mask(spec["mask"]) if spec.get("mask") else None
                if mask is not None and mask.shape != (img.size[1], img.size[0]):
                    mask = None
            except UIError as e:
                return slot_updates(messages(image=_error(e.message)))
            except (DragSDKError, OSError, ValueError) as e:
                return slot_updates(messages(image=_error(str(e))))
            # a sample holds a spec of some mode (a benchmark's: point pairs); it opens in that mode
            sample_mode = str(spec.get("mode", ""))
            page = modes.get(sample_mode)
            if page is None or page.ui.points is None:
                return slot_updates(
                    messages(
                        image=_error(f"{folder.name}: no mode of this page takes its {sample_mode!r} spec")
                    )
                )
            point_pairs = spec.get(page.ui.points) or []
            loaded = f"{len(point_pairs)} point pair(s)" + (" and its mask" if mask is not None else "")
            out = new_image(sess, img, folder.name, sample_mode, mask, note=f"{loaded} loaded")
            sess.clicks[sample_mode] = [
                (int(round(p[0])), int(round(p[1]))) for pair in point_pairs for p in pair
            ]
            out[canvas] = overlay(sess, sample_mode, sess.inputs())
            out[points_msg] = describe_clicks(sess, sample_mode, registry=registry)
            out[image_in] = img
            out[prompt] = spec.get("prompt", "")
            out[mode] = sample_mode
            return out

        open_btn.click(on_open, [sample, session], [*image_outputs, image_in, prompt, mode])

        # -- brushed masks ------------------------------------------------------------------------------------------
        # The editors have no change listeners: with none, every event that takes an editor as input gets a fresh
        # export of what is brushed (with one, the editor uploads each stroke once, for the first reader only, and
        # ignores the first stroke after it appears). They are read by the previews of a mode with a placement input
        # (after a click, a mode switch, the scale slider, a change of its settings) and by every run; the session
        # keeps the last read.
        quiet = {"show_progress": "hidden", "concurrency_id": "clicks"}

        def read_editors(sess: Session, mask_v: Any, ref_v: Any) -> None:
            if sess.image is not None:
                sess.mask = editor_mask(mask_v, sess.image.size)
            sess.reference = editor_background(ref_v)
            sess.reference_mask = (
                editor_mask(ref_v, sess.reference.size) if sess.reference is not None else None
            )

        def on_preview(
            sess: Session, mode_v: str, mask_v: Any, ref_v: Any, scale_v: float, *field_vals: Any
        ) -> dict[Any, Any]:
            read_editors(sess, mask_v, ref_v)
            page = modes[mode_v]
            place = page.ui.placement
            if place is not None and place.object == "reference":
                ref = sess.reference
                msg = (
                    "no reference image yet: upload one in the reference editor"
                    if ref is None
                    else f"reference {ref.size[0]}×{ref.size[1]}; "
                    + describe_mask(sess.reference_mask, "its object")
                )
                msgs = {reference_msg: msg, mask_msg: gr.skip()}
            else:
                msgs = {mask_msg: describe_mask(sess.mask, page.mask_name), reference_msg: gr.skip()}
            inputs = sess.inputs(scale_v, fields=field_values(mode_v, field_vals))
            return {session: sess, canvas: overlay(sess, mode_v, inputs), **msgs}

        preview_inputs = [session, mode, mask_ed, ref_ed, scale, *field_inputs]
        preview_outputs = [session, canvas, mask_msg, reference_msg]

        def only_when_placing(mode_v: str) -> None:
            """Stop the chain (silently) unless the mode previews a placement: reading the editors costs an export."""
            if modes[mode_v].ui.placement is None:
                raise gr.Error("no preview in this mode", visible=False, print_exception=False)

        def then_preview(event: Any) -> None:
            event.then(only_when_placing, [mode], None, **quiet).success(
                on_preview, preview_inputs, preview_outputs, **quiet
            )

        # -- mode ---------------------------------------------------------------------------------------------
        def on_mode(
            mode_v: str, region_v: str, vertices_v: Any, sess: Session, scale_v: float
        ) -> dict[Any, Any]:
            page = modes[mode_v]
            shown = _layout(page, region_v)
            d = sampler_defaults(mode_v, registry)
            return {
                steps_in: gr.update(placeholder=f"default {d.get('steps')}"),
                res_in: gr.update(placeholder=f"default {d.get('resolution')}"),
                seed_in: gr.update(placeholder=f"default {d.get('seed')}"),
                help_md: page.help,
                region_input: gr.update(visible=shown["region_choice"]),
                vertices: gr.update(visible=shown["vertices"]),
                scale: gr.update(
                    visible=shown["scale"],
                    maximum=page.scale_max,
                    value=min(float(scale_v or 1.0), page.scale_max),
                ),
                regions_row: gr.update(visible=shown["regions"]),
                ref_group: gr.update(visible=shown["reference"]),
                ref_prompt: gr.update(visible=shown["reference_prompt"]),
                mask_ed: gr.update(label=page.mask_label or "Mask", visible=shown["mask"]),
                **{group: gr.update(visible=name == mode_v) for name, group in field_groups.items()},
                canvas: overlay(sess, mode_v, sess.inputs(scale_v, vertices_v, region_v)),
                **slot_updates(messages(points=points_line(sess, mode_v, vertices_v, region_v))),
            }

        mode_outputs = [
            help_md,
            region_input,
            vertices,
            scale,
            regions_row,
            ref_group,
            ref_prompt,
            mask_ed,
            *field_groups.values(),
            canvas,
            steps_in,
            res_in,
            seed_in,
            *slots.values(),
        ]
        mode_inputs = [mode, region_input, vertices, session, scale]
        then_preview(mode.change(on_mode, mode_inputs, mode_outputs, **quiet))
        for widget in (region_input, vertices):  # not `control`: that name is the run slot (RunControl) above
            widget.change(on_mode, mode_inputs, mode_outputs, **quiet)
        for widget in field_inputs:  # a mode's own settings: its placement preview follows them
            triggers = (widget.blur, widget.submit) if isinstance(widget, gr.Textbox) else (widget.input,)
            for trigger in triggers:
                trigger(only_when_placing, [mode], None, **quiet).success(
                    on_preview, preview_inputs, preview_outputs, **quiet
                )

        # -- clicks -------------------------------------------------------------------------------------------
        # Handlers that change the clicks run one at a time (one concurrency group) and queue (trigger_mode
        # "multiple"), so a quick second click is never dropped; they show no progress overlay, which would
        # cover the image and swallow the next click.
        click_inputs = [session, mode, region_input, vertices, scale, *field_inputs]
        click_outputs = [session, canvas, points_msg, image_msg]

        def redraw(
            sess: Session,
            mode_v: str,
            region_v: str,
            vertices_v: Any,
            scale_v: float,
            msg: str,
            field_vals: Iterable[Any] = (),
        ) -> dict[Any, Any]:
            fields = field_values(mode_v, field_vals) if field_vals else None
            return {
                session: sess,
                canvas: overlay(sess, mode_v, sess.inputs(scale_v, vertices_v, region_v, fields)),
                points_msg: msg,
                image_msg: gr.skip(),
            }

        def on_click(
            sess: Session,
            mode_v: str,
            region_v: str,
            vertices_v: Any,
            scale_v: float,
            evt: gr.SelectData,
            *field_vals: Any,
        ) -> dict[Any, Any]:
            try:
                msg = add_click(sess, mode_v, evt.index, int(vertices_v or 4), region_v, registry)
            except UIError as e:
                return {
                    session: sess,
                    canvas: gr.skip(),
                    points_msg: gr.skip(),
                    image_msg: gr.skip(),
                    slots[e.control if e.control == "image" else "points"]: _error(e.message),
                }
            return redraw(sess, mode_v, region_v, vertices_v, scale_v, msg, field_vals)

        then_preview(canvas.select(on_click, click_inputs, click_outputs, trigger_mode="multiple", **quiet))

        def on_undo(
            sess: Session, mode_v: str, region_v: str, vertices_v: Any, scale_v: float, *field_vals: Any
        ) -> dict[Any, Any]:
            removed = undo(sess, mode_v)
            msg = (
                points_line(sess, mode_v, vertices_v, region_v) if removed is not None else "nothing to undo"
            )
            return redraw(sess, mode_v, region_v, vertices_v, scale_v, msg, field_vals)

        undo_btn.click(on_undo, click_inputs, click_outputs, trigger_mode="multiple", **quiet)

        def on_clear(
            sess: Session, mode_v: str, region_v: str, vertices_v: Any, scale_v: float, *field_vals: Any
        ) -> dict[Any, Any]:
            clear(sess)
            sess.mask = sess.handle_region = sess.target_region = None
            out = redraw(
                sess,
                mode_v,
                region_v,
                vertices_v,
                scale_v,
                "cleared: every point and brushed mask" if sess.image is not None else "",
            )
            return {
                **out,
                mask_ed: _editor_value(sess.image),
                handle_ed: _editor_value(sess.image),
                target_ed: _editor_value(sess.image),
            }

        clear_btn.click(on_clear, click_inputs, [*click_outputs, mask_ed, handle_ed, target_ed], **quiet)
        scale.release(on_preview, preview_inputs, preview_outputs, **quiet)

        # -- run ----------------------------------------------------------------------------------------------
        run_outputs = [
            session,
            result,
            original,
            report_md,
            dl_result,
            dl_spec,
            files,
            spec_code,
            report_json,
            *slots.values(),
        ]

        def on_run(
            sess: Session,
            mode_v: str,
            prompt_v: str,
            mask_v: Any,
            handle_v: Any,
            target_v: Any,
            region_v: str,
            vertices_v: Any,
            ref_v: Any,
            ref_prompt_v: str,
            scale_v: float,
            steps_v: Any,
            res_v: Any,
            seed_v: Any,
            request: gr.Request,
            progress: gr.Progress = gr.Progress(),
            *field_vals: Any,
        ) -> dict[Any, Any]:  # noqa: B008
            import json

            from pydantic import ValidationError

            page = modes[mode_v]

            def fail(control: str, message: str) -> dict[Any, Any]:
                return {session: sess, **slot_updates(messages(**{control: _error(message)}))}

            try:
                if sess.image is None:
                    raise UIError("image", "upload an image or open a sample folder first")
                read_editors(sess, mask_v, ref_v)
                sess.handle_region = editor_mask(handle_v, sess.image.size)
                sess.target_region = editor_mask(target_v, sess.image.size)
                inputs = sess.inputs(scale_v, vertices_v, region_v)
                inputs.prompt = prompt_v or ""
                inputs.reference_prompt = ref_prompt_v or ""
                inputs.steps, inputs.resolution, inputs.seed = steps_v, res_v, seed_v
                inputs.fields = field_values(mode_v, field_vals)
                folder = Path(tempfile.mkdtemp(prefix="run-", dir=root))
                if page.ui.reference is not None and inputs.reference is not None:
                    inputs.reference_path = str(folder / "reference.png")
                    inputs.reference.save(inputs.reference_path)
                spec = build_spec(mode_v, sess, inputs, registry)
                progress(0.0, desc="inverting the image…")
                key = _client(request)
                cancel = control.start(key)
                try:
                    out = run_edit(
                        editor,
                        sess.image,
                        spec,
                        folder,
                        limits=limits,
                        cancel=cancel,
                        on_step=lambda i, n: progress((i + 1) / n, desc=f"sampling step {i + 1}/{n}"),
                    )
                finally:
                    control.finish(key, cancel)
            except RunStopped as e:
                return fail("run", str(e))
            except UIError as e:
                return fail(e.control, e.message)
            except ValidationError as e:
                return fail(*pydantic_message(e, page))
            except SpecError as e:
                return fail(control_for_field(e.field, page), str(e))
            except DragSDKError as e:
                return fail("run", str(e))
            except Exception as e:  # an unexpected failure: a message on the page, the trace in the log
                log.exception("edit failed")
                return fail("run", f"the edit failed: {type(e).__name__}: {e}")
            reused = out.report.inversion_reused
            done = f"done in {out.seconds:.2f} s" + (
                " — inversion reused from the previous edit" if reused else ""
            )
            return {
                session: sess,
                result: out.result,
                original: sess.image,
                report_md: format_report(out.report, out.seconds),
                dl_result: gr.update(value=str(out.files["result.png"]), interactive=True),
                dl_spec: gr.update(value=str(out.files["spec.json"]), interactive=True),
                files: [str(p) for p in out.files.values()],
                spec_code: _short_data_urls(json.dumps(out.spec, indent=2)),
                report_json: json.loads(out.report.model_dump_json()),
                **slot_updates(messages(run=done, points=points_line(sess, mode_v, vertices_v, region_v))),
            }

        run_event = run_btn.click(
            lambda: slot_updates(messages(run="running…")), None, list(slots.values()), queue=False
        ).then(
            on_run,
            [
                session,
                mode,
                prompt,
                mask_ed,
                handle_ed,
                target_ed,
                region_input,
                vertices,
                ref_ed,
                ref_prompt,
                scale,
                steps_in,
                res_in,
                seed_in,
                *field_inputs,
            ],
            run_outputs,
            concurrency_limit=1,
            concurrency_id="run",
            show_progress="full",
        )

        def on_cancel(request: gr.Request) -> dict[Any, Any]:
            stopping = control.cancel(_client(request))
            return {
                run_msg: "cancelled: the edit stops after its current step"
                if stopping
                else "no edit is running"
            }

        # not queued behind the run it cancels; also drops a run of this tab still waiting in the queue
        cancel_btn.click(on_cancel, None, [run_msg], queue=False, cancels=[run_event])
        app.queue(max_size=limits.queue_size)
    app.dragsdk_css = CSS  # type: ignore[attr-defined]
    app.dragsdk_limits = limits  # type: ignore[attr-defined]
    return app


def _client(request: Any) -> str:
    """The key of one browser tab (Gradio's session hash)."""
    return str(getattr(request, "session_hash", None) or id(request))


def launch(app: gr.Blocks, host: str = "127.0.0.1", port: int | None = None, **kwargs: Any) -> Any:
    """Serve the page on ``host:port`` (loopback by default; no share link, no analytics), refusing uploads over
    the page's :attr:`UILimits.max_upload_mb`."""
    kwargs.setdefault("quiet", False)
    limits = getattr(app, "dragsdk_limits", None) or UILimits()
    kwargs.setdefault("max_file_size", int(limits.max_upload_mb * 1e6))
    return app.launch(
        server_name=host,
        server_port=port,
        share=False,
        css=getattr(app, "dragsdk_css", CSS),
        ssr_mode=False,
        footer_links=[],
        **kwargs,
    )
