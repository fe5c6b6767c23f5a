"""One small spec per built-in mode on the repository's own example photograph (``examples/dragbench-car``, present in
every clone), shared by the conformance and golden-slice tests."""

from __future__ import annotations

from typing import Any

from dragsdk.samples import load_sample

from .conftest import EXAMPLE_SAMPLE, ROOT

BUILTIN_MODES = ("drag", "region-drag", "move", "resize", "appearance", "paste", "dragdiffusion")
REF = ROOT / "examples" / "reference-cat"
IMAGE = EXAMPLE_SAMPLE / "original_image.png"


def builtin_specs(sampler: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each built-in mode's spec of one edit of ``IMAGE`` under its default (``official``) profile."""
    _, sample = load_sample(EXAMPLE_SAMPLE)
    mask, prompt = sample["mask"], sample["prompt"]
    square = [[100, 100], [160, 100], [160, 160], [100, 160]]
    return {
        "drag": {**sample, "sampler": sampler},
        "region-drag": {
            "mode": "region-drag",
            "prompt": prompt,
            "sampler": sampler,
            "polygons": [{"handle": square, "target": [[x + 40, y + 20] for x, y in square]}],
        },
        "move": {"mode": "move", "prompt": prompt, "mask": mask, "dx": 40, "dy": 10, "sampler": sampler},
        "resize": {"mode": "resize", "prompt": prompt, "mask": mask, "scale": 0.7, "sampler": sampler},
        "appearance": {
            "mode": "appearance",
            "prompt": prompt,
            "mask": mask,
            "reference": str(REF / "cat.jpg"),
            "reference_mask": str(REF / "cat_mask.png"),
            "sampler": sampler,
        },
        "dragdiffusion": {
            "mode": "dragdiffusion",
            "prompt": prompt,
            "mask": mask,
            "points": sample["points"],
            "n_pix_step": 4,
            "lora_steps": 0,  # the golden slice was recorded without the per-image LoRA
            "sampler": sampler,
        },
        "paste": {
            "mode": "paste",
            "prompt": prompt,
            "reference": str(REF / "cat.jpg"),
            "reference_mask": str(REF / "cat_mask.png"),
            "dx": -40,
            "dy": 20,
            "scale": 0.6,
            "sampler": sampler,
        },
    }
