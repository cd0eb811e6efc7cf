"""F1 (offline copy of the hub's `f1`), computed with scikit-learn's `f1_score`."""

import datasets
import evaluate
from sklearn.metrics import f1_score

_DESCRIPTION = """F1 = 2 * precision * recall / (precision + recall); binary by default (positive class `pos_label=1`)."""

_KWARGS_DESCRIPTION = """
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
    {"f1": float}, or a list of floats (one per class) when `average=None`.
"""


class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.f1_score.html"],
        )

    def _compute(
        self,
        predictions,
        references,
        labels=None,
        pos_label=1,
        average="binary",
        sample_weight=None,
        zero_division="warn",
    ):
        score = f1_score(
            references,
            predictions,
            labels=labels,
            pos_label=pos_label,
            average=average,
            sample_weight=sample_weight,
            zero_division=zero_division,
        )
        if getattr(score, "ndim", 0):
            return {"f1": [float(s) for s in score]}
        return {"f1": float(score)}
