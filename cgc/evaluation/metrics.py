"""Per-task metrics for generated answers, chosen per task in the recipe config (`eval.metrics`).

| name            | for                          | score                                                       |
|-----------------|------------------------------|-------------------------------------------------------------|
| exact_match     | short answers                | fraction of answers equal to the target (whitespace-normalised) |
| choice_accuracy | classification by generation | the answer is mapped to one of the task's choices, then compared |
| set_f1          | extraction (lists of items)  | micro-F1 over the items of all examples                     |
| rouge_l         | free text                    | mean ROUGE-L F1 (`rouge-score`), CJK split into characters  |

Every metric takes (predictions, references, **options) and returns a float in [0, 1].
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from rouge_score import rouge_scorer

DEFAULT_SEPARATORS = ",;\n，；、"


def normalize(text: str) -> str:
    """NFKC (full-width forms -> ASCII), trimmed, inner whitespace runs -> one space. Case is kept: it can be
    the answer (an `uppercase` task)."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


def exact_match(predictions: list[str], references: list[str]) -> float:
    _check(predictions, references)
    return _mean([normalize(p) == normalize(r) for p, r in zip(predictions, references, strict=True)])


def choice_accuracy(predictions: list[str], references: list[str], choices: list[str] | None = None) -> float:
    """Accuracy after mapping each answer to a choice: an exact (case-insensitive) match first, else the choice
    that occurs earliest in the answer (the longest one on a tie: "not sure" before "sure"); no choice = wrong.
    Without `choices`, the task's distinct references are the choices."""
    _check(predictions, references)
    options = list({normalize(c) for c in (choices if choices is not None else references)})  # pick_choice: any order
    pairs = zip(predictions, references, strict=True)
    return _mean([pick_choice(p, options) == normalize(r).casefold() for p, r in pairs])


def pick_choice(prediction: str, choices: list[str]) -> str | None:
    """The casefolded choice `prediction` names, or None."""
    answer = normalize(prediction).casefold()
    folded = [c.casefold() for c in choices]
    if answer in folded:
        return answer
    found = [(answer.find(c), -len(c), c) for c in folded if c and c in answer]
    return min(found)[2] if found else None


def set_f1(predictions: list[str], references: list[str], separators: str = DEFAULT_SEPARATORS) -> float:
    """Micro-F1 over items: each answer is split on any of `separators` into a set of normalised items; true
    positives, predicted and gold items are summed over all examples. Nothing predicted and nothing gold = 1."""
    _check(predictions, references)
    true_pos = n_pred = n_gold = 0
    for p, r in zip(predictions, references, strict=True):
        pred, gold = items(p, separators), items(r, separators)
        true_pos += len(pred & gold)
        n_pred += len(pred)
        n_gold += len(gold)
    if n_pred == 0 and n_gold == 0:
        return 1.0
    return 2 * true_pos / (n_pred + n_gold)  # = 2PR / (P + R) with P = tp/n_pred, R = tp/n_gold


def items(text: str, separators: str = DEFAULT_SEPARATORS) -> set[str]:
    parts = re.split("[" + re.escape(separators) + "]", unicodedata.normalize("NFKC", text))
    return {normalize(p).casefold() for p in parts if normalize(p)}


class UnicodeWordTokenizer:
    """Tokenizer for `rouge_score`: its default one keeps only [a-z0-9] and turns Chinese text into nothing.
    Lowercased words of any script; CJK ideographs, kana and hangul become one token per character."""

    _token = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]|[^\W_]+")

    def tokenize(self, text: str) -> list[str]:
        return self._token.findall(unicodedata.normalize("NFKC", text).lower())


_TOKENIZER = UnicodeWordTokenizer()
_ROUGE = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_TOKENIZER)


def rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F1 (longest common subsequence of tokens); an empty answer scores 0 (1 if the target is
    empty too)."""
    _check(predictions, references)
    return _mean([_rouge_pair(p, r) for p, r in zip(predictions, references, strict=True)])


def _rouge_pair(prediction: str, reference: str) -> float:
    if not _TOKENIZER.tokenize(prediction) and not _TOKENIZER.tokenize(reference):
        return 1.0
    return _ROUGE.score(reference, prediction)["rougeL"].fmeasure  # score(target, prediction)


METRICS = {"exact_match": exact_match, "choice_accuracy": choice_accuracy, "set_f1": set_f1, "rouge_l": rouge_l}
OPTIONS = {"exact_match": set(), "choice_accuracy": {"choices"}, "set_f1": {"separators"}, "rouge_l": set()}


@dataclass(frozen=True)
class MetricSpec:
    """A metric name and its options, e.g. MetricSpec("choice_accuracy", {"choices": ["yes", "no"]})."""

    name: str = "exact_match"
    options: dict = field(default_factory=dict)

    def __call__(self, predictions: list[str], references: list[str]) -> float:
        return METRICS[self.name](predictions, references, **self.options)


def example_scores(spec: MetricSpec, predictions: list[str], references: list[str]) -> list[float]:
    """Each example's own score under `spec` (for intervals over examples). The task score is their mean for
    every metric but set_f1, whose task score is a micro-F1 over all items; here each example gets its own F1."""
    options = dict(spec.options)
    if spec.name == "choice_accuracy" and options.get("choices") is None:
        options["choices"] = references  # the task's distinct references, as the task score takes them
    return [METRICS[spec.name]([p], [r], **options) for p, r in zip(predictions, references, strict=True)]


def parse_metric(value, where: str) -> MetricSpec:
    """A YAML value -> MetricSpec: `rouge_l`, or `{name: choice_accuracy, choices: [yes, no]}`.
    Raises ValueError naming `where` (e.g. "eval.metrics.nli") and what is known."""
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise ValueError(f"{where} must be a metric name or a mapping with a `name`, got {value!r}")
    name, options = value["name"], {k: v for k, v in value.items() if k != "name"}
    if name not in METRICS:
        raise ValueError(f"{where}: unknown metric {name!r}; known metrics: {sorted(METRICS)}")
    unknown = set(options) - OPTIONS[name]
    if unknown:
        allowed = sorted(OPTIONS[name]) or "none"
        raise ValueError(f"{where}: {name} has no option(s) {sorted(unknown)}; its options: {allowed}")
    choices = options.get("choices", ["ok"])
    if not (isinstance(choices, list) and choices and all(isinstance(c, str) for c in choices)):
        raise ValueError(f"{where}.choices must be a non-empty list of strings, got {options['choices']!r}")
    if "separators" in options and not (isinstance(options["separators"], str) and options["separators"]):
        raise ValueError(f"{where}.separators must be a non-empty string of separator characters")
    return MetricSpec(name, options)


def task_metrics(tasks: list[str], default, per_task: dict) -> dict[str, MetricSpec]:
    """Config values (`eval.default_metric`, `eval.metrics`) -> one MetricSpec per task. Raises ValueError."""
    unknown = sorted(set(per_task) - set(tasks))
    if unknown:
        raise ValueError(f"eval.metrics names tasks that are in no cluster: {unknown}; tasks: {tasks}")
    base = parse_metric(default, "eval.default_metric")
    return {t: parse_metric(per_task[t], f"eval.metrics.{t}") if t in per_task else base for t in tasks}


def _check(predictions: list[str], references: list[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")


def _mean(values: list) -> float:
    return sum(values) / len(values) if values else 0.0
