"""The hub's `recall` metric (scikit-learn `recall_score`), offline."""

from sklearn.metrics import recall_score

from hf_gpt_scratch.training.metrics.prf import sklearn_score_metric

Recall = sklearn_score_metric("recall", recall_score)
