"""Offline `evaluate` metrics: accuracy, precision, recall, f1 (scikit-learn) and rouge (rouge-score).

`evaluate.load("accuracy")` fetches the metric script from the hub, which fails offline (and a folder
named `accuracy` in the working directory silently shadows it). These modules ship with the package
and load by absolute path: `load_metric("f1").compute(predictions=[0, 1], references=[1, 1])`.
"""

from __future__ import annotations

from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent
AVAILABLE_METRICS = ("accuracy", "precision", "recall", "f1", "rouge")

__all__ = ["AVAILABLE_METRICS", "METRICS_DIR", "load_metric", "metric_path"]


def metric_path(name: str) -> Path:
    """Absolute path of the folder of metric `name` (holding `<name>/<name>.py`); ValueError if unknown."""
    if name not in AVAILABLE_METRICS:
        raise ValueError(f"unknown metric {name!r}; available: {', '.join(AVAILABLE_METRICS)}")
    return METRICS_DIR / name


def load_metric(name: str, **kwargs):
    """`evaluate.load` of the packaged metric `name` by absolute path (no hub access); keyword
    arguments go to `evaluate.load` (e.g. `experiment_id`)."""
    import evaluate

    return evaluate.load(str(metric_path(name)), **kwargs)
