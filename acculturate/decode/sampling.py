"""Decoding maths: pure functions on next-token logits of shape (B, V).

Each function returns a new tensor and never changes its input. The order ``sample`` applies them
in (temperature, then top-k, then top-p) is the one HF transformers uses, so a setting means the
same thing here as in ``model.generate``.
"""

from __future__ import annotations

from typing import Sequence

import torch

# At or below this temperature, sampling is greedy: softmax(logits / 1e-5) puts all but ~e^-1e5 of
# the mass on the argmax for any logit gap above 1, and dividing by smaller numbers overflows fp16.
GREEDY_TEMPERATURE = 1e-5

Generators = torch.Generator | Sequence[torch.Generator] | None


def _check_logits(logits: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a tensor of shape (batch, vocab), got {shape}")


def _check_top_k(k: int) -> None:
    if k < 0:
        raise ValueError(f"top_k must be >= 0 (0 disables it), got {k!r}")


def _check_top_p(p: float) -> None:
    if not 0 < p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {p!r}")


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide logits by ``temperature`` (> 0): below 1 sharpens the distribution, above 1 flattens it.

    Args:
        logits: (B, V).
        temperature: a positive number (greedy decoding is ``sample(..., temperature=0)``).
    Returns:
        (B, V) logits / temperature.
    """
    _check_logits(logits)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 to scale logits, got {temperature!r}")
    return logits / temperature


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row and set the rest to -inf.

    Tokens tied with the k-th largest logit are all kept (as in HF's ``TopKLogitsWarper``).

    Args:
        logits: (B, V).
        k: number of tokens to keep; 0 (or k >= V) keeps all.
    Returns:
        (B, V) filtered logits.
    """
    _check_logits(logits)
    _check_top_k(k)
    if k == 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering (Holtzman et al. 2019): keep the smallest set of most likely tokens whose
    cumulative probability is >= ``p``; the most likely token is always kept.

    Args:
        logits: (B, V).
        p: in (0, 1]; 1 keeps all.
    Returns:
        (B, V) filtered logits (-inf outside the nucleus).
    """
    _check_logits(logits)
    _check_top_p(p)
    if p >= 1:
        return logits
    # A stable sort puts tied logits in vocabulary order, so which of them the nucleus takes is fixed.
    sorted_logits, order = logits.sort(dim=-1, descending=True, stable=True)  # (B, V) each
    probs = sorted_logits.float().softmax(dim=-1)
    # Mass strictly above each token; a token is needed while the tokens above it hold < p.
    # An exclusive cumsum (shift right by one) rather than cumsum - probs, which rounds.
    mass_above = torch.nn.functional.pad(cumsum_rows(probs)[:, :-1], (1, 0))  # (B, V)
    drop_sorted = mass_above >= p
    drop_sorted[:, 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocab order
    return logits.masked_fill(drop, float("-inf"))


def apply_repetition_penalty(logits: torch.Tensor, generated_ids: torch.Tensor,
                             penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty (Keskar et al. 2019, eq. 2, as HF implements it): for every token
    already present, divide a positive logit by ``penalty`` and multiply a negative one by it, so the
    token becomes less likely whatever its sign.

    Args:
        logits: (B, V).
        generated_ids: (B, L) token ids seen so far in each row; negative ids are padding, ignored.
            Each id counts once however often it occurs.
        penalty: > 0; 1 changes nothing, > 1 discourages repeats, < 1 encourages them.
    Returns:
        (B, V) penalized logits.
    """
    _check_logits(logits)
    if not penalty > 0:
        raise ValueError(f"repetition_penalty must be > 0, got {penalty!r}")
    if generated_ids.ndim != 2 or generated_ids.shape[0] != logits.shape[0]:
        raise ValueError(f"generated_ids must have shape (batch={logits.shape[0]}, length), "
                         f"got {tuple(generated_ids.shape)}")
    if penalty == 1 or generated_ids.shape[1] == 0:
        return logits
    ids = generated_ids.to(logits.device).long()
    valid = ids >= 0
    # scatter_add of counts (not scatter of booleans): duplicate indices then add up deterministically.
    counts = torch.zeros(logits.shape, dtype=torch.long, device=logits.device)
    counts.scatter_add_(1, ids.clamp(min=0), valid.long())  # (B, V)
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(counts > 0, penalized, logits)


def sample(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           generator: Generators = None) -> torch.Tensor:
    """Pick one next token per row.

    Args:
        logits: (B, V) next-token logits.
        temperature: <= 1e-5 (0 included) means greedy argmax; otherwise logits are divided by it.
        top_k: keep only the k most likely tokens (0: all).
        top_p: keep only the nucleus of mass p (1: all).
        generator: None (torch's global RNG), one ``torch.Generator`` for the whole batch, or one per
            row; per-row generators make a row's draws independent of what else is in the batch.
            With per-row generators each row draws one uniform and picks by inverse CDF: in order of
            score when top-k / top-p leave tokens out (:func:`sample_sorted`), else in vocabulary
            order (:func:`sample_inverse_cdf`), as the CUDA-graph decoders do.
    Returns:
        (B,) LongTensor of token ids.
    """
    _check_logits(logits)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature!r}")
    if temperature <= GREEDY_TEMPERATURE:
        return logits.argmax(dim=-1)
    _check_top_k(top_k)
    _check_top_p(top_p)
    scores = apply_temperature(logits.float(), temperature)
    if generator is None or isinstance(generator, torch.Generator):
        scores = filter_top_p(filter_top_k(scores, top_k), top_p)
        return torch.multinomial(scores.softmax(dim=-1), 1, generator=generator).squeeze(-1)
    u = _uniforms(list(generator), scores)
    if filters_tokens(top_k, top_p, scores.shape[-1]):
        return sample_sorted(scores, u, top_k, top_p)
    return sample_inverse_cdf(scores.softmax(dim=-1), u)


def _uniforms(generators: list[torch.Generator], scores: torch.Tensor) -> torch.Tensor:
    """One uniform per row from that row's generator, (B,) float64 on ``scores``' device: one
    searchsorted for the batch afterwards instead of B multinomial calls. Measured at B=32 on an
    H100 with a SmolLM2-135M-shaped model: the B calls took 5 ms of a 51 ms step; with one draw a
    row, seeded sampling costs about 1 ms a step more than unseeded (44.5 vs 43.6 ms)."""
    if len(generators) != scores.shape[0]:
        raise ValueError(f"got {len(generators)} generators for a batch of {scores.shape[0]} rows")
    return torch.cat([torch.rand(1, generator=g, device=g.device, dtype=torch.float64)
                      for g in generators]).to(scores.device)


def filters_tokens(top_k: int, top_p: float, vocab: int) -> bool:
    """Whether top-k / top-p leave out any token, so that a seeded draw goes through
    :func:`sample_sorted` (in order of score) rather than :func:`sample_inverse_cdf` (in vocabulary
    order). Every decoder takes this same rule, so a seeded row gets the same tokens from each."""
    return 0 < top_k < vocab or top_p < 1


def sample_sorted(scores: torch.Tensor, u: torch.Tensor, top_k: int | torch.Tensor = 0,
                  top_p: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Top-k / top-p sampling by inverse CDF over the tokens in descending order of score: the
    kept tokens are then a prefix of that order, so the draw needs one sort, one exponential, one
    cumulative sum and two binary searches, and nothing goes back to vocabulary order but the
    picked index.

    The tokens it can pick, and their probabilities, are those of ``filter_top_p(filter_top_k(
    scores, top_k), top_p)`` then softmax (ties with the k-th score kept; tied scores at the
    nucleus' edge taken in vocabulary order, by a stable sort); which token one ``u`` maps to
    differs from :func:`sample_inverse_cdf`'s vocabulary order. Why: the filter-then-sample path at
    batch 64 of a 128k vocabulary spent, besides the sort, ~0.25 ms of a 3.8 ms step on the scatter
    back to vocabulary order, a second softmax and a second scan (H200 profile,
    ``bench/results/commands_generate_step_profile_kv_kernel_h200.txt``).

    Args:
        scores: (B, V) temperature-scaled logits (-inf for excluded tokens).
        u: (B,) float64 uniforms in [0, 1).
        top_k: 0 (off) or the count to keep, or a (B, 1) tensor of them per row (0: off).
        top_p: the nucleus mass in (0, 1], or a (B, 1) tensor of them per row (>= 1 or inf: off).
    Returns:
        (B,) LongTensor of token ids; no host sync, so it can run inside a CUDA graph.
    """
    _check_logits(scores)
    ordered, order = scores.sort(dim=-1, descending=True, stable=True)       # (B, V) each
    weights = (ordered - ordered[:, :1]).exp()                               # (B, V), 1 at the top
    if isinstance(top_k, torch.Tensor):
        kth = ordered.gather(1, (top_k - 1).clamp(min=0)).masked_fill(top_k == 0, float("-inf"))   # (B, 1)
        weights = weights.masked_fill(ordered < kth, 0.0)
    elif 0 < top_k < scores.shape[-1]:
        weights = weights.masked_fill(ordered < ordered[:, top_k - 1:top_k], 0.0)
    cdf = cumsum_rows(weights.double())                                      # (B, V)
    # A token is kept while the tokens above it hold less than p of the mass: the count kept is one
    # more than the number of prefixes below p * total (the top token is always kept).
    threshold = cdf[:, -1:] * (top_p.double() if isinstance(top_p, torch.Tensor) else top_p)   # (B, 1)
    kept = (torch.searchsorted(cdf, threshold, right=False) + 1).clamp(max=scores.shape[-1])  # (B, 1)
    # The first index whose CDF exceeds u * (the nucleus' mass) has weight > 0; rounding can only
    # push it past the nucleus, hence the clamp (the nucleus' last token has weight > 0 too).
    picks = torch.searchsorted(cdf, u[:, None] * cdf.gather(1, kept - 1), right=True)      # (B, 1)
    return order.gather(1, torch.minimum(picks, kept - 1)).squeeze(1)


def sample_inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The token whose cumulative-probability interval holds ``u * total mass``, per row.

    Args:
        probs: (B, V) non-negative, each row with positive mass.
        u: (B,) uniforms in [0, 1) (float64 keeps the CDF exact enough for a 128k vocabulary).
    Returns:
        (B,) LongTensor of token ids; no host sync, so it can run inside a CUDA graph.
    """
    cdf = cumsum_rows(probs.double())                                     # (B, V)
    # x < total mass, so the first index with cdf > x is a token of probability > 0.
    x = (u * cdf[:, -1]).unsqueeze(-1)                                    # (B, 1)
    tokens = torch.searchsorted(cdf, x, right=True).squeeze(-1)           # (B,)
    # Should rounding ever give x == total, fall back to the first token at which the CDF reaches
    # the total (a token of probability > 0). A binary search, not a flip + argmax over the
    # vocabulary: in the compiled batch-1 step that argmax made the sampler's last kernel 68 us
    # (H200 profile, 2026-12-01).
    last = torch.searchsorted(cdf, cdf[:, -1:].contiguous(), right=False).squeeze(-1)  # (B,)
    return torch.where(tokens > last, last, tokens)


def cumsum_rows(x: torch.Tensor, chunk: int | None = None, force: bool = False) -> torch.Tensor:
    """``x.cumsum(dim=-1)`` for (B, V) ``x``, on CUDA in two levels: within chunks of ``chunk`` columns,
    then the chunks' running totals added. PyTorch's scan over a long innermost dimension walks each
    row with one warp-sized group; as (B * V / chunk) rows of ``chunk`` it spreads over the GPU (the
    batch-64 step of the 1B shape on an H200: 5.96 -> 5.82 ms, two calls). The sums differ from the plain
    scan only by rounding and stay non-decreasing for non-negative ``x``. Elsewhere (the CPU, rows of
    at most 4096) the plain cumsum, unless ``force``. ``chunk`` defaults to a divisor of V near 1024
    (1002 for Llama 3's 128,256), so no padding or slicing is needed (the compiled static step's
    searchsorted refused a sliced view)."""
    B, V = x.shape
    # Under torch.compile Inductor writes its own scan, and its searchsorted lowering rejects this
    # function's view as the sorted sequence (InductorError "NotImplementedError: View" compiling
    # StaticDecoder(compile=True) at batch 1 on an H200).
    if not force and (x.device.type != "cuda" or V <= 4096 or torch.compiler.is_compiling()):
        return x.cumsum(dim=-1)
    chunk = chunk or next((c for c in range(1024, 255, -1) if V % c == 0), 1024)
    pad = (-V) % chunk
    inner = torch.nn.functional.pad(x, (0, pad)).view(B, -1, chunk).cumsum(dim=-1)   # (B, C, chunk)
    totals = inner[..., -1]                                                          # (B, C)
    before = torch.nn.functional.pad(totals.cumsum(dim=-1)[:, :-1], (1, 0))         # (B, C) exclusive
    out = (inner + before[..., None]).view(B, -1)
    return out if pad == 0 else out[:, :V].contiguous()
