"""Metrics against values computed by hand (the arithmetic is in each test's comments)."""

import math

import pytest

from acculturate.evaluate.metrics import (accuracy, bootstrap_ci, corpus_bleu, corpus_chrf, group_accuracy, mean,
                                          paired_bootstrap)


def test_bleu_identical_is_100_and_keeps_signature():
    s = corpus_bleu(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert s.score == pytest.approx(100.0)
    assert s.signature.startswith("nrefs:1|") and "tok:13a" in s.signature and "smooth:exp" in s.signature


def test_bleu_by_hand():
    # "a b c d" vs "a b c e": n-gram precisions 3/4, 2/3, 1/2, and 0/1 -> exp smoothing 1/(2*1) = 1/2;
    # equal lengths so BP = 1; BLEU = (3/4 * 2/3 * 1/2 * 1/2) ** (1/4) = 0.125 ** 0.25.
    s = corpus_bleu(["a b c d"], ["a b c e"])
    assert s.score == pytest.approx(100 * 0.125 ** 0.25, abs=1e-6)


def test_chrf_by_hand():
    # "ab" vs "ac": character unigrams match 1 of 2 both ways -> P = R = 1/2 -> F = 1/2; bigrams "ab" vs
    # "ac" -> F = 0; orders 3..6 have no n-grams and are left out; chrF = (1/2 + 0) / 2 = 25.
    s = corpus_chrf(["ab"], ["ac"])
    assert s.score == pytest.approx(25.0, abs=1e-6)
    assert corpus_chrf(["same text"], ["same text"]).score == pytest.approx(100.0)
    assert "chrF2" in s.signature or "nc:6" in s.signature


def test_translation_inputs_checked():
    with pytest.raises(ValueError, match="one reference per hypothesis"):
        corpus_bleu(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="at least one"):
        corpus_chrf([], [])


def test_accuracy_and_groups():
    assert accuracy([True, False, True, True]) == 0.75
    assert accuracy([]) == 0.0
    g = group_accuracy([True, False, True], ["UK", "UK", "US"])
    assert g == {"UK": {"accuracy": 0.5, "correct": 1, "n": 2}, "US": {"accuracy": 1.0, "correct": 1, "n": 1}}
    with pytest.raises(ValueError, match="one group per example"):
        group_accuracy([True], ["a", "b"])
    assert mean([1, None, 3]) == 2.0 and mean([None]) is None


def test_bootstrap_ci_known_distributions():
    # One value: every resample is that value.
    assert bootstrap_ci([0.4]) == (0.4, 0.4)
    assert bootstrap_ci([1, 1, 1]) == (1.0, 1.0)
    # Values [0, 1]: a resample's mean is 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4. The 2.5% and
    # 97.5% quantiles are therefore 0 and 1; the 30% and 70% quantiles (a 40% interval) are both 1/2.
    assert bootstrap_ci([0, 1], resamples=4000) == (0.0, 1.0)
    assert bootstrap_ci([0, 1], resamples=4000, confidence=0.4) == (0.5, 0.5)
    assert all(math.isnan(v) for v in bootstrap_ci([]))


def test_bootstrap_is_seeded():
    values = [0, 1, 1, 0, 1, 0, 0, 1, 1, 1]
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    lo, hi = bootstrap_ci(values)
    assert lo < 0.6 < hi


def test_paired_bootstrap_by_hand():
    a = [0, 1, 0, 1, 1, 0]
    same = paired_bootstrap(a, a)
    assert same.difference == 0 and same.ci == (0.0, 0.0) and same.p_value == 1.0 and same.n == 6
    # B is A + 1 on every example: every replicate's difference is exactly 1.
    up = paired_bootstrap(a, [x + 1 for x in a])
    assert up.difference == 1 and up.ci == (1.0, 1.0) and up.p_value == 0.0


def test_paired_interval_is_tighter_than_unpaired():
    # 40 examples; B fixes 4 of A's 20 errors and breaks none. Paired, the difference (+0.1) is
    # clearly positive; two independent intervals of the accuracies still overlap.
    a = [1, 0] * 20
    b = list(a)
    for i in (1, 3, 5, 7):
        b[i] = 1
    d = paired_bootstrap(a, b)
    assert d.difference == pytest.approx(0.1)
    assert d.ci[0] > 0 and d.p_value < 0.05
    assert bootstrap_ci(b)[0] < bootstrap_ci(a)[1]
    with pytest.raises(ValueError, match="align"):
        paired_bootstrap([1, 0], [1])


def test_translation_text_drops_preface_and_quotes():
    from acculturate.evaluate.tasks import translation_text

    assert translation_text("The translation of this Javanese text into English is:\n\n\"The food is good.\"\n\nNote") \
        == "The food is good."
    assert translation_text("  Makanane enak.\nMore text") == "Makanane enak."
    assert translation_text("Only a preface:") == "Only a preface:"
    assert translation_text("") == ""
