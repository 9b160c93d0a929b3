"""Evaluation metrics with the recipe's exact semantics (docs/RECIPE.md §1.11), plus clearly named standard variants.

- `anls`: the recipe's DocVQA ANLS. Case-sensitive; the prediction is only `.strip().strip('.')`-ed, gold answers
  are used as given; normalised Levenshtein distance = distance / length of the longer string; a score counts only
  when that distance is strictly below the threshold (0.5); max over the gold answers; an empty prediction scores 0.
- `anls_standard`: the usual DocVQA evaluator's variant (case-insensitive, whitespace-normalised both sides). Not the
  documented protocol: reported as an extra column only.
- `exact_match` / `accuracy`: classification tasks: both sides `.strip().strip('.').lower()`, then equality.
- `auroc`: area under the ROC curve from scores (Hateful Memes, where the model gives scores), ties counted half.
"""

from __future__ import annotations

from collections.abc import Sequence


def normalized_levenshtein(a: str, b: str) -> float:
    import Levenshtein  # imported on use: only ANLS needs it (a missing package makes the cell unsupported)

    longest = max(len(a), len(b))
    return 0.0 if longest == 0 else Levenshtein.distance(a, b) / longest


def _anls_core(prediction: str, answers: Sequence[str], threshold: float) -> float:
    if not prediction:
        return 0.0
    best = 0.0
    for answer in answers:
        distance = normalized_levenshtein(prediction, answer)
        best = max(best, 1.0 - distance if distance < threshold else 0.0)
    return best


def anls(prediction: str, answers: Sequence[str] | str, threshold: float = 0.5) -> float:
    """The recipe's ANLS for one question (case-sensitive)."""
    answers = [answers] if isinstance(answers, str) else list(answers)
    return _anls_core(prediction.strip().strip("."), answers, threshold)


def _standard_norm(text: str) -> str:
    return " ".join(text.strip().lower().split())


def anls_standard(prediction: str, answers: Sequence[str] | str, threshold: float = 0.5) -> float:
    """The standard DocVQA evaluator's ANLS (case-insensitive, whitespace-normalised); not the recipe's protocol."""
    answers = [answers] if isinstance(answers, str) else list(answers)
    return _anls_core(_standard_norm(prediction), [_standard_norm(a) for a in answers], threshold)


def _cls_norm(text: str) -> str:
    return text.strip().strip(".").lower()


def exact_match(prediction: str, answer: str) -> bool:
    """The recipe's classification match: strip, strip dots, lower-case, compare."""
    return _cls_norm(prediction) == _cls_norm(answer)


def mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("cannot average an empty list of scores")
    return sum(values) / len(values)


def accuracy(predictions: Sequence[str], answers: Sequence[str]) -> float:
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} answers")
    return mean([float(exact_match(p, a)) for p, a in zip(predictions, answers, strict=True)])


def auroc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """P(score of a random positive > score of a random negative), ties counting one half."""
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores for {len(labels)} labels")
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not pos or not neg:
        raise ValueError("AUROC needs at least one positive and one negative example")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))
