"""Recall (offline copy of the hub's `recall`), computed with scikit-learn's `recall_score`."""

from sklearn.metrics import recall_score

from hf_gpt_scratch.metrics.prf import sklearn_score_metric

Recall = sklearn_score_metric("recall", recall_score, "Recall = tp / (tp + fn); binary by default (positive class `pos_label=1`).")
