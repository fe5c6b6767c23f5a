"""Benchmark datasets as one stream of ``(sample id, image, spec, metadata)``.

Layouts (as published: DragDiffusion's ``drag_bench_evaluation``, RegionDrag's README and
``region_utils/drag.py:39-59``, GoodDrag's Drag100 release):

- ``dragbench`` (DragDiffusion, arXiv 2306.14435): ``<category>/<sample>/original_image.png`` + ``meta_data.pkl``
  (prompt, points as alternating handle/target ``[x, y]`` pixels, mask ``(H, W)`` uint8, 1 = editable).
- ``dragbench-sr`` / ``dragbench-dr`` (RegionDrag, arXiv 2407.18247): the DragBench layout plus
  ``meta_data_region.pkl`` whose dense point list drives the edit (a ``region-drag`` spec); the sparse points of
  ``meta_data.pkl`` score it, so MD stays comparable with point methods (RegionDrag's own evaluation).
- ``drag100`` (GoodDrag, arXiv 2404.07206): ``<sample>/original.jpg`` + ``points.json`` + ``mask.png``; no prompt.
- ``folder``: any folder of edit-spec JSON files (any mode). A spec names its image with an ``"image"`` key (a path
  relative to the JSON) or sits beside an image of the same stem (``cat.json`` + ``cat.png``). Every file a spec
  names must be inside the dataset root unless ``allow_outside`` (``dragsdk bench --allow-outside-paths``). Optional keys, removed
  before the spec is validated: ``"category"`` and ``"eval_points"`` (``[[handle, target], ...]`` pixels that score
  the edit when the spec itself has no point pairs).

Pickles are read only through :func:`dragsdk.safe_pickle.restricted_load` and JSON through :func:`dragsdk.io.read_json`
(both capped at :func:`dragsdk.io.max_sample_bytes`). A sample that cannot be read (missing file,
malformed pickle or JSON, a point off the image, a mask of the wrong size) is reported through ``on_error`` and
skipped; it never ends the iteration.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image

from ..errors import DragSDKError, SpecError
from ..io import load_image, load_mask, read_json

FORMATS = ("dragbench", "dragbench-sr", "dragbench-dr", "drag100", "folder")
"""Dataset layouts :func:`discover` knows; ``auto`` detects one of them."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class SampleRef(NamedTuple):
    """Where a sample lives, found without reading it.

    Attributes:
        id: the sample folder (or spec file without suffix) relative to the dataset root, ``/``-separated.
        format: one of :data:`FORMATS`.
        path: the sample folder, or the spec JSON for ``folder`` datasets.
        category: the folder holding the sample (DragBench: its category), or the JSON's ``category``.
        root: the dataset root it was found under (:func:`discover`); files a ``folder`` spec names must be inside
            it. None: no such check.
    """

    id: str
    format: str
    path: Path
    category: str
    root: Path | None = None


class Sample(NamedTuple):
    """One benchmark sample; unpacks as ``(id, image, spec, meta)``.

    Attributes:
        id: as :attr:`SampleRef.id`.
        image: the original image, RGB, its native size.
        spec: the edit spec dict the dataset defines (``drag`` for DragBench and Drag100, ``region-drag`` for
            DragBench-SR/DR, the file's own for ``folder``); masks embedded as data URLs or absolute paths.
        meta: ``dataset`` (format), ``category``, ``source`` (folder or JSON path), ``prompt``, ``points`` (the
            ``[[handle, target], ...]`` pixel pairs that score the edit, possibly empty), ``mask`` (``(H, W)`` bool
            editable region or None), ``drag_spec`` (the sparse point-drag spec, when the sample has one).
    """

    id: str
    image: Image.Image
    spec: dict[str, Any]
    meta: dict[str, Any]


def detect_format(root: str | Path) -> str:
    """The layout of a dataset root (or of a single sample folder).

    ``meta_data_region.pkl`` anywhere → ``dragbench-sr`` when the root's name contains ``sr``, else
    ``dragbench-dr`` (the two share a layout); ``meta_data.pkl`` → ``dragbench``; ``points.json`` → ``drag100``;
    any ``*.json`` → ``folder``.

    Raises:
        SpecError: (field ``dataset``) the root is not a folder or holds none of these.
    """
    r = Path(root)
    if not r.is_dir():
        raise SpecError("dataset", f"{r} is not a folder")
    if _first(r, "meta_data_region.pkl"):
        return (
            "dragbench-sr"
            if "sr" in r.name.lower().replace("-", " ").replace("_", " ").split()
            else "dragbench-dr"
        )
    if _first(r, "meta_data.pkl"):
        return "dragbench"
    if _first(r, "points.json"):
        return "drag100"
    if _first(r, "*.json"):
        return "folder"
    raise SpecError(
        "dataset",
        f"{r} holds no DragBench (meta_data.pkl), DragBench-SR/DR (meta_data_region.pkl), Drag100 "
        "(points.json) samples or edit-spec JSON files",
    )


def _first(root: Path, pattern: str) -> bool:
    return next((p for p in root.rglob(pattern) if not _hidden(p, root)), None) is not None


def _hidden(p: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in p.relative_to(root).parts)


def discover(root: str | Path, format: str = "auto") -> list[SampleRef]:
    """Every sample of a dataset, sorted by id, without reading any of them.

    Args:
        root: the dataset folder (or a single sample folder).
        format: one of :data:`FORMATS` or ``auto`` (:func:`detect_format`).

    Raises:
        SpecError: (field ``dataset``) unknown format, or a root that is not a dataset.
    """
    r = Path(root)
    fmt = detect_format(r) if format == "auto" else format
    if fmt not in FORMATS:
        raise SpecError("dataset", f"unknown format {fmt!r}; expected auto or one of {', '.join(FORMATS)}")
    if not r.is_dir():
        raise SpecError("dataset", f"{r} is not a folder")
    marker = {
        "dragbench": "meta_data.pkl",
        "dragbench-sr": "meta_data_region.pkl",
        "dragbench-dr": "meta_data_region.pkl",
        "drag100": "points.json",
    }.get(fmt)
    refs: list[SampleRef] = []
    if marker is not None:
        for f in r.rglob(marker):
            if _hidden(f, r):
                continue
            folder = f.parent
            rel = folder.relative_to(r).as_posix()
            sid = r.name if rel == "." else rel
            category = (folder.parent if rel != "." else r.parent).name
            refs.append(SampleRef(sid, fmt, folder, category, r))
    else:
        for f in r.rglob("*.json"):
            if _hidden(f, r):
                continue
            rel = f.relative_to(r).with_suffix("").as_posix()
            refs.append(SampleRef(rel, fmt, f, f.parent.name, r))
    return sorted(refs, key=lambda s: s.id)


def load(ref: SampleRef, allow_outside: bool = False) -> Sample:
    """Read one sample.

    Args:
        ref: the sample (:func:`discover`).
        allow_outside: let a ``folder`` spec name files (its image, masks, references) outside the dataset root
            ``ref.root``, through ``..``, an absolute path or a symbolic link. Off (the default), such a spec is
            refused: a dataset cannot make the bench read, and copy into its report, any file of the machine.

    Raises:
        SpecError: a missing or malformed file, a point off the image, a mask that is not the image's size, a path
            outside the dataset root (the field is named).
        UnsafePickleError: a pickle that references anything but builtins and numpy arrays.
    """
    if ref.format == "folder":
        sample = _load_folder(ref, allow_outside)
    else:
        loader = {
            "dragbench": _load_dragbench,
            "dragbench-sr": _load_region,
            "dragbench-dr": _load_region,
            "drag100": _load_drag100,
        }[ref.format]
        sample = loader(ref)
    _check(sample)
    return sample


def iter_samples(
    root: str | Path,
    format: str = "auto",
    limit: int | None = None,
    on_error: Callable[[SampleRef, str], None] | None = None,
    allow_outside: bool = False,
) -> Iterator[Sample]:
    """``(id, image, spec, meta)`` for every readable sample of a dataset, in id order.

    Args:
        root: the dataset folder.
        format: one of :data:`FORMATS` or ``auto``.
        limit: stop after this many samples of :func:`discover` (broken ones count).
        on_error: called with the sample and the reason for each sample that cannot be read; default: a
            ``warnings.warn``. The sample is skipped either way.
        allow_outside: as :func:`load`.

    Raises:
        SpecError: (field ``dataset``) the root is not a dataset (nothing is yielded).
    """
    refs = discover(root, format)
    for ref in refs[:limit] if limit is not None else refs:
        try:
            sample = load(ref, allow_outside)
        except (DragSDKError, OSError, ValueError, KeyError, TypeError, EOFError) as e:
            reason = f"{type(e).__name__}: {e}"
            if on_error is None:
                warnings.warn(f"skipped sample {ref.id}: {reason}", stacklevel=2)
            else:
                on_error(ref, reason)
            continue
        yield sample


# -- loaders -------------------------------------------------------------------------------------------------


def _pairs(points: Any, field: str) -> list[list[list[float]]]:
    from ..samples import pairs_from_flat

    try:
        return pairs_from_flat(points, field)
    except (TypeError, ValueError) as e:
        if isinstance(e, SpecError):
            raise
        raise SpecError(field, "expected [x, y] pixel points") from None


def _load_dragbench(ref: SampleRef) -> Sample:
    from ..samples import load_sample

    if not (ref.path / "meta_data.pkl").is_file():
        raise SpecError(
            "meta_data.pkl", f"missing in {ref.path} (it holds the sparse points that score the edit)"
        )
    if not (ref.path / "original_image.png").is_file():
        raise SpecError("original_image.png", f"missing in {ref.path}")
    image_path, spec = load_sample(ref.path)
    image = load_image(image_path)
    mask = load_mask(spec["mask"], "meta_data.pkl:mask") if spec.get("mask") else None
    meta = {
        "dataset": ref.format,
        "category": ref.category,
        "source": str(ref.path),
        "prompt": spec["prompt"],
        "points": spec["points"],
        "mask": mask,
        "drag_spec": spec,
    }
    return Sample(ref.id, image, spec, meta)


REGION_MODE = "region-drag"
"""The mode DragBench-SR/DR samples are made for; its ``convert_spec`` turns a sample into its spec (looked up in
the registry, so the evaluation code imports no mode)."""


def _load_region(ref: SampleRef) -> Sample:
    from ..registry import get_registry

    sparse = _load_dragbench(ref)
    spec = get_registry().modes[REGION_MODE].convert_spec(sparse.spec, ref.path)
    meta = dict(sparse.meta)
    if spec.get("mask") is not None:
        meta["mask"] = load_mask(spec["mask"], "meta_data_region.pkl:mask")
    meta["prompt"] = spec.get("prompt", "")
    return Sample(ref.id, sparse.image, spec, meta)


def _load_drag100(ref: SampleRef) -> Sample:
    from ..samples import load_sample

    image_path, spec = load_sample(ref.path)
    image = load_image(image_path)
    mask = load_mask(spec["mask"], "mask.png") if spec.get("mask") else None
    meta = {
        "dataset": ref.format,
        "category": ref.category,
        "source": str(ref.path),
        "prompt": "",
        "points": spec["points"],
        "mask": mask,
        "drag_spec": spec,
    }
    return Sample(ref.id, image, spec, meta)


def _inside(path: str | Path, root: Path) -> bool:
    try:
        Path(path).resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def _check_inside(spec: Any, root: Path, where: str) -> None:
    """Refuse every absolute path of a resolved spec (relative ones were made absolute) outside ``root``."""
    if isinstance(spec, dict):
        for k, v in spec.items():
            if k not in ("prompt", "negative_prompt", "reference_prompt", "mode"):
                _check_inside(v, root, f"{where}.{k}" if where else str(k))
    elif isinstance(spec, list):
        for k, v in enumerate(spec):
            _check_inside(v, root, f"{where}[{k}]")
    elif (
        isinstance(spec, str)
        and not spec.startswith("data:")
        and Path(spec).is_absolute()
        and not _inside(spec, root)
    ):
        raise SpecError(
            where, f"{spec} is outside the dataset root {root}; allow it with --allow-outside-paths"
        )


def _load_folder(ref: SampleRef, allow_outside: bool = False) -> Sample:
    root = None if allow_outside or ref.root is None else Path(ref.root).resolve()
    if root is not None and not _inside(ref.path, root):
        raise SpecError(
            ref.path.name,
            f"is outside the dataset root {root} (a symbolic link?); allow it with --allow-outside-paths",
        )
    obj = read_json(ref.path)
    if not isinstance(obj, dict) or "mode" not in obj:
        raise SpecError(ref.path.name, "not an edit spec (a JSON object with a 'mode')")
    base = ref.path.parent if root is None else ref.path.parent.resolve()
    image_ref = obj.pop("image", None)
    category = str(obj.pop("category", ref.category))
    eval_points = obj.pop("eval_points", None)
    if image_ref is not None:
        image_path = Path(image_ref) if Path(image_ref).is_absolute() else base / image_ref
    else:
        found = [base / (ref.path.stem + s) for s in IMAGE_SUFFIXES if (base / (ref.path.stem + s)).is_file()]
        if not found:
            raise SpecError(
                "image", f"{ref.path.name} has no 'image' key and no image {ref.path.stem}.png/.jpg beside it"
            )
        image_path = found[0]
    spec = _resolve_paths(obj, base)
    if root is not None:
        if not _inside(image_path, root):
            raise SpecError(
                "image",
                f"{image_path} is outside the dataset root {root}; allow it with --allow-outside-paths",
            )
        _check_inside(spec, root, "")
    image = load_image(image_path)
    if eval_points is not None:
        points = _pairs([p for pair in eval_points for p in pair], "eval_points")
    elif isinstance(spec.get("points"), list) and spec["points"]:
        points = _pairs([p for pair in spec["points"] for p in _pair_list(pair)], "points")
    elif isinstance(spec.get("dense_points"), list) and spec["dense_points"]:
        points = _pairs(spec["dense_points"], "dense_points")
    else:
        points = []
    mask = load_mask(spec["mask"], "mask") if isinstance(spec.get("mask"), str) else None
    meta = {
        "dataset": ref.format,
        "category": category,
        "source": str(ref.path),
        "prompt": spec.get("prompt", ""),
        "points": points,
        "mask": mask,
    }
    if spec.get("mode") == "drag":
        meta["drag_spec"] = spec
    return Sample(ref.id, image, spec, meta)


def _pair_list(pair: Any) -> list[Any]:
    if isinstance(pair, dict):
        return [pair.get("handle"), pair.get("target")]
    return list(pair)


def _resolve_paths(spec: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative mask / reference paths made relative to the spec's folder (as ``dragsdk edit --spec`` does)."""
    from ..specfile import resolve_spec_paths

    return resolve_spec_paths(spec, base)


def _check(sample: Sample) -> None:
    w, h = sample.image.size
    for k, pair in enumerate(sample.meta["points"]):
        for which, (x, y) in zip(("handle", "target"), pair, strict=True):
            if not (0 <= x < w and 0 <= y < h):
                raise SpecError(f"points[{k}].{which}", f"({x:g}, {y:g}) is outside the {w}×{h} image")
    m = sample.meta.get("mask")
    if m is not None and m.shape != (h, w):
        raise SpecError("mask", f"is {m.shape[1]}×{m.shape[0]} pixels, the image is {w}×{h}")
