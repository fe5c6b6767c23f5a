"""The edit-mode interface. A mode turns a validated spec into an :class:`~dragsdk.plan.EditPlan`: masks,
latent pastes, K/V injection and energy terms. Modes register through ``dragsdk_register_modes``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import SpecError
from .geometry import Canvas
from .io import load_image, load_mask
from .plan import EditPlan, SDEPlan
from .spec import EditSpec, PointPair, SamplerSettings, profile_label


@dataclass
class PlanContext:
    """What a mode may use while planning.

    Attributes:
        canvas: the working canvas of the base image.
        image: the base image (RGB, its original size).
        steps: the number of sampling steps.
    """

    canvas: Canvas
    image: Image.Image
    steps: int
    suggest_mask: Callable[[tuple[float, float]], np.ndarray] | None = None
    mask_proposed: bool = False

    def load_reference(self, ref: object, field: str) -> Image.Image:
        """A reference image resized to the base image's size (DragonDiffusion resizes references to the base).

        Raises:
            SpecError: missing or unreadable (the field is named).
        """
        try:
            img = load_image(ref)  # type: ignore[arg-type]
        except SpecError as e:
            raise SpecError(field, str(e).split(": ", 1)[-1]) from e
        return img if img.size == self.image.size else img.resize(self.image.size, Image.Resampling.LANCZOS)

    def reference_mask(self, ref: object, field: str, reference_size: tuple[int, int]) -> np.ndarray:
        """A mask drawn on a reference image, checked against that image and resized to the base size."""
        m = load_mask(ref, field)  # type: ignore[arg-type]
        if m.shape != (reference_size[1], reference_size[0]):
            raise SpecError(field, f"mask is {m.shape[1]}×{m.shape[0]} pixels, the reference image is "
                                   f"{reference_size[0]}×{reference_size[1]}")
        if not m.any():
            raise SpecError(field, "mask is empty: it must cover at least one pixel")
        if reference_size != self.image.size:
            m = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(self.image.size, Image.Resampling.NEAREST)) > 127
        return m

    def object_mask(self, ref: object | None, point: tuple[float, float] | None, field: str,
                    notes: list[str]) -> np.ndarray:
        """The given mask, or one proposed from a click on the object (``Editor.suggest_mask``)."""
        if ref is not None:
            return self.mask(ref, field)
        if point is None or self.suggest_mask is None:
            raise SpecError(field, "give a mask, or a point on the object so one can be proposed")
        m = self.suggest_mask(point)
        self.mask_proposed = True
        notes.append(f"mask proposed from the point {tuple(point)} (DIFT-style feature similarity)")
        return m

    def diffeditor(self, settings: SamplerSettings, guided: list[int], sde_mask: torch.Tensor) -> dict[str, object]:
        """The regional SDE and time-travel entries of a plan (DiffEditor defaults from the settings)."""
        n = self.steps
        out: dict[str, object] = {}
        if settings.sde.enabled:
            a, b = settings.sde.window(n)
            out["sde"] = SDEPlan(a, b, settings.sde.eta_inside, settings.sde.eta_outside, sde_mask)
        out["time_travel"] = {i: settings.time_travel.repeats for i in settings.time_travel.steps(n) if i in guided}
        return out

    def fidelity(self, profile: str | list[str], options: frozenset[str]) -> dict[str, object]:
        """The plan entries shared by the DragonDiffusion / DiffEditor profiles: where the reference features come
        from (``recorded-reference``), the roll-back timestep (``rollback-at-t``) and the profile for the report."""
        return {
            "reference_features": "recorded" if "recorded-reference" in options else "inverted",
            "rollback_at": "t" if "rollback-at-t" in options else "prev",
            "profile": profile_label(profile),
            "profile_options": tuple(sorted(options)),
        }

    def mask(self, ref: object, field: str, allow_empty: bool = False) -> np.ndarray:
        """Load a mask reference and check it against the image.

        Returns:
            ``(H, W)`` bool array in image pixels.

        Raises:
            SpecError: unreadable, not the image's size, or empty (unless ``allow_empty``).
        """
        m = load_mask(ref, field)  # type: ignore[arg-type]
        w, h = self.canvas.image_size
        if m.shape != (h, w):
            raise SpecError(field, f"mask is {m.shape[1]}×{m.shape[0]} pixels, the image is {w}×{h}")
        if not allow_empty and not m.any():
            raise SpecError(field, "mask is empty: it must cover at least one pixel")
        return m

    def check_points(self, pairs: list[PointPair], field: str = "points") -> None:
        """Raise :class:`SpecError` naming ``points[k].handle`` / ``.target`` for a point off the image."""
        w, h = self.canvas.image_size
        for k, pair in enumerate(pairs):
            for which, xy in (("handle", pair.handle), ("target", pair.target)):
                if not self.canvas.contains(xy):
                    raise SpecError(
                        f"{field}[{k}].{which}", f"({xy[0]}, {xy[1]}) is outside the {w}×{h} image (0 ≤ x < {w}, 0 ≤ y < {h})"
                    )


class EditMode(ABC):
    """Base class of edit modes.

    Attributes:
        name: the ``mode`` value of its specs.
        spec_model: its pydantic spec model (a subclass of :class:`~dragsdk.spec.EditSpec`).
        description: one line for ``dragsdk modes``.
    """

    name: str = ""
    spec_model: type[EditSpec] = EditSpec
    description: str = ""

    @abstractmethod
    def plan(self, spec: EditSpec, ctx: PlanContext) -> EditPlan:
        """Build the plan of ``spec`` on ``ctx.canvas``.

        Raises:
            SpecError: geometry that does not fit the image (the field is named).
        """

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "description": self.description, "schema": self.spec_model.model_json_schema()}

    def resolve_paths(self, spec: dict[str, object], base: Path) -> dict[str, object]:
        """Make file references of a spec read from a file in ``base`` absolute (the CLI calls this; the top-level
        ``mask`` is already resolved). Default: the spec unchanged."""
        return spec

    def convert_spec(self, spec: dict[str, object], sample: Path | None = None) -> dict[str, object]:
        """Turn a spec of another mode (e.g. the point-drag spec of a benchmark sample) into one of this mode.

        Args:
            spec: the other mode's spec as a dict (``mode`` names it).
            sample: the benchmark sample folder the spec was read from, if any (a mode may read more files).

        Raises:
            SpecError: (field ``mode``) this mode cannot convert it (the default).
        """
        raise SpecError("mode", f"mode {self.name!r} cannot run a {spec.get('mode')!r} spec; give a {self.name!r} spec")
