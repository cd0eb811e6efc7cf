"""Figures of the recipes, saved as PNG with matplotlib's Agg canvas (no display needed, and the
global pyplot backend is left alone).

- `plot_losses(curves, path)`: training and validation loss against tokens seen, with epochs on
  a second x axis: the book's figure 5.12 style (chapter 5) and its accuracy twin in chapter 6
  (`plot_losses(curves, path, metric="accuracy")`).
- `plot_confusion_matrix(y_true, y_pred, labels, path)`: counts per true/predicted class.

`curves` is what `hf_gpt_scratch.reporting.log_history_to_curves` returns:
`{name: {"step": [...], "epoch": [...], "tokens_seen": [...], "value": [...]}}`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

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
    y_true: Sequence[Any],
    y_pred: Sequence[Any],
    labels: Sequence[str],
    path: str | os.PathLike,
    title: str | None = None,
    normalize: bool = False,
) -> np.ndarray:
    """Confusion matrix (rows: true class, columns: predicted) saved as a PNG at `path`.

    `y_true` and `y_pred` hold either class ids (0..len(labels)-1) or the label strings
    themselves; `labels` names the classes in order. With normalize=True each row is divided by
    its total (the share of each true class). Returns the count matrix.
    """
    from sklearn.metrics import confusion_matrix

    labels = [str(label) for label in labels]
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} items but y_pred {len(y_pred)}")
    values = list(y_true) + list(y_pred)
    if values and all(isinstance(v, str) for v in values):
        unknown = sorted(set(values) - set(labels))
        if unknown:
            raise ValueError(f"labels {unknown} are not in {labels}")
        order: list[Any] = labels
    else:
        ints = [int(v) for v in values]
        bad = sorted({v for v in ints if not 0 <= v < len(labels)})
        if bad:
            raise ValueError(f"class ids {bad} are outside 0..{len(labels) - 1} (labels {labels})")
        y_true, y_pred = [int(v) for v in y_true], [int(v) for v in y_pred]
        order = list(range(len(labels)))
    counts = confusion_matrix(y_true, y_pred, labels=order)
    shown = counts.astype(float)
    if normalize:
        totals = shown.sum(axis=1, keepdims=True)
        shown = np.divide(shown, totals, out=np.zeros_like(shown), where=totals > 0)

    n = len(labels)
    fig = _new_figure(size=(1.2 * n + 2.5, 1.0 * n + 2.0))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(shown, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(labels)
    ax.set_yticklabels(labels)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    threshold = shown.max() / 2 if shown.size and shown.max() > 0 else 0.5
    for i in range(n):
        for j in range(n):
            text = f"{shown[i, j]:.2f}\n({counts[i, j]})" if normalize else f"{counts[i, j]}"
            ax.text(j, i, text, ha="center", va="center", color="white" if shown[i, j] > threshold else "black")
    if title:
        ax.set_title(title)
    _save(fig, path)
    return counts


__all__ = ["plot_losses", "plot_confusion_matrix"]
