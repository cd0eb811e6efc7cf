"""ROUGE-1, ROUGE-2 and ROUGE-L F-measures, offline and without the `rouge_score` package.

Scores are computed as `rouge_score.rouge_scorer.RougeScorer(rouge_types, use_stemmer=False)`
does: text lower-cased, every run of characters other than [a-z0-9] replaced by a space, split on
whitespace; ROUGE-N from clipped n-gram counts, ROUGE-L from the longest common subsequence
(precision = LCS / prediction tokens, recall = LCS / reference tokens, F = 2PR / (P + R), 0 when
either text has no tokens). With several references per prediction the best F-measure counts.
With `use_aggregator=True` (default) each score is the mean over examples (the hub metric reports
the median of bootstrap means instead, which is close to but not exactly the mean).
"""

import re
from collections import Counter

import datasets
import evaluate

_DESCRIPTION = __doc__

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): generated texts.
    references (list of str, or list of list of str): reference text(s) for each prediction.
    rouge_types (list of str): any of "rouge1", "rouge2", "rougeL" (default: all three).
    use_aggregator (bool): return means (default) instead of one list of scores per type.
Returns:
    {"rouge1": float, "rouge2": float, "rougeL": float} (F-measures in [0, 1]).
Example:
    >>> from hf_gpt_scratch.metrics import load_metric
    >>> load_metric("rouge").compute(predictions=["the cat sat"], references=["the cat sat down"])["rougeL"]
    0.8571428571428571
"""

_NON_ALPHANUMERIC = re.compile(r"[^a-z0-9]+")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def tokenize(text):
    """rouge_score's default tokenizer (no stemming)."""
    return _NON_ALPHANUMERIC.sub(" ", text.lower()).split()


def _fmeasure(precision, recall):
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _ngrams(tokens, n):
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def rouge_n(reference_tokens, prediction_tokens, n):
    ref, pred = _ngrams(reference_tokens, n), _ngrams(prediction_tokens, n)
    overlap = sum(min(count, pred[gram]) for gram, count in ref.items())
    precision = overlap / max(sum(pred.values()), 1)
    recall = overlap / max(sum(ref.values()), 1)
    return _fmeasure(precision, recall)


def lcs_length(a, b):
    """Length of the longest common subsequence of two token lists (dynamic programming)."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(reference_tokens, prediction_tokens):
    if not reference_tokens or not prediction_tokens:
        return 0.0
    lcs = lcs_length(reference_tokens, prediction_tokens)
    return _fmeasure(lcs / len(prediction_tokens), lcs / len(reference_tokens))


def score(reference, prediction, rouge_type):
    ref, pred = tokenize(reference), tokenize(prediction)
    if rouge_type == "rougeL":
        return rouge_l(ref, pred)
    return rouge_n(ref, pred, int(rouge_type[len("rouge"):]))


class Rouge(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=(
                "Lin, Chin-Yew. ROUGE: a Package for Automatic Evaluation of Summaries. "
                "Text Summarization Branches Out, 2004."
            ),
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Value("string"),
                        "references": datasets.List(datasets.Value("string")),
                    }
                ),
                datasets.Features(
                    {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
                ),
            ],
            reference_urls=["https://github.com/google-research/google-research/tree/master/rouge"],
        )

    def _compute(self, predictions, references, rouge_types=None, use_aggregator=True, use_stemmer=False):
        if use_stemmer:
            raise NotImplementedError("use_stemmer=True needs the Porter stemmer; this offline metric has none")
        rouge_types = list(rouge_types or ROUGE_TYPES)
        unknown = [t for t in rouge_types if t not in ROUGE_TYPES]
        if unknown:
            raise ValueError(f"unknown rouge types {unknown}; supported: {list(ROUGE_TYPES)}")
        scores = {t: [] for t in rouge_types}
        for prediction, refs in zip(predictions, references):
            refs = [refs] if isinstance(refs, str) else list(refs)
            for t in rouge_types:
                scores[t].append(max((score(r, prediction, t) for r in refs), default=0.0))
        if use_aggregator:
            return {t: (sum(v) / len(v) if v else 0.0) for t, v in scores.items()}
        return scores
