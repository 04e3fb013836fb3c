"""Sampling maths on fixed logits, against the definitions and against HF's logits processors."""


import pytest
import torch

from acculturate.decode.sampling import (
    cumsum_rows,
    apply_repetition_penalty,
    apply_temperature,
    filter_top_k,
    filter_top_p,
    filters_tokens,
    sample,
    sample_inverse_cdf,
    sample_sorted,
)

# A known distribution: token 3 lies outside the 0.9-nucleus {0, 1, 2} (0.5 + 0.3 + 0.15 = 0.95).
PROBS = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
LOGITS = PROBS.log()


def draws(logits, n, seed=0, **kwargs):
    """n independent draws from one row of logits, as a (n,) tensor."""
    g = torch.Generator().manual_seed(seed)
    return sample(logits.expand(n, -1), generator=g, **kwargs)


def test_top_p_keeps_smallest_nucleus():
    kept = torch.isfinite(filter_top_p(LOGITS, 0.9))
    assert kept.tolist() == [[True, True, True, False]]
    assert torch.isfinite(filter_top_p(LOGITS, 0.75)).tolist() == [[True, True, False, False]]
    # Values inside the nucleus are untouched.
    assert torch.equal(filter_top_p(LOGITS, 0.9)[0, :3], LOGITS[0, :3])


def test_top_p_always_keeps_the_top_token():
    assert torch.isfinite(filter_top_p(LOGITS, 0.01)).tolist() == [[True, False, False, False]]
    shuffled = LOGITS[:, [2, 0, 3, 1]]  # the top token is not in column 0
    assert torch.isfinite(filter_top_p(shuffled, 1e-6)).tolist() == [[False, True, False, False]]


def test_top_p_never_draws_outside_the_nucleus():
    tokens = draws(LOGITS, 5000, top_p=0.9)
    assert (tokens != 3).all()
    assert set(tokens.tolist()) == {0, 1, 2}


def test_top_p_matches_hf_warper():
    from transformers.generation.logits_process import TopPLogitsWarper

    logits = torch.randn(6, 100, generator=torch.Generator().manual_seed(1)) * 3
    for p in (0.3, 0.8, 0.95):
        ours = torch.isfinite(filter_top_p(logits, p))
        ref = torch.isfinite(TopPLogitsWarper(p)(None, logits.clone()))
        assert torch.equal(ours, ref), p


def test_top_k_filter_and_hf_reference():
    from transformers.generation.logits_process import TopKLogitsWarper

    assert torch.isfinite(filter_top_k(LOGITS, 2)).tolist() == [[True, True, False, False]]
    assert torch.equal(filter_top_k(LOGITS, 0), LOGITS)
    logits = torch.randn(5, 50, generator=torch.Generator().manual_seed(2))
    for k in (1, 7, 50):
        assert torch.equal(torch.isfinite(filter_top_k(logits, k)),
                           torch.isfinite(TopKLogitsWarper(k)(None, logits.clone())))


def test_top_k_1_is_greedy():
    logits = torch.randn(8, 300, generator=torch.Generator().manual_seed(3))
    for seed in range(5):
        got = sample(logits, temperature=1.5, top_k=1, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(got, logits.argmax(-1))


def test_low_temperature_is_greedy():
    logits = torch.randn(8, 300, generator=torch.Generator().manual_seed(4))
    greedy = logits.argmax(-1)
    assert torch.equal(sample(logits, temperature=0.0), greedy)
    assert torch.equal(sample(logits, temperature=1e-6), greedy)
    # Through the sampling path: at T = 1e-3 any gap of 0.05 leaves the runner-up e^-50 of the mass.
    top2 = logits.topk(2, dim=-1).values
    assert ((top2[:, 0] - top2[:, 1]) > 0.05).all()
    got = sample(logits, temperature=1e-3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(got, greedy)


def test_frequencies_match_softmax_over_temperature():
    logits = torch.tensor([[1.0, 0.5, 0.0, -0.5, -1.0, 2.0]])
    n = 40_000
    for temperature in (0.7, 1.0, 2.0):
        expected = (logits / temperature).softmax(-1)[0]
        freq = torch.bincount(draws(logits, n, seed=5, temperature=temperature), minlength=6) / n
        # Standard error per frequency is at most sqrt(0.25 / n) = 0.0025; allow 4 of them.
        assert (freq - expected).abs().max() < 0.01, (temperature, freq, expected)


def test_frequencies_after_truncation_are_renormalized():
    n = 40_000
    freq = torch.bincount(draws(LOGITS, n, seed=6, top_p=0.9), minlength=4) / n
    expected = torch.tensor([0.5, 0.3, 0.15, 0.0]) / 0.95
    assert (freq - expected).abs().max() < 0.01
    freq = torch.bincount(draws(LOGITS, n, seed=7, top_k=2), minlength=4) / n
    assert (freq - torch.tensor([0.625, 0.375, 0.0, 0.0])).abs().max() < 0.01


def test_per_row_generators_sample_the_filtered_distribution():
    n = 20_000
    gens = [torch.Generator().manual_seed(i) for i in range(n)]
    tokens = sample(LOGITS.expand(n, -1), temperature=1.0, top_p=0.9, generator=gens)
    freq = torch.bincount(tokens, minlength=4) / n
    assert freq[3] == 0  # outside the nucleus
    assert (freq - torch.tensor([0.5, 0.3, 0.15, 0.0]) / 0.95).abs().max() < 0.01
    # Filtered tokens at the end of the vocabulary are never drawn, even with u close to 1.
    logits = torch.tensor([[0.0, 0.0, float("-inf"), float("-inf")]]).expand(2000, -1)
    assert sample(logits, generator=[torch.Generator().manual_seed(i) for i in range(2000)]).max() <= 1


def test_per_row_generators_are_reproducible_and_independent_of_the_batch():
    logits = torch.randn(3, 40, generator=torch.Generator().manual_seed(8))

    def gens(seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    first = sample(logits, generator=gens([100, 101, 102]))
    runs = torch.stack([sample(logits, generator=gens([100, 101, 102])) for _ in range(3)])
    assert (runs == first).all()
    # A row's draw depends only on its own generator and logits, not on the other rows.
    assert sample(logits[1:2], generator=gens([101])).item() == first[1].item()
    # Different seeds give different draws somewhere over 20 tries (flat logits: p = 1/40 each).
    flat = torch.zeros(1, 40)
    picks = {sample(flat, generator=gens([s])).item() for s in range(20)}
    assert len(picks) > 1


def test_repetition_penalty_on_hand_values():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0], [1.0, 1.0, -2.0, 0.0]])
    ids = torch.tensor([[0, 1, 1], [2, -1, -1]])  # -1 is padding; repeats count once
    out = apply_repetition_penalty(logits, ids, 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5, 3.0], [1.0, 1.0, -4.0, 0.0]]
    assert logits.tolist() == [[2.0, -1.0, 0.5, 3.0], [1.0, 1.0, -2.0, 0.0]]  # input untouched
    assert torch.equal(apply_repetition_penalty(logits, ids, 1.0), logits)


def test_repetition_penalty_matches_hf_processor():
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    g = torch.Generator().manual_seed(9)
    logits = torch.randn(4, 30, generator=g)
    ids = torch.randint(0, 30, (4, 12), generator=g)
    ref = RepetitionPenaltyLogitsProcessor(1.3)(ids, logits.clone())
    assert torch.allclose(apply_repetition_penalty(logits, ids, 1.3), ref)


def test_temperature_scales():
    assert torch.allclose(apply_temperature(LOGITS, 0.5), LOGITS * 2)


@pytest.mark.parametrize("call, message", [
    (lambda: sample(LOGITS, temperature=-1), "temperature"),
    (lambda: apply_temperature(LOGITS, 0), "temperature"),
    (lambda: filter_top_p(LOGITS, 0.0), "top_p"),
    (lambda: filter_top_p(LOGITS, 1.5), "top_p"),
    (lambda: filter_top_k(LOGITS, -1), "top_k"),
    (lambda: apply_repetition_penalty(LOGITS, torch.tensor([[0]]), 0.0), "repetition_penalty"),
    (lambda: sample(LOGITS[0]), "shape"),
    (lambda: sample(LOGITS.expand(2, -1), generator=[torch.Generator()]), "generators"),
])
def test_bad_arguments_name_what_is_wrong(call, message):
    with pytest.raises(ValueError, match=message if message != "shape" else r"\(batch, vocab\)"):
        call()



def test_top_p_takes_tied_logits_in_vocabulary_order():
    logits = torch.tensor([[0.0, 1.0, 1.0, 1.0, 1.0]])   # four tied tokens of 1/4.25 each
    assert torch.isfinite(filter_top_p(logits, 0.3)).tolist() == [[False, True, True, False, False]]

def test_inverse_cdf_at_the_top_of_the_unit_interval_picks_a_token_with_mass():
    from acculturate.decode.sampling import sample_inverse_cdf
    probs = torch.tensor([[0.2, 0.0, 0.8, 0.0, 0.0]])
    u = torch.tensor([1 - 2 ** -53], dtype=torch.float64)
    assert sample_inverse_cdf(probs, u).tolist() == [2]
    assert sample_inverse_cdf(probs, torch.tensor([0.1], dtype=torch.float64)).tolist() == [0]


@pytest.mark.parametrize("V", [5003, 128256, 49152])
def test_two_level_cumsum_equals_cumsum(V):
    """The chunked scan used on CUDA (forced here): the plain cumsum up to rounding, never decreasing,
    whatever the vocabulary's remainder modulo the chunk."""
    x = torch.rand(3, V, dtype=torch.float64, generator=torch.Generator().manual_seed(V))
    x[1, 100:300] = 0   # zero-probability runs keep the CDF flat, not lower
    got = cumsum_rows(x, force=True)
    assert got.shape == x.shape
    torch.testing.assert_close(got, x.cumsum(-1), rtol=1e-12, atol=1e-12)
    assert bool((got.diff(dim=-1) >= 0).all())


def _grid(n: int) -> torch.Tensor:
    """n uniforms evenly spread over [0, 1): a token's share of them is its probability to 1/n."""
    return (torch.arange(n, dtype=torch.float64) + 0.5) / n


@pytest.mark.parametrize("top_k, top_p", [(0, 0.9), (2, 1.0), (3, 0.7), (0, 0.3), (0, 1e-6), (5, 0.999)])
def test_sorted_sampling_draws_the_filtered_distribution_exactly(top_k, top_p):
    """Over a fine grid of uniforms, each token's share is its probability after filter_top_k and
    filter_top_p (renormalized), and no token outside them is ever picked."""
    logits = torch.tensor([[0.3, -1.0, 2.0, 0.0, 2.0, -3.0, 1.2]]) / 0.7
    n = 100_000
    tokens = sample_sorted(logits.expand(n, -1), _grid(n), top_k, top_p)
    expected = filter_top_p(filter_top_k(logits, top_k), top_p).softmax(-1)[0]
    freq = torch.bincount(tokens, minlength=logits.shape[1]) / n
    assert torch.equal(freq > 0, expected > 0), (freq, expected)
    assert (freq - expected).abs().max() < 2 / n, (freq, expected)


def test_sorted_sampling_takes_tied_scores_as_the_filters_do():
    logits = torch.tensor([[0.0, 1.0, 1.0, 1.0, 1.0]])   # four tied tokens of 1/4.25 each
    n = 10_000
    tokens = sample_sorted(logits.expand(n, -1), _grid(n), 0, 0.3)
    assert torch.bincount(tokens, minlength=5).tolist() == [0, n // 2, n // 2, 0, 0]   # the first two in vocab order
    tokens = sample_sorted(logits.expand(n, -1), _grid(n), 2, 1.0)   # ties with the 2nd score all kept
    assert set(tokens.tolist()) == {1, 2, 3, 4}


def test_sorted_sampling_with_per_row_settings_equals_each_rows_own_call():
    """The fixed-slot decoder passes top-k / top-p as (B, 1) tensors (0 and inf: off)."""
    torch.manual_seed(0)
    logits = torch.randn(5, 300, dtype=torch.float64).float() * 3
    u = torch.rand(5, dtype=torch.float64)
    settings = [(0, 0.9), (40, 1.0), (0, float("inf")), (7, 0.5), (1, 0.95)]
    top_k = torch.tensor([[k] for k, _ in settings])
    top_p = torch.tensor([[p] for _, p in settings])
    together = sample_sorted(logits, u, top_k, top_p)
    alone = [sample_sorted(logits[i:i + 1], u[i:i + 1], k, min(p, 1.0)).item() for i, (k, p) in enumerate(settings)]
    assert together.tolist() == alone
    assert together[4] == logits[4].argmax()   # top-k 1 is greedy


def test_sorted_sampling_at_the_top_of_the_unit_interval_picks_a_kept_token():
    logits = torch.tensor([[0.0, 5.0, float("-inf"), 4.0, -50.0]])
    u = torch.tensor([1 - 2 ** -53], dtype=torch.float64)
    assert sample_sorted(logits, u, 0, 0.99).tolist() == [3]
    assert sample_sorted(logits, torch.tensor([0.0], dtype=torch.float64), 0, 0.99).tolist() == [1]


def test_seeded_sample_draws_in_order_of_score_only_when_filters_leave_tokens_out():
    """sample() with per-row generators: the same uniforms, sample_sorted when top-k / top-p filter,
    the vocabulary-order inverse CDF otherwise (what the CUDA-graph decoders reproduce)."""
    torch.manual_seed(1)
    logits = torch.randn(6, 500)
    u = torch.cat([torch.rand(1, generator=torch.Generator().manual_seed(i), dtype=torch.float64) for i in range(6)])
    for top_k, top_p in ((0, 0.8), (50, 1.0), (0, 1.0), (500, 1.0)):
        got = sample(logits, 0.8, top_k, top_p, generator=[torch.Generator().manual_seed(i) for i in range(6)])
        scores = logits / 0.8
        if filters_tokens(top_k, top_p, 500):
            assert (top_k, top_p) in ((0, 0.8), (50, 1.0))
            assert torch.equal(got, sample_sorted(scores, u, top_k, top_p))
        else:
            assert torch.equal(got, sample_inverse_cdf(scores.softmax(-1), u))
