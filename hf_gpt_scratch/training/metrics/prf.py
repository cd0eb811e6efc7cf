"""The one body of the offline `precision`, `recall` and `f1` metrics: the scikit-learn score with
the arguments of the hub's metrics of the same names (plus `zero_division`)."""

import datasets
import evaluate

_KWARGS_DESCRIPTION = """
Args:
    predictions, references (list of int): predicted and true labels.
    labels, pos_label (default 1), average ("binary" (default), "micro", "macro", "weighted" or None for
    one score per class), sample_weight, zero_division: as in scikit-learn's {fn}.
Returns:
    {{"{name}": float}}, or a list of floats (one per class) when average=None.
"""


def sklearn_score_metric(name: str, score_fn) -> type:
    """An `evaluate.Metric` class that returns {name: score_fn(references, predictions, ...)}."""

    def _info(self):
        return evaluate.MetricInfo(
            description=f"{name} (scikit-learn {score_fn.__name__}), as the hub's `{name}` metric; offline.",
            citation="",
            inputs_description=_KWARGS_DESCRIPTION.format(fn=score_fn.__name__, name=name),
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
            reference_urls=[f"https://scikit-learn.org/stable/modules/generated/sklearn.metrics.{score_fn.__name__}.html"],
        )

    def _compute(self, predictions, references, labels=None, pos_label=1, average="binary", sample_weight=None,
                 zero_division="warn"):
        score = score_fn(references, predictions, labels=labels, pos_label=pos_label, average=average,
                         sample_weight=sample_weight, zero_division=zero_division)
        return {name: score.tolist() if getattr(score, "ndim", 0) else float(score)}

    return type(name.capitalize(), (evaluate.Metric,), {"_info": _info, "_compute": _compute})
