"""Train a few rows of the embedding (new vocabulary) beside a LoRA adapter, in PEFT's format.

PEFT's ``trainable_token_indices`` (LoraConfig, peft >= 0.15) trains chosen embedding rows and
saves only them: the key ``base_model.model.<embedding path>.token_adapter.trainable_tokens_delta``
holds the rows' *values* (n, d) (PEFT's name says delta, but ``merge`` index-copies them into the
weight), and the config records ``"trainable_token_indices": {"embed_tokens": [ids]}``. When the
output head is tied to the embedding (SmolLM2), PEFT wraps the head too, reading the same values,
so a new token's input and output rows stay one vector; :func:`apply_token_rows` does the same.

Layers wrap, as LoRA's do: :class:`TrainableTokenRows` around the ``nn.Embedding`` and
:class:`TiedTokenRowsHead` around a tied ``lm_head``. Neither copies the V x d matrix per step: the
embedding swaps the looked-up vectors of new ids, the head recomputes only the logits of new ids.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DELTA_KEY = "token_adapter.trainable_tokens_delta"   # PEFT's name, under the embedding's path


class _Rows(nn.Module):
    """Holds the trainable rows under PEFT's attribute name (``token_adapter.trainable_tokens_delta``)."""

    def __init__(self, values: torch.Tensor):
        super().__init__()
        self.trainable_tokens_delta = nn.Parameter(values)


class TrainableTokenRows(nn.Module):
    """An ``nn.Embedding`` whose rows ``token_indices`` are replaced by trainable vectors.

    Args:
        base: the embedding (frozen).
        token_indices: the rows to train (e.g. the ids a vocabulary extension added).
    """

    def __init__(self, base: nn.Embedding, token_indices: list[int]):
        super().__init__()
        if not isinstance(base, nn.Embedding):
            raise TypeError(f"TrainableTokenRows wraps an nn.Embedding, got {type(base).__name__}")
        ids = sorted(set(int(i) for i in token_indices))
        if not ids or ids[0] < 0 or ids[-1] >= base.num_embeddings:
            raise ValueError(f"token indices must be in [0, {base.num_embeddings}), got {token_indices!r}")
        self.base_layer = base
        base.weight.requires_grad_(False)
        idx = torch.tensor(ids, dtype=torch.long, device=base.weight.device)
        # Buffers, not saved: the indices live in the adapter config, as in PEFT.
        self.register_buffer("token_indices", idx, persistent=False)
        lookup = torch.full((base.num_embeddings,), -1, dtype=torch.long, device=base.weight.device)
        lookup[idx] = torch.arange(len(ids), device=base.weight.device)
        self.register_buffer("position_of", lookup, persistent=False)          # (V,) -> row or -1
        values = base.weight.detach()[idx].clone()
        if values.dtype in (torch.float16, torch.bfloat16):   # fp32 master rows, as LoRA's A/B
            values = values.float()
        self.token_adapter = _Rows(values)
        self.enabled = True

    @property
    def rows(self) -> nn.Parameter:
        return self.token_adapter.trainable_tokens_delta       # (n, d)

    @property
    def weight(self) -> torch.Tensor:
        """The full embedding with the trained rows in place, (V, d) (a copy; for merging/export)."""
        w = self.base_layer.weight
        if not self.enabled:
            return w
        return w.index_copy(0, self.token_indices, self.rows.to(w.dtype))

    @property
    def num_embeddings(self) -> int:
        return self.base_layer.num_embeddings

    @property
    def embedding_dim(self) -> int:
        return self.base_layer.embedding_dim

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:      # (B, T) -> (B, T, d)
        out = self.base_layer(input_ids)
        if not self.enabled:
            return out
        pos = self.position_of[input_ids]                                   # (B, T), -1 for old ids
        new = self.rows[pos.clamp(min=0)].to(out.dtype)                     # (B, T, d)
        return torch.where((pos >= 0).unsqueeze(-1), new, out)


class TiedTokenRowsHead(nn.Module):
    """The output head tied to a :class:`TrainableTokenRows`: the logits of the trained ids come
    from the trained rows. The embedding is held in a list so its parameters are not registered (and
    saved) twice, as PEFT does for a tied adapter."""

    def __init__(self, base: nn.Linear, embedding: TrainableTokenRows):
        super().__init__()
        self.base_layer = base
        self._embedding = [embedding]

    @property
    def embedding(self) -> TrainableTokenRows:
        return self._embedding[0]

    @property
    def weight(self) -> torch.Tensor:
        return self.embedding.weight

    @property
    def bias(self):
        return self.base_layer.bias

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:        # (..., d) -> (..., V)
        logits = self.base_layer(hidden)
        emb = self.embedding
        if not emb.enabled:
            return logits
        new = F.linear(hidden, emb.rows.to(hidden.dtype))              # (..., n)
        if self.base_layer.bias is not None:
            new = new + self.base_layer.bias[emb.token_indices]
        return logits.index_copy(-1, emb.token_indices, new.to(logits.dtype))


def token_rows_module(model: nn.Module) -> tuple[str, TrainableTokenRows] | None:
    """``(module path, layer)`` of the model's trainable token rows, or None."""
    for name, module in model.named_modules():
        if isinstance(module, TrainableTokenRows):
            return name, module
    return None


def apply_token_rows(model: nn.Module, token_indices: list[int]) -> TrainableTokenRows:
    """Make rows ``token_indices`` of the input embedding trainable (and, when the head is tied to
    it, the same rows of the head). Other parameters keep their ``requires_grad``.

    Returns:
        The :class:`TrainableTokenRows` layer now in the model.
    """
    if token_rows_module(model) is not None:
        raise ValueError("the model already has trainable token rows")
    embed = model.get_input_embeddings()
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is embed.weight
    layer = TrainableTokenRows(embed, token_indices)
    model.set_input_embeddings(layer)
    if tied:
        model.set_output_embeddings(TiedTokenRowsHead(head, layer))
    return layer


def remove_token_rows(model: nn.Module, merge: bool = True) -> None:
    """Unwrap the token rows; with ``merge``, write the trained rows into the embedding weight (and
    so into a tied head) first."""
    found = token_rows_module(model)
    if found is None:
        return
    _, layer = found
    base = layer.base_layer
    if merge:
        with torch.no_grad():
            base.weight.index_copy_(0, layer.token_indices, layer.rows.to(base.weight.dtype))
    head = model.get_output_embeddings()
    model.set_input_embeddings(base)
    if isinstance(head, TiedTokenRowsHead):
        model.set_output_embeddings(head.base_layer)


def token_rows_state_dict(model: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """``{prefix + <embedding path>.token_adapter.trainable_tokens_delta: rows}`` ({} without rows)."""
    found = token_rows_module(model)
    if found is None:
        return {}
    name, layer = found
    return {f"{prefix}{name}.{DELTA_KEY}": layer.rows.detach().contiguous()}


def token_rows_config(model: nn.Module) -> dict[str, list[int]] | None:
    """PEFT's ``trainable_token_indices`` value: ``{"embed_tokens": [ids]}`` (None without rows)."""
    found = token_rows_module(model)
    if found is None:
        return None
    name, layer = found
    return {name.rsplit(".", 1)[-1]: layer.token_indices.tolist()}


class token_rows_disabled:
    """Context manager: the model computes with its original rows (the base's distribution)."""

    def __init__(self, model: nn.Module):
        found = token_rows_module(model)
        self.layer = found[1] if found else None

    def __enter__(self):
        if self.layer is not None:
            self.layer.enabled = False
        return self

    def __exit__(self, *exc):
        if self.layer is not None:
            self.layer.enabled = True
        return False
