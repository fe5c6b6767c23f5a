"""Plots (matplotlib, optional) and the HTML report of a bench run (the arrow overlays are
:func:`dragsdk.eval.pictures.draw_arrows`).

- :func:`write_plots`: ``plots/metrics.png`` (the distribution of every metric over samples) and
  ``plots/phases.png`` (time per phase for each sample). Needs matplotlib (the ``eval`` and ``dev`` extras); without
  it the plots are skipped with a message and the rest of the report is written.
- :func:`write_report`: ``report.html``: the summary table, unavailable metrics, errors, the plots and, per sample,
  original / edited / arrows side by side with its metrics. Image paths are relative, so the output folder can be
  moved or served as is.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_write, write_text_atomic

PHASES = ("finetune", "encode", "invert", "optimise", "sample", "decode")


_PLOT_METRICS = (
    ("md", "MD per sample (px, DragDiffusion)"),
    ("md_regiondrag", "MD ×100 (RegionDrag)"),
    ("dai_1", "DAI γ=1"),
    ("dai_5", "DAI γ=5"),
    ("dai_10", "DAI γ=10"),
    ("dai_20", "DAI γ=20"),
    ("psnr_inside", "PSNR inside (dB)"),
    ("psnr_outside", "PSNR outside (dB)"),
    ("ssim_inside", "SSIM inside"),
    ("ssim_outside", "SSIM outside"),
    ("if", "IF (1 − LPIPS)"),
)


def write_plots(out: Path, records: list[dict[str, Any]]) -> tuple[list[str], str]:
    """Write ``plots/metrics.png`` and ``plots/phases.png``.

    Returns:
        ``(paths relative to out, message)``: the message says why plots were skipped (matplotlib missing, nothing
        to plot), else it is empty.
    """
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "plots skipped: matplotlib is not installed (pip install matplotlib, or the 'eval' extra)"
    ok = [r for r in records if r.get("status") == "ok"]
    if not ok:
        return [], "plots skipped: no sample was edited"
    written: list[str] = []
    series = []
    for key, title in _PLOT_METRICS:
        vals = [r["metrics"][key] for r in ok if r["metrics"].get(key) is not None]
        if vals:
            series.append((title, np.asarray(vals) * (100 if key == "md_regiondrag" else 1)))
    if series:
        cols = min(4, len(series))
        rows = math.ceil(len(series) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
        for ax, (title, vals) in zip(axes.flat, series, strict=False):
            ax.hist(vals, bins=min(20, max(5, len(vals))), color="#4472c4", edgecolor="white")
            ax.axvline(float(np.mean(vals)), color="#c00000", lw=1.5, label=f"mean {np.mean(vals):.3g}")
            ax.set_title(title, fontsize=10)
            ax.legend(fontsize=8)
        for ax in list(axes.flat)[len(series) :]:
            ax.axis("off")
        fig.suptitle(f"metric distributions over {len(ok)} samples", fontsize=11)
        fig.tight_layout()
        written.append(_save(fig, out / "plots" / "metrics.png", out))
        plt.close(fig)
    names = [r["id"] for r in ok]
    phases = [p for p in PHASES if any(p in (r.get("phase_seconds") or {}) for r in ok)]
    fig, ax = plt.subplots(figsize=(8, 1.6 + 0.32 * len(ok)))
    left = np.zeros(len(ok))
    colours = ("#4472c4", "#ed7d31", "#a5a5a5", "#ffc000", "#70ad47")
    for i, p in enumerate([*phases, "metrics"]):
        vals = np.asarray(
            [
                (r.get("metric_seconds") or 0.0)
                if p == "metrics"
                else (r.get("phase_seconds") or {}).get(p, 0.0)
                for r in ok
            ]
        )
        ax.barh(range(len(ok)), vals, left=left, label=p, color=colours[i % len(colours)])
        left += vals
    ax.set_yticks(range(len(ok)), [n if len(n) < 40 else "…" + n[-38:] for n in names], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title("time per phase and sample", pad=24)
    ax.legend(fontsize=8, ncol=len(phases) + 1, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    written.append(_save(fig, out / "plots" / "phases.png", out))
    plt.close(fig)
    return written, ""


def _save(fig: Any, path: Path, out: Path) -> str:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    return path.relative_to(out).as_posix()


# -- HTML -----------------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
td:first-child,th:first-child{text-align:left}.sample{border-top:2px solid #888;margin-top:1.2em;padding-top:.5em}
.imgs{display:flex;gap:8px;flex-wrap:wrap}.imgs figure{margin:0}.imgs img{max-width:340px;height:auto;border:1px solid #ccc}
figcaption{font-size:12px;color:#555}.err{color:#b00}.note{color:#666;font-size:12px}
"""


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def write_report(
    out: Path, records: list[dict[str, Any]], summary: dict[str, Any], plots: list[str], table: str
) -> Path:
    """Write ``report.html`` (see the module docstring) and return its path."""
    from .summary import by_reason, table_rows

    e = html.escape
    header, rows = table_rows(summary)
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>dragsdk bench</title><style>{_CSS}</style>"
        "</head><body><h1>dragsdk bench</h1>"
    ]
    settings = summary.get("settings", {})
    parts.append("<p class='note'>" + e(", ".join(f"{k}={v}" for k, v in settings.items())) + "</p>")
    parts.append("<h2>Summary</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        parts.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>")
    parts.append(
        "</table><p class='note'>MD px: DragDiffusion protocol, mean over pairs. MD-RD×100: RegionDrag "
        "protocol (normalised by image size) ×100. DAI: GoodDrag, lower is better. PSNR/SSIM inside and "
        f"outside the edit mask (PSNR capped at {summary.get('psnr_cap_db')} dB). IF = 1 − LPIPS.</p>"
    )
    unavailable = summary.get("unavailable", {})
    for reason, names in by_reason(unavailable).items():
        parts.append(f"<p class='err'>{e(', '.join(names))}: {e(reason)}</p>")
    for k, v in summary.get("errors", {}).items():
        parts.append(f"<p class='err'>error {e(k)}: {e(str(v))}</p>")
    if plots:
        parts.append(
            "<h2>Plots</h2><div class='imgs'>"
            + "".join(f"<figure><img src='{e(p)}' style='max-width:900px'></figure>" for p in plots)
            + "</div>"
        )
    parts.append("<h2>Samples</h2>")
    for r in records:
        parts.append(
            f"<div class='sample'><b>{e(r['id'])}</b> <span class='note'>{e(str(r.get('category')))}"
            f" · {e(str(r.get('mode') or ''))}</span>"
        )
        if r["status"] != "ok":
            parts.append(f"<p class='err'>{e(str(r.get('error')))}</p></div>")
            continue
        if r.get("prompt"):
            parts.append(f"<div class='note'>prompt: {e(r['prompt'])}</div>")
        m = {k: v for k, v in r["metrics"].items() if not k.endswith("_pairs")}
        parts.append(
            "<div class='note'>"
            + " · ".join(f"{e(k)} {_fmt(v)}" for k, v in m.items())
            + f" · {_fmt(r.get('seconds'))} s</div>"
        )
        for k, v in (r.get("metric_notes") or {}).items():
            if v not in unavailable.values():  # said once above
                parts.append(f"<div class='note'>{e(k)}: {e(v)}</div>")
        files = r.get("files") or {}
        parts.append("<div class='imgs'>")
        for key, caption in (
            ("original", "original"),
            ("edited", "edited"),
            ("arrows", "arrows: handle (red) → target (blue), DIFT match (green)"),
        ):
            if files.get(key):
                parts.append(
                    f"<figure><img src='{e(files[key])}' loading='lazy'><figcaption>{e(caption)}"
                    "</figcaption></figure>"
                )
        parts.append("</div></div>")
    parts.append(f"<h2>Summary (text)</h2><pre>{e(table)}</pre></body></html>")
    return write_text_atomic("\n".join(parts), out / "report.html")
