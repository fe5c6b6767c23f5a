"""The edit-mode interface. A mode turns a validated spec into an :class:`~dragsdk.plan.EditPlan`: masks,
latent pastes, K/V injection and energy terms. Modes register through ``dragsdk_register_modes``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .errors import SpecError
from .geometry import Canvas
from .io import load_mask
from .plan import EditPlan
from .spec import EditSpec, PointPair


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
