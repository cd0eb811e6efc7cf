"""The hub's `f1` metric (scikit-learn `f1_score`), offline."""

from sklearn.metrics import f1_score

from hf_gpt_scratch.training.metrics.prf import sklearn_score_metric

F1 = sklearn_score_metric("f1", f1_score)
