"""The shared body of the offline `precision`, `recall` and `f1` metrics: one scikit-learn score
each, with the arguments of the hub's metrics of the same names."""

import datasets
import evaluate

KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): ground-truth labels.
    labels (list of int): the labels to include when `average != "binary"`.
    pos_label (int): the positive class for `average="binary"` (default 1).
    average (str or None): "binary" (default), "micro", "macro", "weighted", "samples", or None
        for one score per class.
    sample_weight (list of float): sample weights.
    zero_division ("warn", 0, 1 or nan): the value when the score is undefined.
Returns:
    {"<name>": float}, or a list of floats (one per class) when `average=None`.
"""


def sklearn_score_metric(name: str, score_fn, description: str) -> type:
    """An `evaluate.Metric` class named `name` that returns {name: score_fn(references, predictions, ...)}."""

    def _info(self):
        return evaluate.MetricInfo(
            description=description,
            citation="",
            inputs_description=KWARGS_DESCRIPTION.replace("<name>", name),
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
            reference_urls=[f"https://scikit-learn.org/stable/modules/generated/sklearn.metrics.{score_fn.__name__}.html"],
        )

    def _compute(self, predictions, references, labels=None, pos_label=1, average="binary", sample_weight=None,
                 zero_division="warn"):
        score = score_fn(references, predictions, labels=labels, pos_label=pos_label, average=average,
                         sample_weight=sample_weight, zero_division=zero_division)
        if getattr(score, "ndim", 0):
            return {name: [float(s) for s in score]}
        return {name: float(score)}

    return type(name.capitalize(), (evaluate.Metric,), {"_info": _info, "_compute": _compute})
