"""F1 (offline copy of the hub's `f1`), computed with scikit-learn's `f1_score`."""

from sklearn.metrics import f1_score

from hf_gpt_scratch.metrics.prf import sklearn_score_metric

F1 = sklearn_score_metric("f1", f1_score, "F1 = 2 * precision * recall / (precision + recall); binary by default (positive class `pos_label=1`).")
