"""Precision (offline copy of the hub's `precision`), computed with scikit-learn's `precision_score`."""

from sklearn.metrics import precision_score

from hf_gpt_scratch.metrics.prf import sklearn_score_metric

Precision = sklearn_score_metric("precision", precision_score, "Precision = tp / (tp + fp); binary by default (positive class `pos_label=1`).")
