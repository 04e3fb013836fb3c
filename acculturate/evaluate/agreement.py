"""Agreement between two raters (a model judge and humans) on the same items' 1-5 scores."""

from __future__ import annotations

from typing import Sequence


def average_ranks(values: Sequence[float]) -> list[float]:
    """Ranks 1..n, ties sharing the mean of the ranks they span (``[10, 20, 20]`` -> ``[1, 2.5, 2.5]``)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return None   # a constant rater: correlation is undefined, not zero
    return sxy / (sxx * syy) ** 0.5


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (Pearson's r of average ranks, so ties are handled).

    Returns:
        rho in [-1, 1]; None with fewer than 2 pairs or when either side is constant.
    """
    if len(x) != len(y):
        raise ValueError(f"expected paired scores, got {len(x)} and {len(y)}")
    if len(x) < 2:
        return None
    return _pearson(average_ranks(x), average_ranks(y))


def weighted_kappa(a: Sequence[int], b: Sequence[int], categories: Sequence[int] = (1, 2, 3, 4, 5),
                   weights: str = "quadratic") -> float | None:
    """Cohen's weighted kappa (Cohen, 1968): ``1 - sum(w * observed) / sum(w * expected)`` with
    disagreement weights ``w_ij = (i - j)^2`` (quadratic) or ``|i - j|`` (linear) over category indices.

    Args:
        a, b: the two raters' labels for the same items.
        categories: the ordered label set.
        weights: "quadratic" or "linear".
    Returns:
        kappa (1 = perfect, 0 = chance); None without items or when chance disagreement is zero.
    """
    if len(a) != len(b):
        raise ValueError(f"expected paired labels, got {len(a)} and {len(b)}")
    if weights not in ("quadratic", "linear"):
        raise ValueError(f"weights: expected 'quadratic' or 'linear', got {weights!r}")
    if not a:
        return None
    index = {c: i for i, c in enumerate(categories)}
    for label in (*a, *b):
        if label not in index:
            raise ValueError(f"label {label!r} is not one of the categories {list(categories)}")
    k, n = len(categories), len(a)
    observed = [[0.0] * k for _ in range(k)]
    for x, y in zip(a, b):
        observed[index[x]][index[y]] += 1 / n
    row = [sum(observed[i]) for i in range(k)]
    col = [sum(observed[i][j] for i in range(k)) for j in range(k)]
    power = 2 if weights == "quadratic" else 1
    w = [[abs(i - j) ** power for j in range(k)] for i in range(k)]
    num = sum(w[i][j] * observed[i][j] for i in range(k) for j in range(k))
    den = sum(w[i][j] * row[i] * col[j] for i in range(k) for j in range(k))
    if den == 0:
        return None
    return 1 - num / den
