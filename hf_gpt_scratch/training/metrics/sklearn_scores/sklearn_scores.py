"""The hub's accuracy, precision, recall and F1 (scikit-learn), here to load offline; the config name picks
the metric. predictions, references: lists of int; other keywords go to scikit-learn's <name>_score.
Returns {name: float}, or a list of floats (one per class) with average=None."""

import datasets
import evaluate
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

_SCORES = {"accuracy": accuracy_score, "precision": precision_score, "recall": recall_score, "f1": f1_score}


class SklearnScore(evaluate.Metric):
    def _info(self):
        score = _SCORES[self.config_name]  # KeyError for a config name that is no score
        labels = datasets.Value("int64")
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            features=datasets.Features({"predictions": labels, "references": labels}),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics."
                            f"{score.__name__}.html"],
        )

    def _compute(self, predictions, references, **kwargs):
        score = _SCORES[self.config_name](references, predictions, **kwargs)
        return {self.config_name: score.tolist() if getattr(score, "ndim", 0) else float(score)}
