"""The loss curves of every compared run in one PNG: one colour per side, solid train loss, dashed eval loss; the
runs of a seed group share their side's colour. Same reproducibility rules as the report's plots (plots.py)."""
from __future__ import annotations

import io
from pathlib import Path

from matplotlib import style
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from runner.core.atomic import write_bytes_atomic
from runner.report.plots import DPI, METADATA, series
from runner.runs.records import MetricsRow, read_rows

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def figure(curves: list[tuple[str, list[list[MetricsRow]]]], title: str = "Loss: every compared run") -> Figure | None:
    """curves: (side label, metrics.jsonl records of each of its runs); None when no run logged a loss."""
    fig = Figure(figsize=(8, 4.5), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    drawn = False
    for index, (label, runs) in enumerate(curves):
        color = COLORS[index % len(COLORS)]
        for number, records in enumerate(runs):
            name = label if len(runs) == 1 else f"{label} #{number + 1}"
            first = number == 0
            train, evals = series(records, "loss"), series(records, "eval_loss")
            if train[0]:
                ax.plot(*train, color=color, linewidth=1.4, alpha=1 if first else 0.6,
                        label=f"{name} train".replace("$", r"\$"))
                drawn = True
            if evals[0]:
                ax.plot(*evals, color=color, linestyle="--", marker="o", markersize=3, linewidth=1.2,
                        alpha=1 if first else 0.6, label=f"{name} eval".replace("$", r"\$"))
                drawn = True
    if not drawn:
        return None
    ax.set(xlabel="step", ylabel="loss", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def write(path: Path, sides: list[tuple[str, list]], title: str = "Loss: every compared run") -> str | None:
    """Write the figure for sides [(label, [RunData])]; returns the file name, or None (and no file) without losses."""
    curves = [(label, [read_rows(d.run.metrics_path, MetricsRow, strict=False)[0]
                       if d.run.metrics_path.is_file() else [] for d in runs]) for label, runs in sides]
    with style.context("default"):
        fig = figure(curves, title)
        if fig is None:
            Path(path).unlink(missing_ok=True)
            return None
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=DPI, metadata=METADATA)
    write_bytes_atomic(path, buffer.getvalue())
    return Path(path).name
