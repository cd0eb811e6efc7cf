"""The hub's `precision` metric (scikit-learn `precision_score`), offline."""

from sklearn.metrics import precision_score

from hf_gpt_scratch.training.metrics.prf import sklearn_score_metric

Precision = sklearn_score_metric("precision", precision_score)
