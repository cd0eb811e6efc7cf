"""Offline `evaluate` metrics: accuracy, precision, recall, f1 (scikit-learn) and rouge (rouge-score),
loaded by absolute path, since `evaluate.load("f1")` needs the hub (and a folder `f1` in the working
directory shadows it): `load_metric("f1").compute(predictions=[0, 1], references=[1, 1])`."""

from __future__ import annotations

from pathlib import Path

_MODULES = {"accuracy": "sklearn_scores", "precision": "sklearn_scores", "recall": "sklearn_scores",
            "f1": "sklearn_scores", "rouge": "rouge"}
AVAILABLE_METRICS = tuple(_MODULES)


def load_metric(name: str, **kwargs):
    """`evaluate.load` of the packaged metric `name` (config `name` of the module `<folder>/<folder>.py`)
    by absolute path; keyword arguments go to `evaluate.load`. ValueError if unknown."""
    import evaluate

    if name not in _MODULES:
        raise ValueError(f"unknown metric {name!r}; available: {', '.join(AVAILABLE_METRICS)}")
    return evaluate.load(str(Path(__file__).resolve().parent / _MODULES[name]), config_name=name, **kwargs)
