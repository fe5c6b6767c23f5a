"""Summaries of benchmark records: per-dataset means and the fixed-width table (:func:`format_table`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .jobs import completed_records
from .metrics import (
    PSNR_CAP_DB,
)

SUMMARY_METRICS = (
    "md",
    "md_regiondrag",
    "dai_1",
    "dai_5",
    "dai_10",
    "dai_20",
    "psnr_inside",
    "psnr_outside",
    "ssim_inside",
    "ssim_outside",
    "if",
)


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _group(records: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in records if r["status"] == "ok"]
    out: dict[str, Any] = {
        "samples": len(records),
        "ok": len(ok),
        "errors": len(records) - len(ok),
        "pairs": sum(len(r.get("points") or []) for r in ok),
    }
    for name in SUMMARY_METRICS:
        if name == "md":  # DragDiffusion averages over all pairs of the benchmark
            vals = [d for r in ok for d in r["metrics"].get("md_pairs", [])]
        else:
            vals = [r["metrics"][name] for r in ok if r["metrics"].get(name) is not None]
        out[name] = _mean(vals)
        out[f"{name}_n"] = len(vals)
    out["seconds_mean"] = _mean([r["seconds"] for r in ok if r.get("seconds") is not None])
    phases: dict[str, list[float]] = {}
    for r in ok:
        for k, v in (r.get("phase_seconds") or {}).items():
            phases.setdefault(k, []).append(v)
    out["phase_seconds_mean"] = {k: _mean(v) for k, v in phases.items()}
    out["metric_seconds_mean"] = _mean(
        [r["metric_seconds"] for r in ok if r.get("metric_seconds") is not None]
    )
    unet = [sum((r.get("unet_evaluations") or {}).values()) for r in ok]
    out["unet_evaluations_mean"] = _mean([float(u) for u in unet])
    peaks = [r["peak_memory_bytes"] for r in ok if r.get("peak_memory_bytes")]
    out["peak_memory_bytes_max"] = max(peaks) if peaks else None
    return out


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary of a run by category, plus ``all``.

    MD (DragDiffusion) is the mean over all pairs (as ``run_eval_point_matching.py``); every other metric is the
    mean over samples that have it. ``unavailable`` lists the metrics that were not computed and why; ``errors``
    the samples that could not be read or edited. Incomplete or mistyped records are left out and each sample id
    counts once (:func:`completed_records`).
    """
    records, _ = completed_records(records)
    cats: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        cats.setdefault(str(r.get("category")), []).append(r)
    unavailable: dict[str, str] = {}
    for r in records:
        for k, v in (r.get("metric_notes") or {}).items():
            if "not computed:" in v:  # MetricUnavailable: a package or weights missing
                unavailable.setdefault(k, v)
    return {
        "categories": {c: _group(rs) for c, rs in sorted(cats.items())},
        "all": _group(records),
        "unavailable": unavailable,
        "errors": {r["id"]: r["error"] for r in records if r["status"] == "error"},
        "psnr_cap_db": PSNR_CAP_DB,
    }


_COLUMNS = (
    ("n", "samples", "{:d}"),
    ("err", "errors", "{:d}"),
    ("pairs", "pairs", "{:d}"),
    ("MD px", "md", "{:.2f}"),
    ("MD-RD×100", "md_regiondrag", "{:.2f}"),
    ("DAI1", "dai_1", "{:.4f}"),
    ("DAI5", "dai_5", "{:.4f}"),
    ("DAI10", "dai_10", "{:.4f}"),
    ("DAI20", "dai_20", "{:.4f}"),
    ("PSNRin", "psnr_inside", "{:.2f}"),
    ("PSNRout", "psnr_outside", "{:.2f}"),
    ("SSIMin", "ssim_inside", "{:.3f}"),
    ("SSIMout", "ssim_outside", "{:.3f}"),
    ("IF", "if", "{:.3f}"),
    ("s/img", "seconds_mean", "{:.2f}"),
)


def table_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (one per category, then ``all``) of the summary table, values formatted."""
    header = ["category", *(c[0] for c in _COLUMNS)]
    rows = []
    for name, g in [*summary["categories"].items(), ("all", summary["all"])]:
        row = [name]
        for _, key, fmt in _COLUMNS:
            v = g.get(key)
            if v is None:
                row.append("—")
            else:
                row.append(fmt.format(v * 100 if key == "md_regiondrag" else v))
        rows.append(row)
    return header, rows


def format_table(summary: dict[str, Any]) -> str:
    """The summary as a fixed-width text table, with the unavailable metrics and errors below it."""
    header, rows = table_rows(summary)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )

    text = [line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows[:-1])]
    text += ["  ".join("-" * w for w in widths), line(rows[-1])]
    for reason, names in by_reason(summary.get("unavailable", {})).items():
        text.append(f"{', '.join(names)}: {reason}")
    for k, v in summary.get("errors", {}).items():
        text.append(f"error {k}: {v}")
    return "\n".join(text)


def by_reason(unavailable: dict[str, str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, reason in unavailable.items():
        out.setdefault(reason, []).append(name)
    return out
