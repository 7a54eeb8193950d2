"""ROUGE-L F-measure as a local `evaluate` module, computed by Google's rouge_score package.

    import evaluate
    rouge_l = evaluate.load("metrics/rouge_l")    # a path: no Hub access needed
    rouge_l.compute(predictions=["the cat sat"], references=["the cat sat down"])   # {"rougeL": 0.857...}
"""

import datasets
import evaluate
from rouge_score import rouge_scorer

_CITATION = "Lin, C.-Y. (2004). ROUGE: A Package for Automatic Evaluation of Summaries. ACL workshop."


class RougeL(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Mean ROUGE-L F-measure (longest common subsequence of words, Porter stemming), 0-1.",
            citation=_CITATION, inputs_description="predictions: list of str; references: list of str",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}))

    def _compute(self, predictions, references):
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
        scores = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]
        return {"rougeL": sum(scores) / len(scores) if scores else 0.0}
