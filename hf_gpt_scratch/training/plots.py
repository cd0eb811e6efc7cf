"""The recipes' figures as PNG files, drawn on matplotlib `Figure`s (no display needed, pyplot's global
backend left alone): the book's loss curves (figure 5.12, chapter 6's accuracy twin) and confusion matrix."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def _pretty(name: str) -> str:
    if name == "eval_train_loss":
        return "Training loss (eval mode)"
    name = name.removeprefix("eval_").removeprefix("validation_")
    if name.startswith("train_"):
        return "Training " + name.removeprefix("train_").replace("_", " ")
    return "Validation " + name.replace("_", " ")


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def plot_losses(
    curves: dict[str, dict[str, list]], path: str | os.PathLike, metric: str = "loss", title: str | None = None
) -> Path:
    """The book's figure 5.12 as a PNG at `path` (returned): each `<metric>` or `*_<metric>` series of
    `curves` (`reporting.log_history_to_curves`) against tokens seen (else steps), epochs on top, training
    solid, evaluation dash-dotted. Raises ValueError when there is nothing to plot."""
    names = sorted((n for n in curves if n == metric or n.endswith("_" + metric)), key=lambda n: (n.startswith("eval"), n))
    if not names:
        raise ValueError(f"no '{metric}' series to plot (have {sorted(curves)})")
    x = "tokens_seen" if any(v is not None for n in names for v in curves[n]["tokens_seen"]) else "step"
    fig = Figure(figsize=(6.0, 4.0), dpi=100, layout="tight")
    ax = fig.add_subplot(1, 1, 1)
    pairs = set()  # (x, epoch) of every point: where the epochs of the top axis fall
    for name in names:
        points = [(xv, yv, ev) for xv, yv, ev in zip(curves[name][x], curves[name]["value"], curves[name]["epoch"]) if xv is not None]
        style = dict(linestyle="-.", marker="o", markersize=3) if name.startswith("eval") else dict(linestyle="-")
        if len(points) == 1:  # a line needs two points: a short run's single log must still show
            style.update(marker="o", markersize=4)
        ax.plot([p[0] for p in points], [p[1] for p in points], label=_pretty(name), **style)
        pairs |= {(float(p[0]), float(p[2])) for p in points if p[2] is not None}
    ax.set_xlabel("Tokens seen" if x == "tokens_seen" else "Step")
    ax.set_ylabel(metric.replace("_", " ").capitalize())
    ax.legend(loc="best")
    ax.grid(True, alpha=0.3)
    pairs = sorted(pairs)
    if len(pairs) >= 2 and pairs[-1][1] > pairs[0][1]:
        px = np.array([p[0] for p in pairs])
        pe = np.maximum.accumulate(np.array([p[1] for p in pairs]))  # epochs never go back
        ticks = MaxNLocator(nbins=6).tick_values(pe[0], pe[-1])
        ticks = ticks[(ticks >= pe[0] - 1e-9) & (ticks <= pe[-1] + 1e-9)]
        top = ax.twiny()
        top.set_xlim(ax.get_xlim())
        top.set_xticks(np.interp(ticks, pe, px))
        top.set_xticklabels([f"{t:g}" for t in ticks])
        top.set_xlabel("Epoch")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_confusion_matrix(
    y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str], path: str | os.PathLike, title: str | None = None
) -> np.ndarray:
    """Confusion matrix of class ids (rows: true class, columns: predicted; `labels` names the ids
    0..n-1), drawn with scikit-learn's `ConfusionMatrixDisplay` and saved as a PNG at `path`.
    Returns the count matrix; ValueError for an id outside 0..n-1."""
    from sklearn.metrics import ConfusionMatrixDisplay

    ids = range(len(labels))
    outside = sorted({int(v) for v in (*y_true, *y_pred)} - set(ids))
    if outside:
        raise ValueError(f"class ids {outside} are outside 0..{len(labels) - 1} (labels {list(labels)})")
    fig = Figure(figsize=(1.2 * len(labels) + 2.5, 1.0 * len(labels) + 2.0), dpi=100, layout="tight")
    names = [str(n) for n in labels]
    display = ConfusionMatrixDisplay.from_predictions(y_true, y_pred, labels=list(ids), display_labels=names,
                                                      cmap="Blues", ax=fig.add_subplot())
    if title:
        display.ax_.set_title(title)
    _save(fig, path)
    return display.confusion_matrix
