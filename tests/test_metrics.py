"""hf_gpt_scratch.training.metrics: offline evaluate modules, checked against scikit-learn and ROUGE by hand."""

import socket

import pytest
from sklearn import metrics as skm

from hf_gpt_scratch.training.metrics import AVAILABLE_METRICS, load_metric

PREDICTIONS = [0, 1, 1, 0, 1, 1, 0, 2, 2, 1]
REFERENCES = [0, 1, 0, 0, 1, 0, 1, 2, 1, 1]
BINARY_PRED = [min(p, 1) for p in PREDICTIONS]
BINARY_REF = [min(r, 1) for r in REFERENCES]


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Offline env, cwd = tmp_path with shadowing folders, and no socket may connect."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    for name in AVAILABLE_METRICS:  # a folder named like the metric would shadow a hub metric
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}.py").write_text("raise RuntimeError('shadow module loaded')\n")

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return tmp_path


def test_accuracy_matches_sklearn(offline):
    accuracy = load_metric("accuracy")
    assert accuracy.compute(predictions=PREDICTIONS, references=REFERENCES) == {
        "accuracy": pytest.approx(skm.accuracy_score(REFERENCES, PREDICTIONS))
    }
    assert accuracy.compute(predictions=PREDICTIONS, references=REFERENCES, normalize=False)["accuracy"] == 6


@pytest.mark.parametrize(
    "name, fn", [("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)]
)
def test_precision_recall_f1_match_sklearn(offline, name, fn):
    metric = load_metric(name)
    binary = metric.compute(predictions=BINARY_PRED, references=BINARY_REF)[name]
    assert isinstance(binary, float) and binary == pytest.approx(fn(BINARY_REF, BINARY_PRED))
    assert metric.compute(predictions=BINARY_PRED, references=BINARY_REF, pos_label=0)[name] == pytest.approx(
        fn(BINARY_REF, BINARY_PRED, pos_label=0)
    )
    for average in ("macro", "micro", "weighted"):
        value = metric.compute(predictions=PREDICTIONS, references=REFERENCES, average=average)[name]
        assert value == pytest.approx(fn(REFERENCES, PREDICTIONS, average=average))
    per_class = metric.compute(predictions=PREDICTIONS, references=REFERENCES, average=None)[name]
    assert per_class == pytest.approx(list(fn(REFERENCES, PREDICTIONS, average=None)))


def test_rouge_by_hand(offline):
    rouge = load_metric("rouge")
    # tokens: ref [the cat sat on the mat] (6), pred [the cat on a mat] (5)
    # LCS = the cat on mat = 4 -> P 4/5, R 4/6, F = 8/11; unigrams overlap 4 -> 8/11;
    # bigrams: ref 5, pred 4, overlap (the cat) 1 -> P 1/4, R 1/5, F = 2/9
    scores = rouge.compute(predictions=["the cat on a mat"], references=["The cat sat on the mat."])
    assert scores == pytest.approx({"rouge1": 8 / 11, "rouge2": 2 / 9, "rougeL": 8 / 11})
    both = rouge.compute(
        predictions=["the cat on a mat", "nothing shared", ""],
        references=["The cat sat on the mat.", "completely different", "empty prediction"],
        rouge_types=["rougeL"],
        use_aggregator=False,
    )
    assert both == {"rougeL": pytest.approx([8 / 11, 0.0, 0.0])}
    multi = rouge.compute(predictions=["a b c"], references=[["x y z", "a b c d"]], rouge_types=["rougeL"])
    assert multi["rougeL"] == pytest.approx(2 * 1 * 0.75 / 1.75)  # best reference counts
    # tokens: [the cats running] vs [the cat runs]: 1 of 3 shared; stemmed (words > 3 chars): all 3
    args = dict(predictions=["The cats running"], references=["the cat runs"], rouge_types=["rouge1"])
    assert rouge.compute(**args)["rouge1"] == pytest.approx(1 / 3)
    assert rouge.compute(**args, use_stemmer=True)["rouge1"] == pytest.approx(1.0)


def test_load_metric_errors():
    with pytest.raises(ValueError, match="unknown metric 'bleu'; available: accuracy"):
        load_metric("bleu")
