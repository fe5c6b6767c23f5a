"""Test helpers for mode authors (the idea of diffusers' ``PipelineTesterMixin``): one conformance check any edit
mode can run, and golden slices of the final latent.

A plugin's test suite calls :func:`check_mode` with an :class:`~dragsdk.editor.Editor` on the built-in ``tiny``
model (random weights, CPU, seconds) and one valid spec of its mode::

    from dragsdk import Editor
    from dragsdk.testing import check_mode, sample_image

    def test_my_mode_conforms():
        check_mode(Editor("tiny", device="cpu"), sample_image(), {"mode": "rotate", "angle": 30})

Every built-in mode's tests run the same check (``tests/test_conformance.py``). A failed property raises
:class:`ConformanceError` naming it.

Golden slices (:func:`latent_slice`) pin the numbers of an edit: a small fixed window of the final latent, recorded
once with a fixed seed and compared after a change with :func:`assert_slice_close`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from .errors import EditCancelled
from .spec import EditSpec
from .specfile import spec_from_json

__all__ = [
    "ConformanceError",
    "ConformanceResult",
    "assert_slice_close",
    "check_dry_run_cost",
    "check_cancellation",
    "check_edit",
    "check_profiles",
    "check_mode",
    "check_plan",
    "check_spec_round_trip",
    "latent_slice",
    "sample_image",
    "with_sampler",
]

SLICE = 3
"""Side of the golden window: the ``SLICE × SLICE`` latent cells at the centre of the latent, every channel."""


class ConformanceError(AssertionError):
    """A mode broke a property of :func:`check_mode`; the message names the property and the values seen."""


@dataclass
class ConformanceResult:
    """What :func:`check_mode` checked: the names of the properties that held, and the 2-step edit's result."""

    checked: list[str] = field(default_factory=list)
    result: Any = None


def _fail(check: str, message: str) -> None:
    raise ConformanceError(f"{check}: {message}")


def sample_image(size: tuple[int, int] = (160, 96), seed: int = 0) -> Image.Image:
    """A deterministic RGB test image of ``size`` ``(W, H)`` pixels: smooth gradients plus a bright disc in the
    middle (something for masks and points to land on), the same for the same ``seed``."""
    w, h = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([x / max(w - 1, 1), y / max(h - 1, 1), 0.5 + 0.5 * np.sin((x + y) / 9.0)], -1)
    disc = ((x - w / 2) ** 2 + (y - h / 2) ** 2) < (min(w, h) / 4) ** 2
    base[disc] = [0.9, 0.8, 0.2]
    noise = rng.normal(0.0, 0.03, base.shape).astype(np.float32)
    return Image.fromarray((np.clip(base + noise, 0, 1) * 255).astype(np.uint8), "RGB")


def with_sampler(spec: Mapping[str, Any], **settings: Any) -> dict[str, Any]:
    """``spec`` (a dict) with ``settings`` written into its ``sampler`` block (e.g. ``steps=2``)."""
    return {**spec, "sampler": {**dict(spec.get("sampler", {})), **settings}}


def latent_slice(latent: torch.Tensor, size: int = SLICE) -> list[float]:
    """The golden slice of a final latent ``(1, C, h, w)``: the ``size × size`` cells at its centre (rows
    ``h//2 − size//2 …``, same for columns), every channel, flattened channel-major as Python floats."""
    if latent.ndim != 4 or latent.shape[0] != 1:
        raise ValueError(f"latent must be (1, C, h, w), got {tuple(latent.shape)}")
    _, _, h, w = latent.shape
    r, c = max(h // 2 - size // 2, 0), max(w // 2 - size // 2, 0)
    return [float(v) for v in latent[0, :, r : r + size, c : c + size].detach().float().cpu().flatten()]


def assert_slice_close(
    actual: Sequence[float], expected: Sequence[float], atol: float, label: str = ""
) -> None:
    """Raise :class:`ConformanceError` when two slices differ in length or any value by more than ``atol``
    (absolute), naming the largest difference and where it is."""
    if len(actual) != len(expected):
        _fail(f"golden slice {label}", f"{len(actual)} values, expected {len(expected)}")
    diff = np.abs(np.asarray(actual, np.float64) - np.asarray(expected, np.float64))
    k = int(diff.argmax()) if diff.size else 0
    if diff.size and not diff[k] <= atol:
        _fail(
            f"golden slice {label}",
            f"max |Δ| = {diff[k]:.3g} at index {k} ({actual[k]!r} vs {expected[k]!r}) > atol {atol:g}",
        )


# -- the properties --------------------------------------------------------------------------------------------------
def check_spec_round_trip(editor: Any, spec: Mapping[str, Any] | EditSpec) -> EditSpec:
    """The spec validates; its JSON dump reads back to an equal spec; its mode's JSON Schema is serialisable and
    names ``mode``. Returns the validated spec.

    Raises:
        ConformanceError: a property fails (named ``schema`` or ``json round-trip``).
    """
    models = editor.registry.spec_models()
    parsed = editor.resolve_spec(spec if isinstance(spec, EditSpec) else dict(spec))
    model = models.get(parsed.mode)
    if model is None:
        _fail("schema", f"mode {parsed.mode!r} is not registered; registered: {sorted(models)}")
    schema = model.model_json_schema()
    if "mode" not in schema.get("properties", {}):
        _fail("schema", f"the JSON Schema of {parsed.mode!r} has no 'mode' property")
    json.dumps(schema)
    again = spec_from_json(parsed.model_dump_json(), models)
    if again != parsed:
        _fail("json round-trip", f"{parsed!r} came back as {again!r}")
    return parsed


def check_plan(dry: Any) -> None:
    """The plan of a dry run (:class:`~dragsdk.dryrun.DryRun`) is on the canvas's grids: edit / SDE masks are
    ``(h, w)`` bool latent grids, pastes index cells inside the latent grid and an existing bank row, steps lie in
    ``start_step … steps − 1``, the K/V window inside them, a ``composite_mask`` is ``(H, W)`` in image pixels and
    references have the base image's size.

    Raises:
        ConformanceError: a property fails (named ``plan shapes``).
    """
    plan, canvas, n = dry.plan, dry.canvas, dry.steps
    lw, lh = canvas.latent_size
    w, h = canvas.size
    if w % 64 or h % 64:
        _fail("plan shapes", f"working size {canvas.size} is not a multiple of 64")
    if (lw, lh) != (w // 8, h // 8):
        _fail("plan shapes", f"latent grid {canvas.latent_size} is not working size {canvas.size} / 8")
    for name, m in (("edit_mask", plan.edit_mask), ("sde.mask", plan.sde.mask if plan.sde else None)):
        if m is not None and (tuple(m.shape) != (lh, lw) or m.dtype != torch.bool):
            _fail("plan shapes", f"{name} is {tuple(m.shape)} {m.dtype}, expected ({lh}, {lw}) torch.bool")
    rows = 1 + len(plan.references)
    pastes = [*plan.init, *(sp.paste for sp in plan.step_pastes)]
    for k, p in enumerate(pastes):
        for axis, idx, bound in (
            ("rows", p.target_rows, lh),
            ("cols", p.target_cols, lw),
            ("rows", p.source_rows, lh),
            ("cols", p.source_cols, lw),
        ):
            if idx.numel() and not (int(idx.min()) >= 0 and int(idx.max()) < bound):
                _fail("plan shapes", f"paste {k} {axis} outside 0 … {bound - 1}")
        if len(p.target_rows) != len(p.source_rows) or not 0 <= p.bank < rows:
            _fail(
                "plan shapes",
                f"paste {k}: {len(p.target_rows)} targets for {len(p.source_rows)} sources, "
                f"bank {p.bank} of {rows}",
            )
    if not 0 <= plan.start_step < n:
        _fail("plan shapes", f"start_step {plan.start_step} outside 0 … {n - 1}")
    if any(not plan.start_step <= i < n for i in dry.guided_steps):
        _fail("plan shapes", f"guided steps {dry.guided_steps} outside {plan.start_step} … {n - 1}")
    if dry.kv_window is not None and not 0 <= dry.kv_window[0] <= dry.kv_window[1] <= n:
        _fail("plan shapes", f"K/V window {dry.kv_window} outside 0 … {n}")
    if plan.composite_mask is not None and np.asarray(plan.composite_mask).shape != (
        canvas.image_size[1],
        canvas.image_size[0],
    ):
        _fail(
            "plan shapes",
            f"composite_mask is {np.asarray(plan.composite_mask).shape}, expected (H, W) of "
            f"the {canvas.image_size} image",
        )
    for k, r in enumerate(plan.references):
        if r.image.size != canvas.image_size:
            _fail("plan shapes", f"references[{k}] is {r.image.size}, the image {canvas.image_size}")


def check_edit(result: Any, spec: EditSpec, dry: Any, image: Image.Image) -> None:
    """A finished edit: the image has the input's size, the latent ``(1, 4, h, w)`` on the latent grid and finite,
    the report names the mode, steps, seed and working size of the spec and dry run.

    Raises:
        ConformanceError: a property fails (named ``edit``).
    """
    lw, lh = dry.canvas.latent_size
    if result.image.size != image.size:
        _fail("edit", f"image {result.image.size}, input {image.size}")
    if tuple(result.latent.shape) != (1, 4, lh, lw) or not bool(torch.isfinite(result.latent).all()):
        _fail(
            "edit",
            f"latent {tuple(result.latent.shape)} (finite: {bool(torch.isfinite(result.latent).all())}), "
            f"expected (1, 4, {lh}, {lw})",
        )
    rep = result.report
    seen = (rep.mode, rep.steps, rep.seed, tuple(rep.working_size))
    want = (spec.mode, spec.sampler.steps, spec.sampler.seed, dry.canvas.size)
    if seen != want:
        _fail("edit", f"report (mode, steps, seed, working_size) = {seen}, expected {want}")


def check_profiles(mode: Any, spec: EditSpec, result: Any) -> None:
    """A mode with a fidelity profile table (``mode.profiles``, :mod:`dragsdk.fidelity`) reports through it: the
    report's ``profile`` is the table's label of the spec's profile and ``profile_options`` lists every option of
    the table once, as ``name=value``. A mode without a table is not checked.

    Raises:
        ConformanceError: a property fails (named ``profiles``).
    """
    table = getattr(mode, "profiles", None)
    if table is None:
        return
    rep = result.report
    label = table.label(spec.profile)  # type: ignore[attr-defined]
    if rep.profile != label:
        _fail("profiles", f"report profile {rep.profile!r}, expected {label!r} (ProfileTable.fidelity)")
    names = [o.split("=", 1)[0] for o in rep.profile_options]
    if sorted(names) != sorted(table.names) or any("=" not in o for o in rep.profile_options):
        _fail(
            "profiles",
            f"report profile_options {rep.profile_options}: expected every option of the table "
            f"({', '.join(table.names)}) once as name=value; build plan.fidelity with "
            "ProfileTable.fidelity",
        )


def check_dry_run_cost(dry: Any, result: Any) -> None:
    """The dry run's cost equals what the edit counted: UNet evaluations by kind and image-encoder forwards.

    Raises:
        ConformanceError: (``dry-run cost``) the counts differ.
    """
    if dry.cost.to_dict() != result.report.unet_evaluations:
        _fail("dry-run cost", f"dry run {dry.cost.to_dict()}, edit {result.report.unet_evaluations}")
    if dry.cost.image_encoder != result.report.image_encoder_forwards:
        _fail(
            "dry-run cost",
            f"dry run {dry.cost.image_encoder} image-encoder forwards, edit "
            f"{result.report.image_encoder_forwards}",
        )
    if dry.inversion_cached != result.report.inversion_reused:
        _fail(
            "dry-run cost",
            f"dry run inversion_cached={dry.inversion_cached}, edit "
            f"inversion_reused={result.report.inversion_reused}",
        )


def check_cancellation(
    editor: Any, image: Image.Image, spec: EditSpec, expected: torch.Tensor | None = None, atol: float = 1e-5
) -> None:
    """Cancel an edit at its first sampling step, then edit again: the cancel raises
    :class:`~dragsdk.errors.EditCancelled`, leaves the cached inversion and the UNet's attention processors as
    they were, and the next edit (reusing the inversion) gives ``expected`` within ``atol`` (when given).

    Raises:
        ConformanceError: (``cancellation``) a property fails.
    """
    unet = editor.model.unet
    processors, cached = dict(unet.attn_processors), editor._trajectory
    try:
        editor.edit(image, spec, reuse_inversion=False, callback_on_step_end=lambda e: e.phase == "sample")
    except EditCancelled as e:
        if e.phase != "sample":
            _fail("cancellation", f"stopped in phase {e.phase!r}, asked at 'sample'")
    else:
        _fail("cancellation", "the hook returned True but the edit finished")
    if editor._trajectory is not cached:
        _fail("cancellation", "the cancelled edit changed the cached inversion")
    if dict(unet.attn_processors) != processors:
        _fail("cancellation", "the UNet's attention processors were not restored")
    again = editor.edit(image, spec)
    if expected is not None:
        d = float((again.latent - expected).abs().max())
        if not d <= atol:
            _fail(
                "cancellation", f"the edit after a cancel differs from the one before by {d:.3g} > {atol:g}"
            )


def check_mode(
    editor: Any,
    image: Image.Image | Any,
    spec: Mapping[str, Any] | EditSpec,
    steps: int = 2,
    atol: float = 1e-5,
) -> ConformanceResult:
    """Run every conformance property for one mode, given one valid ``spec`` of it and an ``editor`` (normally on
    the ``tiny`` model, CPU): :func:`check_spec_round_trip`, :func:`check_plan` on the dry run, a ``steps``-step
    edit (:func:`check_edit`) whose report equals the dry run's cost (:func:`check_dry_run_cost`), its profile
    report (:func:`check_profiles`, for a mode with a profile table), and
    :func:`check_cancellation`. The editor's caches are cleared first (the dry run then predicts a fresh
    inversion).

    Args:
        image: the base image (anything :func:`dragsdk.io.load_image` reads); :func:`sample_image` gives one.
        spec: a dict or spec model of the mode; its ``sampler.steps`` is replaced by ``steps``.
        atol: how far the edit after a cancel may differ from the one before (float32 CPU: bit-identical in
            practice; the margin covers multi-threaded reductions).

    Returns:
        the names of the properties checked and the edit's :class:`~dragsdk.editor.EditResult`.

    Raises:
        ConformanceError: the first property that fails, named.
    """
    from .io import load_image

    img = load_image(image)
    data = spec.model_dump(mode="json") if isinstance(spec, EditSpec) else dict(spec)
    parsed = check_spec_round_trip(editor, with_sampler(data, steps=steps))
    out = ConformanceResult(["schema", "json round-trip"])
    editor.clear_cache()
    dry = editor.plan(img, parsed)
    check_plan(dry)
    out.checked.append("plan shapes")
    result = editor.edit(img, parsed)
    check_edit(result, parsed, dry, img)
    out.checked.append("edit")
    check_dry_run_cost(dry, result)
    out.checked.append("dry-run cost")
    mode = editor.registry.modes[parsed.mode]
    if getattr(mode, "profiles", None) is not None:
        check_profiles(mode, parsed, result)
        out.checked.append("profiles")
    check_cancellation(editor, img, parsed, result.latent, atol)
    out.checked.append("cancellation")
    out.result = result
    return out
