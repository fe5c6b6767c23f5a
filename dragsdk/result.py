"""An edit's result: the image, the final latent, the report, the spec and plan that were run."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .io import check_outputs, save_image_atomic, write_text_atomic
from .plan import EditPlan
from .report import EditReport
from .spec import EditSpec


@dataclass
class EditResult:
    """An edit's output.

    Attributes:
        image: the edited image at the input's size.
        latent: the final latent ``(1, 4, h, w)``.
        report: timings, UNet evaluations, energies, memory, backend.
        spec: the spec that was run (with the overrides of :meth:`dragsdk.editor.Editor.edit` applied).
        plan: the mode's plan (masks and terms), for inspection.
        images: the image in the ``output_type`` of :meth:`dragsdk.editor.Editor.edit`, batch first as diffusers pipelines return
            it: ``pil`` a one-element list of PIL images; ``np`` ``(1, H, W, 3)`` float32 in [0, 1]; ``pt``
            ``(1, 3, H, W)`` float32 in [0, 1]. Arrays are made from ``image`` (8-bit after compositing), so all
            three hold the same pixels.
    """

    image: Image.Image
    latent: torch.Tensor
    report: EditReport
    spec: EditSpec
    plan: EditPlan
    images: list[Image.Image] | np.ndarray | torch.Tensor = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.images, list) and not self.images:
            self.images = [self.image]

    def save(
        self,
        path: str | os.PathLike[str],
        report: str | os.PathLike[str] | None = None,
        protect: tuple[Path, ...] = (),
    ) -> None:
        """Write the image (and the report JSON) atomically, never over a protected input.

        Both destinations are checked before either is written (:func:`dragsdk.io.check_outputs`).

        Raises:
            SpecError: (``out`` / ``report``) a protected input, a folder, or the same file for both.
            OutputError: a file could not be written (nothing partial is left).
        """
        check_outputs({"out": path, "report": report}, protect)
        save_image_atomic(self.image, path, protect)
        if report is not None:
            write_text_atomic(self.report.model_dump_json(indent=2), report, protect, field="report")


__all__ = ["EditResult"]
