"""The hub's `rouge` metric (Google's `rouge-score` F-measures), here to load offline; aggregates are means
(the hub's: a bootstrap median). predictions: list of str; references: list of str or of lists (best counts);
rouge_types (default rouge1, rouge2, rougeL); use_aggregator (True; False: per example); use_stemmer."""

import datasets
import evaluate
import numpy as np
from rouge_score import rouge_scorer


class Rouge(evaluate.Metric):
    def _info(self):
        text = datasets.Value("string")
        return evaluate.MetricInfo(
            description=__doc__,
            citation="Lin, Chin-Yew. ROUGE: a Package for Automatic Evaluation of Summaries. 2004.",
            features=[datasets.Features({"predictions": text, "references": datasets.List(text)}),
                      datasets.Features({"predictions": text, "references": text})],
            reference_urls=["https://github.com/google-research/google-research/tree/master/rouge"],
        )

    def _compute(self, predictions, references, rouge_types=None, use_aggregator=True, use_stemmer=False):
        rouge_types = list(rouge_types or ("rouge1", "rouge2", "rougeL"))
        scorer = rouge_scorer.RougeScorer(rouge_types, use_stemmer=use_stemmer)
        scores = [scorer.score_multi([refs] if isinstance(refs, str) else refs, pred)
                  for refs, pred in zip(references, predictions)]
        per_type = {t: [s[t].fmeasure for s in scores] for t in rouge_types}
        if use_aggregator:
            return {t: float(np.mean(v)) if v else 0.0 for t, v in per_type.items()}
        return per_type
