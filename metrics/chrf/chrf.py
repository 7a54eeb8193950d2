"""chrF (character n-gram F-score) as a local `evaluate` module, computed by sacrebleu.

    import evaluate
    chrf = evaluate.load("metrics/chrf")          # a path: no Hub access needed
    chrf.compute(predictions=["the cat"], references=["the cat"])   # {"score": 100.0}
"""

import datasets
import evaluate
from sacrebleu.metrics import CHRF

_CITATION = "Popovic, M. (2015). chrF: character n-gram F-score for automatic MT evaluation. WMT."


class Chrf(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Corpus-level chrF (sacrebleu defaults: character 6-grams, beta 2), 0-100.",
            citation=_CITATION, inputs_description="predictions: list of str; references: list of str",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}))

    def _compute(self, predictions, references):
        return {"score": CHRF().corpus_score(predictions, [references]).score}
