"""Figures of the recipes, saved as PNG with matplotlib's Agg canvas (no display needed, and the
global pyplot backend is left alone).

- `plot_losses(curves, path)`: training and validation loss against tokens seen, with epochs on
  a second x axis: the book's figure 5.12 style (chapter 5) and its accuracy twin in chapter 6
  (`plot_losses(curves, path, metric="accuracy")`).
- `plot_confusion_matrix(y_true, y_pred, labels, path)`: counts per true/predicted class
  (scikit-learn's `ConfusionMatrixDisplay`).

`curves` is what `hf_gpt_scratch.reporting.log_history_to_curves` returns:
`{name: {"step": [...], "epoch": [...], "tokens_seen": [...], "value": [...]}}`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

_X_LABELS = {"tokens_seen": "Tokens seen", "step": "Step", "epoch": "Epoch"}


def _pretty(name: str) -> str:
    """'train_loss' -> 'Training loss', 'eval_loss' -> 'Validation loss',
    'eval_train_loss' -> 'Training loss (eval mode)', 'eval_foo_loss' -> 'foo loss'."""
    if name == "train_loss":
        return "Training loss"
    if name == "eval_loss" or name == "eval_validation_loss":
        return "Validation loss"
    if name == "eval_train_loss":
        return "Training loss (eval mode)"
    if name.startswith("eval_"):
        name = name[len("eval_"):]
        if name.startswith("validation_"):
            name = name[len("validation_"):]
            return "Validation " + name.replace("_", " ")
    if name.startswith("train_"):
        return "Training " + name[len("train_"):].replace("_", " ")
    return name.replace("_", " ").capitalize()


def _points(series: dict[str, list], x: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for xv, yv in zip(series.get(x, []), series.get("value", [])):
        if xv is not None and yv is not None:
            xs.append(float(xv))
            ys.append(float(yv))
    return xs, ys


def _new_figure(size=(6.0, 4.0)) -> Figure:
    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def plot_losses(
    curves: dict[str, dict[str, list]],
    path: str | os.PathLike,
    x: str = "tokens_seen",
    metric: str = "loss",
    series: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Plot training and validation `metric` ("loss" by default) and save a PNG at `path`.

    Args:
        curves: from `log_history_to_curves`.
        x: "tokens_seen" (the book's choice), "step" or "epoch". When no point has a token count,
            tokens_seen falls back to step.
        metric: which series to draw: every series named `*_<metric>` or `<metric>` (e.g.
            "train_loss", "eval_loss", "eval_train_loss"); "accuracy" draws the accuracies.
        series: explicit series names instead of the `metric` selection.
        title: figure title.

    Training series are solid lines, evaluation series dash-dotted with markers (the book's
    figure 5.12). When x is not "epoch" and epochs were logged, a top x axis shows epochs.
    Returns the path. Raises ValueError when there is nothing to plot.
    """
    if x not in _X_LABELS:
        raise ValueError(f"x must be one of {sorted(_X_LABELS)}, got {x!r}")
    if series is None:
        names = [n for n in curves if n == metric or n.endswith("_" + metric)]
        # training first, then evaluation sets
        names.sort(key=lambda n: (n.startswith("eval"), n))
    else:
        missing = [n for n in series if n not in curves]
        if missing:
            raise ValueError(f"no series {missing} in curves (have {sorted(curves)})")
        names = list(series)
    if not names:
        raise ValueError(f"no '{metric}' series to plot (have {sorted(curves)})")

    if x == "tokens_seen" and not any(_points(curves[n], "tokens_seen")[0] for n in names):
        x = "step"

    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    drawn = 0
    for name in names:
        xs, ys = _points(curves[name], x)
        if not xs:
            continue
        if name.startswith("eval"):
            ax.plot(xs, ys, linestyle="-.", marker="o", markersize=3, label=_pretty(name))
        else:
            ax.plot(xs, ys, linestyle="-", label=_pretty(name))
        drawn += 1
    if drawn == 0:
        raise ValueError(f"series {names} have no points with an x value for x={x!r}")
    ax.set_xlabel(_X_LABELS[x])
    ax.set_ylabel(metric.replace("_", " ").capitalize())
    ax.legend(loc="upper right")
    ax.grid(True, alpha=0.3)

    if x != "epoch":
        # Second x axis with epochs, aligned through the points that know both.
        pairs = []
        for name in names:
            s = curves[name]
            for xv, ev in zip(s.get(x, []), s.get("epoch", [])):
                if xv is not None and ev is not None:
                    pairs.append((float(xv), float(ev)))
        pairs = sorted(set(pairs))
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
    fig = _new_figure(size=(1.2 * len(labels) + 2.5, 1.0 * len(labels) + 2.0))
    ax = fig.add_subplot(1, 1, 1)
    display = ConfusionMatrixDisplay.from_predictions(
        y_true, y_pred, labels=list(ids), display_labels=[str(n) for n in labels], cmap="Blues", ax=ax
    )
    if title:
        ax.set_title(title)
    _save(fig, path)
    return display.confusion_matrix


__all__ = ["plot_losses", "plot_confusion_matrix"]
