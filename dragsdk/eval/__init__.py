"""Evaluation: DragBench-style datasets, metrics pinned to their published protocols, and ``dragsdk bench``.

- :mod:`dragsdk.eval.datasets`: DragBench, DragBench-SR/DR, Drag100 and plain spec folders as one iterator of
  ``(sample id, image, spec, metadata)``.
- :mod:`dragsdk.eval.metrics`: Mean Distance (DragDiffusion and RegionDrag protocols), Image Fidelity (1 − LPIPS),
  GoodDrag's DAI, PSNR / SSIM inside and outside the edit mask.
- :mod:`dragsdk.eval.dift`: the DIFT feature extractor MD uses (SD 2.1, t=261, up-block 1, ensemble 8 by default).
- :mod:`dragsdk.eval.bench`: the resumable run loop (JSONL, summary, plots, HTML report); Ray scale-out in
  :mod:`dragsdk.eval.ray_runner`; pictures in :mod:`dragsdk.eval.report`.

See ``docs/evaluation.md``.
"""

from __future__ import annotations

from .bench import METRICS, BenchConfig, BenchResult, ResultsLog, comparable, run_bench, summarize
from .datasets import FORMATS, Sample, SampleRef, detect_format, discover, iter_samples, load
from .dift import DIFT, FeatureFn
from .metrics import (
    ImageFidelity,
    MeanDistance,
    MetricUnavailable,
    dai_all,
    drag_accuracy_index,
    fidelity_in_out,
    lpips_status,
    mean_distance,
    mean_distance_dragdiffusion,
    mean_distance_regiondrag,
    psnr,
    ssim,
)

__all__ = [
    "DIFT",
    "FORMATS",
    "METRICS",
    "BenchConfig",
    "BenchResult",
    "FeatureFn",
    "ImageFidelity",
    "MeanDistance",
    "MetricUnavailable",
    "ResultsLog",
    "Sample",
    "SampleRef",
    "comparable",
    "dai_all",
    "detect_format",
    "discover",
    "drag_accuracy_index",
    "fidelity_in_out",
    "iter_samples",
    "load",
    "lpips_status",
    "mean_distance",
    "mean_distance_dragdiffusion",
    "mean_distance_regiondrag",
    "psnr",
    "run_bench",
    "ssim",
    "summarize",
]
