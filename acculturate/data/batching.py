"""Turn tokenized features into model batches: padding, packing and length grouping.

A feature is ``{"input_ids": [int], "labels": [int]}`` of equal lengths, with labels ``-100`` where
no loss is taken (prompt tokens). Labels are *not* shifted: the loss compares ``logits[:, t]`` with
``labels[:, t + 1]``, as Hugging Face causal LMs do.

Packing puts several short examples into one row. The row carries ``position_ids`` that restart at 0
for every example and no ``attention_mask``: transformers (read in 5.24's
``masking_utils.find_packed_sequence_indices``; also exercised on 5.17) then detects the restarts and builds a causal mask
that is block-diagonal over the examples, for both SDPA and eager attention (flash-attention uses the
same position_ids for its variable-length kernels). That detection only runs when the model is called
with ``attention_mask=None`` *and* without a KV cache, so a packed batch must be run with
``use_cache=False`` (Llama's ``use_cache`` otherwise defaults to the config's ``True``, a cache is
built and the mask silently becomes a plain causal one across examples). ``tests/data/
test_batching.py`` proves on the real model that a packed row gives the same logits as each example
alone.

A feature may carry ``"weight"`` (a float, from the example's ``meta.weight``): batches then also
hold ``loss_weights`` (B, T), each token's example weight (0 on padding), which
:func:`acculturate.train.loss.loss_sum` multiplies into the token losses.
"""

from __future__ import annotations

from typing import Sequence

import torch

IGNORE_INDEX = -100


def check_feature(feature: dict, index: int) -> None:
    """Raise ``ValueError`` naming the feature and field if ``feature`` is not a valid feature."""
    for field in ("input_ids", "labels"):
        if field not in feature:
            raise ValueError(f"feature {index}: missing field {field!r} (expected input_ids and labels lists)")
    ids, labels = feature["input_ids"], feature["labels"]
    if len(ids) == 0:
        raise ValueError(f"feature {index}: field 'input_ids' is empty (expected at least one token)")
    if len(ids) != len(labels):
        raise ValueError(f"feature {index}: field 'labels' has {len(labels)} entries, expected "
                         f"{len(ids)} (the length of input_ids)")


def pad_collate(features: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad features into one batch.

    Args:
        features: features with ``input_ids`` and ``labels`` (lists of ints, equal lengths).
        pad_id: token id written at padding positions (masked out of attention and loss).
    Returns:
        ``input_ids``, ``attention_mask`` (1 on real tokens) and ``labels`` (-100 on padding),
        each a LongTensor of shape (B, T) with T the longest feature; ``loss_weights`` (float, B x T)
        when some feature has a ``weight`` (the others count 1).
    """
    if not features:
        raise ValueError("pad_collate: got no features (expected at least one)")
    for i, f in enumerate(features):
        check_feature(f, i)
    longest = max(len(f["input_ids"]) for f in features)
    input_ids = torch.full((len(features), longest), pad_id, dtype=torch.long)       # (B, T)
    labels = torch.full((len(features), longest), IGNORE_INDEX, dtype=torch.long)    # (B, T)
    attention_mask = torch.zeros((len(features), longest), dtype=torch.long)         # (B, T)
    for row, f in enumerate(features):
        n = len(f["input_ids"])
        input_ids[row, :n] = torch.as_tensor(f["input_ids"], dtype=torch.long)
        labels[row, :n] = torch.as_tensor(f["labels"], dtype=torch.long)
        attention_mask[row, :n] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    if any("weight" in f for f in features):
        weights = torch.zeros((len(features), longest), dtype=torch.float32)         # (B, T)
        for row, f in enumerate(features):
            weights[row, :len(f["input_ids"])] = float(f.get("weight", 1.0))
        batch["loss_weights"] = weights
    return batch


def pack_features(features: Sequence[dict], max_length: int) -> list[dict]:
    """Pack features into rows of at most ``max_length`` tokens by first-fit-decreasing.

    Features longer than ``max_length`` are truncated to it (their tail is dropped). The first label
    of every example in a row is set to -100: in a row of its own that token is never a target (no
    token precedes it), and in a packed row it must not become the target of the previous example's
    last token. So the loss of a packed row equals the summed losses of its examples run alone.

    Args:
        features: features with ``input_ids`` and ``labels``.
        max_length: the most tokens in one packed row.
    Returns:
        Rows with ``input_ids``, ``labels``, ``position_ids`` (restarting at 0 for each example) and
        ``seq_lens`` (the example lengths, in row order), all lists of ints, and ``loss_weights``
        (each token's example weight) when some feature has a ``weight``. The packing is
        deterministic: the same features give the same rows.
    """
    if max_length < 1:
        raise ValueError(f"pack_features: max_length must be >= 1, got {max_length}")
    for i, f in enumerate(features):
        check_feature(f, i)
    lengths = [min(len(f["input_ids"]), max_length) for f in features]
    # Longest first, ties by original index (a stable sort keeps the packing deterministic).
    order = sorted(range(len(features)), key=lambda i: -lengths[i])
    bins: list[list[int]] = []    # feature indices per row
    free: list[int] = []          # tokens left per row
    for i in order:
        for b, room in enumerate(free):
            if lengths[i] <= room:
                bins[b].append(i)
                free[b] -= lengths[i]
                break
        else:
            bins.append([i])
            free.append(max_length - lengths[i])
    weighted = any("weight" in f for f in features)
    rows = []
    for members in bins:
        row = {"input_ids": [], "labels": [], "position_ids": [], "seq_lens": []}
        if weighted:
            row["loss_weights"] = []
        for i in members:
            n = lengths[i]
            labels = list(features[i]["labels"][:n])
            labels[0] = IGNORE_INDEX
            row["input_ids"].extend(features[i]["input_ids"][:n])
            row["labels"].extend(labels)
            row["position_ids"].extend(range(n))
            row["seq_lens"].append(n)
            if weighted:
                row["loss_weights"].extend([float(features[i].get("weight", 1.0))] * n)
        rows.append(row)
    return rows


def packed_collate(rows: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad packed rows into one batch, with no attention mask (see the module docstring).

    Padding gets its own position_ids run from 0, so it forms a separate block that no real token
    attends to; its labels are -100.

    Args:
        rows: rows from :func:`pack_features`.
        pad_id: token id for padding.
    Returns:
        ``input_ids``, ``labels`` and ``position_ids``, LongTensors of shape (B, T), and
        ``loss_weights`` (float, B x T) when the rows have them. Run the model on them with
        ``use_cache=False`` and no ``attention_mask``.
    """
    if not rows:
        raise ValueError("packed_collate: got no rows (expected at least one)")
    longest = max(len(r["input_ids"]) for r in rows)
    input_ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)       # (B, T)
    labels = torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long)    # (B, T)
    position_ids = torch.zeros((len(rows), longest), dtype=torch.long)           # (B, T)
    for b, r in enumerate(rows):
        if "position_ids" not in r:
            raise ValueError(f"packed_collate: row {b} has no 'position_ids' (expected a row from pack_features)")
        n = len(r["input_ids"])
        input_ids[b, :n] = torch.as_tensor(r["input_ids"], dtype=torch.long)
        labels[b, :n] = torch.as_tensor(r["labels"], dtype=torch.long)
        position_ids[b, :n] = torch.as_tensor(r["position_ids"], dtype=torch.long)
        position_ids[b, n:] = torch.arange(longest - n)
    batch = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
    if any("loss_weights" in r for r in rows):
        weights = torch.zeros((len(rows), longest), dtype=torch.float32)            # (B, T)
        for b, r in enumerate(rows):
            n = len(r["input_ids"])
            weights[b, :n] = torch.as_tensor(r["loss_weights"], dtype=torch.float32) if "loss_weights" in r else 1.0
        batch["loss_weights"] = weights
    return batch


def length_grouped_batches(lengths: Sequence[int], batch_size: int, generator: torch.Generator,
                           mega_batch_mult: int = 50) -> list[list[int]]:
    """Shuffle, then batch examples of similar length together to cut padding.

    The shuffled order is cut into mega-batches of ``batch_size * mega_batch_mult``; each is sorted
    by length (longest first) and split into batches; the batches are then shuffled. (The scheme of
    Hugging Face's ``LengthGroupedSampler``: randomness across mega-batches, little padding within.)

    Args:
        lengths: the length of every example.
        batch_size: examples per batch (the last batch may be smaller).
        generator: the torch generator that draws the order (seed it for a reproducible order).
        mega_batch_mult: mega-batch size in batches.
    Returns:
        Lists of example indices, one per batch; every index appears exactly once.
    """
    if batch_size < 1:
        raise ValueError(f"length_grouped_batches: batch_size must be >= 1, got {batch_size}")
    perm = torch.randperm(len(lengths), generator=generator).tolist()
    mega = batch_size * max(1, mega_batch_mult)
    batches = []
    for start in range(0, len(perm), mega):
        chunk = sorted(perm[start:start + mega], key=lambda i: -lengths[i])
        batches.extend(chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size))
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """A random permutation of ``range(n)`` cut into batches of ``batch_size`` (the last may be smaller)."""
    if batch_size < 1:
        raise ValueError(f"shuffled_batches: batch_size must be >= 1, got {batch_size}")
    perm = torch.randperm(n, generator=generator).tolist()
    return [perm[j:j + batch_size] for j in range(0, n, batch_size)]
