"""The report's figures as PNG files: loss curve, learning rate, base-vs-fine-tuned eval bars, every candidate.

Reproducible by construction: matplotlib's default style (a user's matplotlibrc is ignored), the Agg
canvas only (no pyplot, no GUI backend), a fixed size and dpi, and no "Software" tag in the PNG, so
the same inputs give the same bytes on the same matplotlib. Files are written atomically.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

from matplotlib import style
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from runner.core.atomic import write_bytes_atomic
from runner.runs.eval_summary import CandidateMetric, EvalSummary
from runner.runs.records import MetricsRow

DPI = 100
METADATA = {"Software": None}  # matplotlib otherwise stamps its version into every PNG
BASE_COLOR, FT_COLOR, EVAL_COLOR = "#9e9e9e", "#1f77b4", "#d62728"
PANELS_PER_ROW = 4


def series(records: list[MetricsRow], key: str) -> tuple[list, list]:
    """(steps, values) of one metrics.jsonl field, sorted by step; a resumed run re-logs steps, the last wins."""
    by_step = {}
    for record in records:
        step, value = record.step, record.value(key)
        if _number(step) and _number(value):
            by_step[step] = value
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def loss_figure(records: list[MetricsRow]) -> Figure | None:
    """Train loss and eval (validation) loss against step on the same axes; None when neither was logged."""
    train, evals = series(records, "loss"), series(records, "eval_loss")
    if not train[0] and not evals[0]:
        return None
    fig, ax = _figure(7, 4)
    if train[0]:
        ax.plot(*train, color=FT_COLOR, linewidth=1.5, label="train loss")
    if evals[0]:
        ax.plot(*evals, color=EVAL_COLOR, marker="o", linewidth=1.5, label="eval loss (val split)")
    ax.set(xlabel="step", ylabel="loss", title="Loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def lr_figure(records: list[MetricsRow]) -> Figure | None:
    """Learning rate against step; None when it was not logged."""
    steps, lrs = series(records, "lr")
    if not steps:
        return None
    fig, ax = _figure(7, 2.8)
    ax.plot(steps, lrs, color=FT_COLOR, linewidth=1.5)
    ax.set(xlabel="step", ylabel="learning rate", title="Learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax.grid(alpha=0.3)
    return fig


REWARDS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


def reward_keys(records: list[MetricsRow]) -> list[str]:
    """trl's reward metrics in the records: the preference ones, then grpo's reward and rewards/<metric>/mean."""
    seen = {key.removeprefix("eval_") for r in records for key in r.keys()}
    grpo = sorted(k for k in seen if k.startswith("rewards/") and k.endswith("/mean"))
    return [k for k in REWARDS if k in seen] + (["reward"] if "reward" in seen else []) + grpo


def rewards_figure(records: list[MetricsRow]) -> Figure | None:
    """A preference or grpo run's trl rewards against step: chosen, rejected and margin (or grpo's reward per metric)
    on one panel, reward accuracy (the share of pairs whose chosen reward beats the rejected one) on another; eval
    points as markers. None for supervised runs."""
    keys = reward_keys(records)
    if not keys:
        return None
    accuracy_logged = "rewards/accuracies" in keys
    fig = Figure(figsize=(10 if accuracy_logged else 7, 3.6), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    rewards = fig.add_subplot(1, 2 if accuracy_logged else 1, 1)
    accuracy = fig.add_subplot(1, 2, 2) if accuracy_logged else None
    colors = {"rewards/chosen": FT_COLOR, "rewards/rejected": EVAL_COLOR, "rewards/margins": "#2ca02c",
              "rewards/accuracies": FT_COLOR, "reward": "#2ca02c"}
    for index, key in enumerate(keys):
        ax = accuracy if key == "rewards/accuracies" else rewards
        name, color = key.removeprefix("rewards/"), colors.get(key, f"C{index + 3}")
        train, evals = series(records, key), series(records, f"eval_{key}")
        if train[0]:
            ax.plot(*train, color=color, linewidth=1.5, label=f"{name} (train)")
        if evals[0]:
            ax.plot(*evals, color=color, marker="o", linestyle=":", linewidth=1, label=f"{name} (eval)")
    rewards.axhline(0, color=BASE_COLOR, linewidth=0.8)
    rewards.set(xlabel="step", ylabel="reward (as trl logs it)", title="Rewards")
    if accuracy is not None:
        accuracy.set(xlabel="step", ylabel="share of pairs", title="Reward accuracy (chosen > rejected)",
                     ylim=(-0.05, 1.05))
    for ax in (rewards, accuracy):
        if ax is not None:
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
    return fig


def eval_figure(metrics: dict[str, CandidateMetric], lower_is_better: frozenset[str] = frozenset()) -> Figure | None:
    """One panel per metric (own scale): base and fine-tuned bars, the fine-tuned bar's error bar is base + delta CI;
    metrics: EvalSummary.versus_base() (value: fine-tuned, reference: base)."""
    shown = {name: m for name, m in metrics.items() if _number(m.reference) and _number(m.value)}
    if not shown:
        return None
    cols = min(len(shown), PANELS_PER_ROW)
    rows = math.ceil(len(shown) / cols)
    fig = Figure(figsize=(2.6 * cols + 0.4, 3.0 * rows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    for index, (name, m) in enumerate(shown.items()):
        ax = fig.add_subplot(rows, cols, index + 1)
        base, ft = m.reference, m.value
        ax.bar([0, 1], [base, ft], color=[BASE_COLOR, FT_COLOR], width=0.6)
        ci = m.ci95
        if isinstance(ci, list) and len(ci) == 2 and all(_number(x) for x in ci):
            # The CI is of the paired delta; anchored at the base mean it brackets the fine-tuned bar.
            low, high = base + ci[0], base + ci[1]
            ax.errorbar([1], [ft], yerr=[[max(ft - low, 0)], [max(high - ft, 0)]], color="black", capsize=6)
        ax.axhline(base, color=BASE_COLOR, linestyle="--", linewidth=1)
        delta = m.delta
        subtitle = f"\nΔ {delta:+.3g}" if _number(delta) else ""
        direction = " (lower is better)" if name in lower_is_better else ""
        label = name.replace("$", r"\$")  # a bare $ would start matplotlib mathtext
        ax.set_title(f"{label}{direction}{subtitle}", fontsize=9)
        ax.set_xticks([0, 1], [f"base\n{base:.3g}", f"fine-tuned\n{ft:.3g}"], fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
        ax.set_xlim(-0.6, 1.6)
        ax.margins(y=0.15)
    fig.suptitle("Base vs fine-tuned (error bar: 95% CI of the paired delta)", fontsize=10)
    return fig


def candidates_figure(summary: EvalSummary, lower_is_better: frozenset[str] = frozenset()) -> Figure | None:
    """One panel per metric: a bar per candidate; each non-reference bar's error bar is the reference's value plus
    the 95% CI of the paired delta (candidate - reference), so it brackets the bar when the difference is noise."""
    found, reference = summary.candidates, summary.reference
    names = list(dict.fromkeys(n for c in found.values() for n in c.metrics))
    if not names or len(found) < 2:
        return None
    labels = list(found)
    cols = min(len(names), PANELS_PER_ROW)
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(max(2.6, 0.9 * len(labels) + 0.8) * cols + 0.4, 3.4 * rows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    colors = [FT_COLOR if label == reference else BASE_COLOR for label in labels]
    for index, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, index + 1)
        values = [found[label].metrics.get(name) or CandidateMetric() for label in labels]
        heights = [m.value if _number(m.value) else 0 for m in values]
        ax.bar(range(len(labels)), heights, color=colors, width=0.6)
        for x, m in enumerate(values):
            ci, ref = m.ci95, m.reference
            if labels[x] != reference and isinstance(ci, list) and len(ci) == 2 and all(_number(v) for v in ci) \
                    and _number(ref) and _number(m.value):
                low, high, value = ref + ci[0], ref + ci[1], m.value
                ax.errorbar([x], [value], yerr=[[max(value - low, 0)], [max(high - value, 0)]], color="black",
                            capsize=5)
        direction = " (lower is better)" if name in lower_is_better else ""
        ax.set_title(name.replace("$", r"\$") + direction, fontsize=9)
        ticks = [f"{label.replace('$', '')}\n{h:.3g}" for label, h in zip(labels, heights, strict=True)]
        ax.set_xticks(range(len(labels)), ticks, fontsize=7)
        ax.tick_params(axis="y", labelsize=8)
        ax.margins(y=0.15)
    fig.suptitle(f"Candidates (blue: reference {reference}; error bar: 95% CI of the paired difference)", fontsize=10)
    return fig


def write_plots(folder: Path, records: list[MetricsRow], eval_metrics: dict[str, CandidateMetric] | None,
                lower_is_better: frozenset[str] = frozenset(), candidates: EvalSummary | None = None) -> dict[str, str]:
    """Write the figures that have data under folder; returns {name: file name}; stale ones are removed.
    candidates: the eval summary, for the per-candidate chart (None when only base and fine-tuned ran)."""
    with style.context("default"):
        figures = {"loss": loss_figure(records), "lr": lr_figure(records), "rewards": rewards_figure(records),
                   "eval": eval_figure(eval_metrics, lower_is_better) if eval_metrics else None,
                   "candidates": candidates_figure(candidates, lower_is_better) if candidates else None}
        written = {}
        for name, fig in figures.items():
            path = Path(folder) / f"{name}.png"
            if fig is None:
                path.unlink(missing_ok=True)  # an old plot must not outlive the data it showed
                continue
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=DPI, metadata=METADATA)
            write_bytes_atomic(path, buffer.getvalue())
            written[name] = path.name
    return written


def warm() -> None:
    """Draw a small throw-away figure with text, so the first real figure does not pay for loading the fonts and
    the text layout caches (a tenth of a second or more): `recipe train` calls it while the trainer runs."""
    fig, ax = _figure(2, 2)
    ax.plot([0, 1], [0, 1], label="warm")
    ax.set(title="warm", xlabel="step", ylabel="loss")
    ax.legend()
    fig.savefig(io.BytesIO(), format="png", dpi=DPI, metadata=METADATA)


def _figure(width: float, height: float):
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
