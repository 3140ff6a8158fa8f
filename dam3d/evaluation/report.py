"""Files for Snakemake's HTML report: the accuracy table, a bar plot of top-k by fusion, stage timings.

Pillow draws the plot (no matplotlib dependency); tables are small HTML pages,
which the report shows inline.
"""

from __future__ import annotations

import csv
import html
import os
import statistics
from collections.abc import Iterable
from pathlib import Path

from PIL import Image, ImageDraw

from dam3d.runtime.atomic import atomic_path, write_text
from dam3d.stages.contact import label_font
from dam3d.evaluation.evaluate import TOPK, format_delta

COLOURS = {1: (31, 119, 180), 3: (255, 127, 14), 5: (44, 160, 44)}
# The timings page reads the newest benchmark files of each stage only: every chunk job that ever
# ran left one, so a catalogue refreshed for years would otherwise make the page read them all.
TIMINGS_MAX_JOBS = 1000
_STYLE = ("<style>body{font-family:sans-serif;font-size:14px}table{border-collapse:collapse}"
          "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}th{background:#eee}"
          "td:first-child,th:first-child{text-align:left}</style>")


def bar_plot(report: dict[str, dict], out: Path, *, title: str = "") -> None:
    """Grouped bars: one group per fusion, bars top-1/3/5, with the top-1 95 % interval as a whisker."""
    fusions = list(report)
    w, h = 120 + 170 * len(fusions), 420
    left, right, top, bottom = 60, 20, 64, 60
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    font, small = label_font(16), label_font(13)
    plot_h = h - top - bottom

    def y_of(v: float) -> float:
        return top + plot_h * (1.0 - v)

    for tick in range(0, 101, 20):
        y = y_of(tick / 100)
        d.line([(left, y), (w - right, y)], fill=(225, 225, 225))
        d.text((left - 8, y), f"{tick}%", fill="black", font=small, anchor="rm")
    d.line([(left, top), (left, top + plot_h)], fill="black")
    d.line([(left, top + plot_h), (w - right, top + plot_h)], fill="black")
    group = (w - left - right) / max(1, len(fusions))
    bar = group / (len(TOPK) + 1.5)
    for g, fusion in enumerate(fusions):
        x0 = left + g * group + bar * 0.75
        for b, k in enumerate(TOPK):
            v = float(report[fusion][f"top{k}"])
            xa, xb = x0 + b * bar, x0 + (b + 1) * bar - 3
            d.rectangle([xa, y_of(v), xb, y_of(0)], fill=COLOURS[k])
            label_at = max(v, report[fusion]["top1_ci95"][1]) if k == 1 else v  # above the whisker
            d.text(((xa + xb) / 2, y_of(label_at) - 3), f"{v:.0%}", fill="black", font=small, anchor="md")
            if k == 1:
                lo, hi = report[fusion]["top1_ci95"]
                xm = (xa + xb) / 2
                d.line([(xm, y_of(lo)), (xm, y_of(hi))], fill="black", width=2)
                d.line([(xm - 5, y_of(lo)), (xm + 5, y_of(lo))], fill="black", width=2)
                d.line([(xm - 5, y_of(hi)), (xm + 5, y_of(hi))], fill="black", width=2)
        d.text((left + (g + 0.5) * group, top + plot_h + 10), fusion, fill="black", font=font, anchor="ma")
    for b, k in enumerate(TOPK):
        x = left + 10 + b * 90
        d.rectangle([x, 10, x + 14, 24], fill=COLOURS[k])
        d.text((x + 20, 17), f"top-{k}", fill="black", font=small, anchor="lm")
    if title:
        d.text((w - right, 17), title, fill="black", font=small, anchor="rm")
    d.text((w / 2, h - 18), "whisker: bootstrap 95% interval of top-1", fill=(90, 90, 90), font=small, anchor="mm")
    with atomic_path(out) as tmp:
        img.save(tmp, format="PNG")


def accuracy_html(report: dict[str, dict], *, title: str, notes: Iterable[str] = ()) -> str:
    """The accuracy table and worst confusions as a small HTML page."""
    rows = []
    for fusion, r in report.items():
        lo, hi = r["top1_ci95"]
        rows.append(f"<tr><td>{html.escape(fusion)}</td><td>{r['top1']:.1%}</td><td>{lo:.1%} - {hi:.1%}</td>"
                    f"<td>{r['top3']:.1%}</td><td>{r['top5']:.1%}</td><td>{r['n']}</td>"
                    f"<td>{html.escape(format_delta(r))}</td></tr>")
    parts = [f"<html><head><meta charset='utf-8'>{_STYLE}</head><body><h3>{html.escape(title)}</h3>",
             "<table><tr><th>fusion</th><th>top-1</th><th>top-1 95% CI</th><th>top-3</th><th>top-5</th>"
             "<th>queries</th><th>top-1 minus 2d (paired bootstrap 95% CI)</th></tr>", *rows, "</table>"]
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    for fusion, r in report.items():
        if not r["confusions"]:
            continue
        parts.append(f"<h4>Worst confusions, {html.escape(fusion)} (expected &rarr; predicted at top-1)</h4><table>"
                     "<tr><th>expected</th><th>predicted</th><th>count</th><th>queries</th></tr>")
        for c in r["confusions"]:
            parts.append(f"<tr><td>{html.escape(c['expected'])}</td><td>{html.escape(c['predicted'])}</td>"
                         f"<td>{c['count']}</td><td>{html.escape(', '.join(c['queries'][:4]))}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def recent_benchmarks(folders: Iterable[Path | str], max_jobs: int = TIMINGS_MAX_JOBS) -> list[Path]:
    """The newest `max_jobs` benchmark TSVs (by mtime) of each stage folder, oldest first; a missing folder has none.

    One `os.scandir` per folder: the files are stat'ed once, not opened, to choose them.
    """
    chosen: list[Path] = []
    for folder in folders:
        try:
            with os.scandir(folder) as entries:
                tsvs = [(e.stat().st_mtime_ns, e.name, e.path) for e in entries if e.name.endswith(".tsv") and e.is_file()]
        except FileNotFoundError:
            continue
        chosen += [Path(path) for _, _, path in sorted(tsvs)[-max_jobs:]]
    return chosen


def read_benchmarks(paths: Iterable[Path]) -> dict[str, list[dict[str, float]]]:
    """Snakemake `benchmark:` TSVs grouped by stage (the folder under benchmarks/: cutout, render, embed-model, ...)."""
    stages: dict[str, list[dict[str, float]]] = {}
    for path in paths:
        path = Path(path)
        if not path.is_file() or path.stat().st_size == 0:
            continue
        with path.open(newline="") as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                rec = {}
                for key in ("s", "max_rss", "cpu_time"):
                    try:
                        rec[key] = float(row.get(key, "nan"))
                    except ValueError:
                        rec[key] = float("nan")
                stages.setdefault(path.parent.name, []).append(rec)
    return stages


def timings_table(stages: dict[str, list[dict[str, float]]]) -> list[dict[str, object]]:
    rows = []
    for stage, recs in stages.items():
        secs = [r["s"] for r in recs if r["s"] == r["s"]]
        rss = [r["max_rss"] for r in recs if r["max_rss"] == r["max_rss"]]
        if not secs:
            continue
        rows.append({"stage": stage, "jobs": len(secs), "mean_s": statistics.fmean(secs),
                     "median_s": statistics.median(secs), "max_s": max(secs), "total_s": sum(secs),
                     "max_rss_mb": max(rss) if rss else float("nan")})
    return rows


def write_timings(paths: Iterable[Path], tsv: Path, page: Path, *, max_jobs: int = TIMINGS_MAX_JOBS) -> None:
    """Per-stage wall-clock seconds per job (from the benchmark TSVs) as TSV and as an HTML table.

    `max_jobs` is only said on the page: the caller chose at most that many files per stage
    (`recent_benchmarks`).
    """
    rows = timings_table(read_benchmarks(paths))
    cols = ["stage", "jobs", "mean_s", "median_s", "max_s", "total_s", "max_rss_mb"]
    lines = ["\t".join(cols)]
    for r in rows:
        lines.append("\t".join(str(r[c]) if isinstance(r[c], (str, int)) else f"{r[c]:.3f}" for c in cols))
    write_text(tsv, "\n".join(lines) + "\n")
    body = "".join(
        f"<tr><td>{html.escape(str(r['stage']))}</td><td>{r['jobs']}</td><td>{r['mean_s']:.2f}</td>"
        f"<td>{r['median_s']:.2f}</td><td>{r['max_s']:.2f}</td><td>{r['total_s']:.1f}</td><td>{r['max_rss_mb']:.0f}</td></tr>"
        for r in rows
    )
    write_text(page, f"<html><head><meta charset='utf-8'>{_STYLE}</head><body><h3>Seconds per job, by stage</h3>"
                     "<p>From Snakemake's <code>benchmark:</code> files of the jobs that ran, the newest "
                     f"{max_jobs:,} of each stage (wall clock, including "
                     "model loading; a stage's first job pays for it).</p>"
                     "<table><tr><th>stage</th><th>jobs</th><th>mean s</th><th>median s</th><th>max s</th>"
                     f"<th>total s</th><th>max RSS MB</th></tr>{body}</table></body></html>\n")
