"""Task metrics as small pure functions: corpus BLEU and chrF, accuracy with bootstrap intervals, a
paired bootstrap for the difference between two systems, and accuracy per group (country, topic).

Every function takes plain lists (one entry per example, in the same order for paired inputs) so a
score can be recomputed from the saved per-example JSONL without the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

DEFAULT_RESAMPLES = 1000


@dataclass
class TranslationScore:
    """A corpus-level score with sacrebleu's signature (which says exactly how it was computed:
    tokenizer, smoothing, casing, version), so two reports are comparable only when signatures match."""

    name: str
    """"BLEU" or "chrF"."""
    score: float
    """0-100."""
    signature: str
    n: int
    """Sentences."""


def _check_pairs(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"expected one reference per hypothesis, got {len(hypotheses)} hypotheses "
                         f"and {len(references)} references")
    if not hypotheses:
        raise ValueError("expected at least one hypothesis")


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> TranslationScore:
    """Corpus BLEU (Papineni et al., 2002) with sacrebleu's defaults (13a tokenizer, exp smoothing).

    Args:
        hypotheses: system outputs, one per sentence.
        references: one reference per sentence.
    Returns:
        :class:`TranslationScore` (0-100) with the sacrebleu signature.
    """
    from sacrebleu.metrics import BLEU

    _check_pairs(hypotheses, references)
    metric = BLEU()
    result = metric.corpus_score(list(hypotheses), [list(references)])
    return TranslationScore("BLEU", float(result.score), str(metric.get_signature()), len(hypotheses))


def corpus_chrf(hypotheses: Sequence[str], references: Sequence[str]) -> TranslationScore:
    """Corpus chrF (Popović, 2015): character 6-gram F-score with beta=2, sacrebleu's defaults.
    Kinder than BLEU to the agglutinative morphology of many Indonesian local languages."""
    from sacrebleu.metrics import CHRF

    _check_pairs(hypotheses, references)
    metric = CHRF()
    result = metric.corpus_score(list(hypotheses), [list(references)])
    return TranslationScore("chrF", float(result.score), str(metric.get_signature()), len(hypotheses))


def accuracy(correct: Sequence[bool]) -> float:
    """Fraction of true entries; 0.0 for an empty list."""
    return sum(bool(c) for c in correct) / len(correct) if correct else 0.0


def bootstrap_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) indices drawn with replacement from ``numpy.random.default_rng(seed)``; shared by
    both bootstraps so a paired comparison resamples the same examples for both systems."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def bootstrap_ci(values: Sequence[float], *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                 confidence: float = 0.95,
                 statistic: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[float, float]:
    """Percentile bootstrap interval (Efron & Tibshirani, 1993) of the mean of ``values``.

    Args:
        values: one number per example (1/0 for correct/wrong gives an accuracy interval).
        resamples: bootstrap replicates.
        seed: the replicates' seed (the same seed gives the same interval).
        confidence: e.g. 0.95.
        statistic: maps a (resamples, n) array to (resamples,); default the row mean.
    Returns:
        (low, high); (nan, nan) for no values.
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return (float("nan"), float("nan"))
    stat = statistic or (lambda a: a.mean(axis=1))
    replicates = stat(x[bootstrap_indices(x.size, resamples, seed)])   # (resamples,)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(replicates, [alpha, 1 - alpha])
    return (float(low), float(high))


@dataclass
class PairedDifference:
    """``mean(b) - mean(a)`` over the same examples, with its bootstrap interval and a two-sided
    bootstrap p-value (twice the smaller share of replicates on either side of zero, capped at 1)."""

    difference: float
    ci: tuple[float, float]
    p_value: float
    n: int


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, resamples: int = DEFAULT_RESAMPLES,
                     seed: int = 0, confidence: float = 0.95) -> PairedDifference:
    """Paired bootstrap (Koehn, 2004) of the difference between two systems on the same examples:
    each replicate resamples example indices once and applies them to both, so the spread reflects
    which examples were drawn, not two independent draws (a much tighter, correct interval when the
    systems agree on most examples).

    Args:
        a, b: per-example scores of systems A and B, aligned (entry i is the same example).
    Returns:
        :class:`PairedDifference` of B minus A.
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired scores must align: got {x.size} and {y.size} examples")
    if x.size == 0:
        return PairedDifference(float("nan"), (float("nan"), float("nan")), float("nan"), 0)
    idx = bootstrap_indices(x.size, resamples, seed)
    diffs = (y - x)[idx].mean(axis=1)     # (resamples,): per-example differences, resampled together
    alpha = (1 - confidence) / 2
    low, high = np.quantile(diffs, [alpha, 1 - alpha])
    p = min(1.0, 2 * min(float((diffs <= 0).mean()), float((diffs >= 0).mean())))
    return PairedDifference(float((y - x).mean()), (float(low), float(high)), p, int(x.size))


def group_accuracy(correct: Sequence[bool], groups: Sequence[str]) -> dict[str, dict]:
    """Accuracy per group (e.g. per BLEnD country or topic).

    Returns:
        ``{group: {"accuracy", "correct", "n"}}`` sorted by group name.
    """
    if len(correct) != len(groups):
        raise ValueError(f"expected one group per example, got {len(groups)} groups for {len(correct)} examples")
    by: dict[str, list[bool]] = {}
    for c, g in zip(correct, groups):
        by.setdefault(str(g), []).append(bool(c))
    return {g: {"accuracy": accuracy(v), "correct": sum(v), "n": len(v)} for g, v in sorted(by.items())}


def mean(values: Sequence[float]) -> float | None:
    """Mean of the non-None values; None when there are none."""
    kept = [float(v) for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None
