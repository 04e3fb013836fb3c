"""Many adapters (LoRA and prompt tuning) on one base model, chosen by name per request.

Each adapter is its own set of :class:`LoRALinear` wrappers, one per module it targets, and every
wrapper wraps the base model's *own* ``nn.Linear`` object at that path. Activating an adapter puts
its wrappers into the model in place of those Linears (one ``setattr`` per module, no tensor copied
or reloaded); ``None`` ("none") puts the bare Linears back, so the base model runs exactly as it was
loaded. The base weights therefore exist once however many adapters are loaded, adapters may differ
in rank, scale and targets (a module the active adapter does not target just runs the base), and
an inactive adapter costs only its ``A``/``B`` matrices.

This is equivalent to PEFT's multi-adapter layer (a dict of ``A``/``B`` per adapter inside each
layer) but keeps the single-adapter layer untouched: ``layer.lora_A.weight``, ``lora_state_dict``'s
PEFT key names (no adapter name in them, as PEFT's ``save_pretrained`` writes), ``merge_lora``,
``save_adapter`` and QLoRA all see just the active adapter, and ``model.parameters()`` holds only the
active adapter's ``A``/``B``, so ``train()`` on an active adapter trains that adapter alone.

The base of a module is whatever the model holds there when no adapter wraps it, so a base swapped
under the active adapter (``quantize_lora_bases`` to NF4, or the dequantized Linear an NF4 merge
leaves) becomes every adapter's base. ``quantize_lora_bases`` only reaches the active adapter's
modules; new adapters (``add``/``create``/``combine``) need ``nn.Linear`` bases, so add them before
quantizing.

A prompt-tuning adapter (``method: prompt_tuning``) is its :class:`PromptEmbedding` (the n learned
vectors and the forward hooks that prepend them): activating it attaches that module and its hooks
to the model, deactivating detaches them, so the model again runs exactly as loaded. It changes no
module of the model, so it costs only its (n, d) vectors while inactive. It cannot be merged into
weights or combined with LoRA adapters.

A LoRA adapter trained with new-vocabulary rows (``method.train_new_tokens``, saved as PEFT's
``trainable_token_indices``) keeps its :class:`TrainableTokenRows` embedding wrapper (and the tied
head's) beside its LoRA layers: they wrap the model's embedding only while that adapter is active,
so another adapter, or none, sees the base model's rows again.

One model serves one adapter at a time: switching changes the model for every caller, so a server
answering requests for different adapters concurrently must serialize them (:meth:`using` holds a
lock for its block). Mixing adapters row by row inside one batch is not supported.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from acculturate.adapters.lora import (
    LoRAConfig, LoRALinear, apply_lora, linear_names, lora_modules, matches_target,
)
from acculturate.adapters.peft_format import load_adapter, save_adapter
from acculturate.adapters.prompt_tuning import ATTRIBUTE as PROMPT_ATTRIBUTE
from acculturate.adapters.prompt_tuning import PromptEmbedding, PromptTuningConfig, prompt_embedding
from acculturate.adapters.token_rows import TiedTokenRowsHead, TrainableTokenRows

NONE = "none"  # the name that selects the base model alone
_ATTRIBUTE = "_acculturate_adapter_registry"  # where a model keeps its registry


class UnknownAdapterError(LookupError):
    """A request named an adapter that is not loaded; the message lists the loaded names."""


@dataclass
class Adapter:
    """One named adapter of a registry."""

    name: str
    """Its name in the registry."""
    config: LoRAConfig | PromptTuningConfig
    """The config it was built or loaded with (what :meth:`AdapterRegistry.save` writes): a ``LoRAConfig`` or
    a ``PromptTuningConfig``."""
    layers: dict[str, LoRALinear]
    """Module path -> its ``LoRALinear`` (in the model only while the adapter is active); empty for prompt
    tuning."""
    source: Path | None = None
    """The directory it was loaded from, if any."""
    prompt: PromptEmbedding | None = None
    """A prompt-tuning adapter's virtual tokens and hooks (attached only while active)."""
    token_rows: tuple[TrainableTokenRows, TiedTokenRowsHead | None] | None = None
    """Trained new-vocabulary embedding rows saved with a LoRA adapter (PEFT's ``trainable_token_indices``):
    the embedding wrapper and, for a tied head, the head's; in the model only while the adapter is active,
    like ``layers``."""

    @property
    def kind(self) -> str:
        """``"prompt_tuning"`` or ``"lora"``."""
        return "prompt_tuning" if self.prompt is not None else "lora"

    def num_parameters(self) -> int:
        """The number of ``A``/``B`` entries, or of prompt-vector entries (the adapter's whole cost in memory)."""
        prompt = self.prompt.prompt_embeddings.weight.numel() if self.prompt is not None else 0
        rows = self.token_rows[0].rows.numel() if self.token_rows is not None else 0
        return prompt + rows + sum(layer.lora_A.weight.numel() + layer.lora_B.weight.numel()
                            for layer in self.layers.values())


def _token_rows_of(model: nn.Module) -> tuple[TrainableTokenRows, TiedTokenRowsHead | None] | None:
    """The model's trainable token rows wrapper and tied head wrapper (None if it has none)."""
    embed = model.get_input_embeddings()
    if not isinstance(embed, TrainableTokenRows):
        return None
    head = model.get_output_embeddings()
    return embed, (head if isinstance(head, TiedTokenRowsHead) else None)


def _detach_token_rows(model: nn.Module) -> tuple[TrainableTokenRows, TiedTokenRowsHead | None] | None:
    """Take the model's trainable token rows (and tied head wrapper) out, leaving the bare embedding
    and head; returns them (None if the model has none)."""
    rows = _token_rows_of(model)
    if rows is None:
        return None
    embed, head = rows
    model.set_input_embeddings(embed.base_layer)
    if head is not None:
        model.set_output_embeddings(head.base_layer)
    return rows


def _attach_token_rows(model: nn.Module, rows: tuple[TrainableTokenRows, TiedTokenRowsHead | None]) -> None:
    """Put an adapter's token-row wrappers around the model's current (bare) embedding and head."""
    embed, head = rows
    embed.base_layer = model.get_input_embeddings()
    device = _device_of(embed.base_layer)
    if device is not None and embed.rows.device != device:   # the model was moved while inactive
        embed.to(device)
    model.set_input_embeddings(embed)
    if head is not None:
        head.base_layer = model.get_output_embeddings()
        model.set_output_embeddings(head)


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_name, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _dropout_p(layer: LoRALinear) -> float:
    return layer.lora_dropout.p if isinstance(layer.lora_dropout, nn.Dropout) else 0.0


def _check_name(name) -> str:
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise ValueError(f"an adapter name must be a non-empty string without surrounding spaces, got {name!r}")
    if name.lower() == NONE:
        raise ValueError(f"{name!r} is reserved: it selects the base model without an adapter")
    return name


class AdapterRegistry:
    """Named adapters (LoRA or prompt tuning) over one base model; exactly one (or none) is active at a time.

    Build it with :func:`adapter_registry` (one registry per model, kept on the model). A model
    that already has LoRA layers (from ``apply_lora`` or ``load_adapter``) or a prompt
    (``apply_prompt_tuning``) keeps them as the active adapter named ``adopt_name``.

    Args:
        model: the base model, modified in place as adapters are switched.
        adopt_name: the name for the adapter the model already has.
    """

    def __init__(self, model: nn.Module, adopt_name: str = "default"):
        if getattr(model, _ATTRIBUTE, None) is not None:
            raise ValueError("this model already has an adapter registry; get it with adapter_registry(model)")
        self.model = model
        self._adapters: dict[str, Adapter] = {}
        self._active: str | None = None
        # Held while switching and for the whole block of using(): one model serves one adapter at a time.
        self._lock = threading.RLock()
        existing, prompt = lora_modules(model), prompt_embedding(model)
        if existing and prompt is not None:
            raise ValueError("the model has both LoRA layers and a prompt-tuning prompt; a registry adapter "
                             "is one or the other")
        if existing:
            self._adapters[_check_name(adopt_name)] = Adapter(adopt_name, _infer_config(existing), existing,
                                                              token_rows=_token_rows_of(model))
            self._active = adopt_name
        elif prompt is not None:
            config = PromptTuningConfig(num_virtual_tokens=prompt.num_virtual_tokens)
            self._adapters[_check_name(adopt_name)] = Adapter(adopt_name, config, {}, prompt=prompt)
            self._active = adopt_name
        # A plain attribute (not a submodule), so the model's state dict and save_pretrained ignore it.
        object.__setattr__(model, _ATTRIBUTE, self)

    def __getstate__(self) -> dict:
        # A lock cannot be copied or pickled; copy.deepcopy(model) or torch.save(model) copies the
        # registry with the model (its wrappers then wrap the copy's layers), with a new lock.
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    # -- what is loaded ---------------------------------------------------------------------------

    def names(self) -> list[str]:
        """The loaded adapters' names, in the order they were added."""
        return list(self._adapters)

    def active(self) -> str | None:
        """The active adapter's name, or None when the base model runs alone."""
        return self._active

    def get(self, name: str) -> Adapter:
        """The adapter called ``name``; :class:`UnknownAdapterError` (listing the loaded names) if none is."""
        try:
            return self._adapters[name]
        except (KeyError, TypeError):
            loaded = ", ".join(repr(n) for n in self._adapters) or "none yet"
            raise UnknownAdapterError(
                f"no adapter named {name!r}; loaded adapters: {loaded} (or {NONE!r} for the base model)") from None

    def __contains__(self, name) -> bool:
        return name in self._adapters

    def __len__(self) -> int:
        return len(self._adapters)

    # -- adding and removing -----------------------------------------------------------------------

    def add(self, name: str, adapter_dir: str | os.PathLike, activate: bool = False) -> Adapter:
        """Load a PEFT-format adapter directory (LoRA or prompt tuning; ours or PEFT's) under ``name``.

        The files are checked by :func:`load_adapter` (config, key names, shapes against this
        model); on any error nothing is added and the active adapter stays active.

        Args:
            name: a new name (not ``"none"``).
            adapter_dir: the adapter directory.
            activate: make it the active adapter (default: the active one stays).
        Returns:
            The new :class:`Adapter`.
        """
        return self._build(name, lambda: load_adapter(self.model, adapter_dir), activate, Path(adapter_dir))

    def create(self, name: str, config: LoRAConfig | PromptTuningConfig, activate: bool = True,
               tokenizer=None) -> Adapter:
        """Add a new, untrained adapter, active by default, ready for ``train()``: LoRA (``B`` = 0,
        by :func:`apply_lora`; only its ``A``/``B`` are in ``model.parameters()`` while it is active)
        or prompt tuning (by :func:`apply_prompt_tuning`; ``tokenizer`` for a text initialisation)."""
        if isinstance(config, PromptTuningConfig):
            from acculturate.adapters.prompt_tuning import apply_prompt_tuning

            return self._build(name, lambda: (apply_prompt_tuning(self.model, config, tokenizer), config)[1],
                               activate, None)
        return self._build(name, lambda: (apply_lora(self.model, config), config)[1], activate, None)

    def _build(self, name: str, wrap, activate: bool, source: Path | None) -> Adapter:
        _check_name(name)
        with self._lock:
            if name in self._adapters:
                raise ValueError(f"an adapter named {name!r} is already loaded; remove() it first or pick another name")
            previous, was_merged = self._active, self.merged
            self._switch(None)  # the loaders wrap a bare model
            try:
                config = wrap()
                layers = lora_modules(self.model)
                for path, layer in layers.items():
                    _set_module(self.model, path, layer.base_layer)
                prompt = _detach_prompt(self.model)
                rows = _detach_token_rows(self.model)
            finally:
                if self.model_lora_paths():  # the loader failed half-way: leave the base bare again
                    for path, layer in lora_modules(self.model).items():
                        _set_module(self.model, path, layer.base_layer)
                _detach_prompt(self.model)  # (a loader that failed after attaching its prompt)
                _detach_token_rows(self.model)
                self._restore(previous, was_merged)
            adapter = Adapter(name, config, layers, source, prompt, rows)
            self._adapters[name] = adapter
            if activate:
                self.use(name)
            return adapter

    def remove(self, name: str) -> None:
        """Forget adapter ``name`` (the base model runs alone if it was active)."""
        with self._lock:
            self.get(name)
            if self._active == name:
                self._switch(None)
            del self._adapters[name]

    # -- choosing ------------------------------------------------------------------------------------

    def use(self, name: str | None) -> None:
        """Make ``name`` the active adapter; ``None`` or ``"none"`` runs the base model alone.

        Switching moves module references only (no weight is copied). If the active adapter is
        merged into the base weights it is unmerged first (exact in fp32 up to rounding of
        ``W + dW - dW``, as in PEFT).
        """
        with self._lock:
            target = self._resolve(name)
            self._switch(target)

    @contextmanager
    def using(self, name: str | None) -> Iterator[Adapter | None]:
        """``with registry.using("uk"): ...``: that adapter answers inside the block; the one
        active before (and its merged state) is back after it. Holds the registry's lock, so
        threads sharing the model take turns.

        Yields:
            The active :class:`Adapter`, or None for the base model.
        """
        with self._lock:
            target = self._resolve(name)
            previous, was_merged = self._active, self.merged
            self._switch(target)
            try:
                yield None if target is None else self._adapters[target]
            finally:
                self._restore(previous, was_merged)

    def _resolve(self, name: str | None) -> str | None:
        if name is None or (isinstance(name, str) and name.lower() == NONE):
            return None
        self.get(name)
        return name

    def _restore(self, name: str | None, merged: bool) -> None:
        self._switch(name if name in self._adapters else None)  # it may have been removed meanwhile
        if merged and not self.merged:
            self.merge()

    def _switch(self, name: str | None) -> None:
        """Put adapter ``name``'s wrappers into the model (None: the bare base layers)."""
        self._check_model()
        if name == self._active:
            return
        if self._active is not None:
            current = self._adapters[self._active]
            for layer in current.layers.values():
                layer.unmerge()
            for path, layer in current.layers.items():
                _set_module(self.model, path, layer.base_layer)
            _detach_prompt(self.model)
            if current.token_rows is not None:
                _detach_token_rows(self.model)
            self._active = None
        if name is None:
            return
        prompt = self._adapters[name].prompt
        if prompt is not None:
            device = _device_of(self.model.get_input_embeddings())
            if device is not None and prompt.prompt_embeddings.weight.device != device:
                prompt.to(device)  # the model was moved while this adapter was inactive
            setattr(self.model, PROMPT_ATTRIBUTE, prompt)
            prompt.attach(self.model)
        if self._adapters[name].token_rows is not None:
            _attach_token_rows(self.model, self._adapters[name].token_rows)
        for path, layer in self._adapters[name].layers.items():
            base = self.model.get_submodule(path)
            # The base is whatever the model holds now, so a base swapped while another adapter was
            # active (e.g. quantized to NF4 by quantize_lora_bases) is shared too.
            layer.base_layer = base
            device = _device_of(base)
            if device is not None and layer.lora_A.weight.device != device:
                layer.lora_A.to(device)  # the model was moved while this adapter was inactive
                layer.lora_B.to(device)
            layer.train(self.model.training)  # dropout follows the model's mode
            _set_module(self.model, path, layer)
        self._active = name

    def _check_model(self) -> None:
        """Refuse to switch if the model's LoRA layers are not the active adapter's (e.g. after
        ``merge_lora(model)`` or ``apply_lora(model, ...)`` outside the registry)."""
        expected = {} if self._active is None else self._adapters[self._active].layers
        expected_prompt = None if self._active is None else self._adapters[self._active].prompt
        found = lora_modules(self.model)
        if prompt_embedding(self.model) is not expected_prompt:
            raise RuntimeError(
                f"the model's prompt-tuning prompt is not that of the active adapter {self._active or NONE!r}: "
                "it was changed outside the registry (apply_prompt_tuning, remove_prompt_tuning or "
                "load_adapter on a registry's model); add adapters with registry.add()/create()")
        if found.keys() != expected.keys() or any(found[p] is not expected[p] for p in found):
            raise RuntimeError(
                f"the model's LoRA layers are not those of the active adapter {self._active or NONE!r}: "
                f"they were changed outside the registry (merge_lora, apply_lora or load_adapter on a "
                f"registry's model); add adapters with registry.add()/create() and merge with registry.merge()")

    def model_lora_paths(self) -> list[str]:
        """Paths of the LoRA layers now in the model (the active adapter's)."""
        return list(lora_modules(self.model))

    # -- merging -----------------------------------------------------------------------------------

    @property
    def merged(self) -> bool:
        """Whether the active adapter is merged into the base weights."""
        return self._active is not None and any(layer.merged for layer in self._adapters[self._active].layers.values())

    def merge(self) -> None:
        """Add the active adapter's ``scale * B A`` into the shared base weights, so inference costs
        what the base model costs. :meth:`unmerge` (or any switch, which unmerges) undoes it."""
        with self._lock:
            if self._active is None:
                raise ValueError("no adapter is active; use(name) one before merging")
            if self._adapters[self._active].prompt is not None:
                raise ValueError(f"adapter {self._active!r} is prompt tuning: its virtual tokens are inputs, "
                                 "not a weight update, so there is nothing to merge (it costs n extra "
                                 "positions per prompt; switching it is already free)")
            for layer in self._adapters[self._active].layers.values():
                layer.merge()

    def unmerge(self) -> None:
        """Subtract the active adapter's update from the base weights again (a no-op if not merged)."""
        with self._lock:
            if self._active is not None:
                for layer in self._adapters[self._active].layers.values():
                    layer.unmerge()

    # -- saving and combining ------------------------------------------------------------------------

    def save(self, name: str, out_dir: str | os.PathLike, base_model_name_or_path: str | None) -> Path:
        """Write adapter ``name`` as a PEFT adapter directory (:func:`save_adapter`), whether or
        not it is active; the active adapter stays as it was."""
        with self.using(name) as adapter:
            return save_adapter(self.model, out_dir, base_model_name_or_path, adapter.config)

    def combine(self, names: Sequence[str], weights: Sequence[float], new_name: str,
                combination: str = "cat", activate: bool = False) -> Adapter:
        """Add a new adapter that is a weighted combination of loaded ones (PEFT's
        ``add_weighted_adapter`` for ``combination_type`` "cat" or "linear"; see :data:`COMBINATIONS`).

        Args:
            names: the adapters to combine (at least one).
            weights: one weight per adapter; negative weights subtract an adapter's effect.
            new_name: the new adapter's name.
            combination: "cat" (exact: ``dW = sum_i w_i dW_i``, rank = sum of ranks) or "linear"
                (rank kept, equal ranks required, an approximation).
            activate: make the new adapter active.
        Returns:
            The new :class:`Adapter`; its config has ``alpha = r`` (scale 1), so it saves and loads
            (also in PEFT) like any other adapter.
        """
        _check_name(new_name)
        if combination not in COMBINATIONS:
            raise ValueError(f"combination must be one of {sorted(COMBINATIONS)}, got {combination!r}")
        names, weights = list(names), [float(w) for w in weights]
        if not names or len(names) != len(weights):
            raise ValueError(f"combine needs one weight per adapter and at least one adapter; "
                             f"got {len(names)} names and {len(weights)} weights")
        if len(set(names)) != len(names):
            raise ValueError(f"combine got an adapter twice: {names}")
        adapters = [self.get(n) for n in names]
        prompts = [a.name for a in adapters if a.prompt is not None]
        if prompts:
            raise ValueError(f"combine works on LoRA adapters; {prompts} are prompt tuning")
        if len(adapters) == 1:
            combination = "linear"  # as PEFT: one adapter is always combined linearly
        ranks = [a.config.r for a in adapters]
        if combination == "linear" and len(set(ranks)) != 1:
            raise ValueError(f"combination 'linear' needs adapters of equal rank, got r={dict(zip(names, ranks))}; "
                             f"use 'cat', which is exact for any ranks")
        new_rank = sum(ranks) if combination == "cat" else ranks[0]
        with self._lock:
            if new_name in self._adapters:
                raise ValueError(f"an adapter named {new_name!r} is already loaded")
            order = {p: i for i, (p, _) in enumerate(self.model.named_modules())}
            paths = sorted({p for a in adapters for p in a.layers}, key=order.__getitem__)  # model order
            layers = {}
            for path in paths:
                base = self._base_at(path)
                factors = [(a.layers[path].lora_A.weight, a.layers[path].lora_B.weight, w * a.layers[path].scale)
                           for a, w in zip(adapters, weights) if path in a.layers]
                lora_a, lora_b = COMBINATIONS[combination](factors, new_rank)
                layer = LoRALinear(base, new_rank, new_rank, adapters[0].config.dropout)
                with torch.no_grad():
                    layer.lora_A.weight.copy_(lora_a)
                    layer.lora_B.weight.copy_(lora_b)
                layer.train(self.model.training)
                layers[path] = layer
            config = LoRAConfig(r=new_rank, alpha=new_rank, dropout=adapters[0].config.dropout,
                                targets=self._union_targets(adapters, paths))
            adapter = Adapter(new_name, config, layers)
            self._adapters[new_name] = adapter
            if activate:
                self.use(new_name)
            return adapter

    def _base_at(self, path: str) -> nn.Module:
        module = self.model.get_submodule(path)
        return module.base_layer if isinstance(module, LoRALinear) else module

    def _union_targets(self, adapters: list[Adapter], paths: list[str]) -> tuple[str, ...]:
        """The adapters' target names together, if they match exactly ``paths``; else the paths."""
        targets = tuple(dict.fromkeys(t for a in adapters for t in a.config.targets))
        candidates = set(linear_names(self.model)) | set(self.model_lora_paths())
        if {p for p in candidates if any(matches_target(p, t) for t in targets)} == set(paths):
            return targets
        return tuple(paths)


def _detach_prompt(model: nn.Module) -> PromptEmbedding | None:
    """Take a prompt-tuning prompt (its hooks and submodule) off ``model``; returns it, or None."""
    prompt = prompt_embedding(model)
    if prompt is not None:
        prompt.detach()
        delattr(model, PROMPT_ATTRIBUTE)
    return prompt


def _device_of(module: nn.Module) -> torch.device | None:
    for tensor in list(module.parameters()) + list(module.buffers()):
        return tensor.device
    return None


def _infer_config(layers: dict[str, LoRALinear]) -> LoRAConfig:
    """The LoRAConfig that describes existing LoRA layers (targets = their exact paths)."""
    kinds = {(layer.r, layer.alpha, layer.use_rslora, _dropout_p(layer)) for layer in layers.values()}
    if len(kinds) != 1:
        raise ValueError(f"the model's LoRA layers differ in (r, alpha, use_rslora, dropout): {sorted(kinds)}; "
                         f"a registry adopts only layers built with one LoRAConfig")
    r, alpha, use_rslora, dropout = kinds.pop()
    return LoRAConfig(r=r, alpha=alpha, dropout=dropout, targets=tuple(layers), use_rslora=use_rslora)


# -- weighted combination -----------------------------------------------------------------------------
# Each function takes, for one module, the factors of the adapters that target it as
# (A_i (r_i, in), B_i (out, r_i), c_i = w_i * scale_i) and the new rank, and returns (A, B) for an
# adapter with scale 1 (alpha = r), so its update is B @ A.


@torch.no_grad()
def combine_cat(factors: list[tuple[torch.Tensor, torch.Tensor, float]], rank: int):
    """Exact: stack the ranks. ``A = [c_1 A_1; c_2 A_2; ...]`` (rows), ``B = [B_1, B_2, ...]``
    (columns), so ``B A = sum_i c_i B_i A_i = sum_i w_i dW_i``. ``rank`` is the sum of all the
    combined adapters' ranks; rows of adapters that do not target this module stay zero (PEFT's layout)."""
    a0, b0, _ = factors[0]
    lora_a = a0.new_zeros(rank, a0.shape[1], dtype=torch.float32)   # (R, in)
    lora_b = b0.new_zeros(b0.shape[0], rank, dtype=torch.float32)   # (out, R)
    start = 0
    for a, b, c in factors:
        r = a.shape[0]
        lora_a[start:start + r] = c * a.float()
        lora_b[:, start:start + r] = b.float()
        start += r
    return lora_a, lora_b


@torch.no_grad()
def combine_linear(factors: list[tuple[torch.Tensor, torch.Tensor, float]], rank: int):
    """PEFT's "linear": ``A = sum_i sign(c_i) sqrt|c_i| A_i``, ``B = sum_i sqrt|c_i| B_i`` (equal
    ranks). Then ``B A = sum_i c_i B_i A_i + sum_{i!=j} (cross terms B_i A_j)``: cheap (rank kept)
    but only an approximation of ``sum_i w_i dW_i`` unless one adapter is combined."""
    lora_a = sum(math.copysign(math.sqrt(abs(c)), c) * a.float() for a, _, c in factors)  # (r, in)
    lora_b = sum(math.sqrt(abs(c)) * b.float() for _, b, c in factors)                      # (out, r)
    return lora_a, lora_b


COMBINATIONS = {"cat": combine_cat, "linear": combine_linear}


# -- functions over a model -----------------------------------------------------------------------------


def adapter_registry(model: nn.Module) -> AdapterRegistry:
    """The model's adapter registry, created on first use (adopting LoRA layers the model already
    has as adapter ``"default"``)."""
    registry = getattr(model, _ATTRIBUTE, None)
    return registry if registry is not None else AdapterRegistry(model)


@contextmanager
def use_adapter(model: nn.Module, name: str | None) -> Iterator[Adapter | None]:
    """``with use_adapter(model, "uk"): generate(...)``: adapter ``name`` (None/"none": the base
    model) answers inside the block; see :meth:`AdapterRegistry.using`."""
    with adapter_registry(model).using(name) as adapter:
        yield adapter


def parse_adapter_spec(spec: str) -> tuple[str, Path]:
    """``"NAME=DIR"`` -> (NAME, DIR); ``"DIR"`` -> (DIR's folder name, DIR). A spec that is an
    existing directory is a DIR even if it contains ``=``."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"an adapter spec must be NAME=DIR or DIR, got {spec!r}")
    if "=" in spec and not Path(spec).is_dir():
        name, _, directory = spec.partition("=")
        if not name or not directory:
            raise ValueError(f"adapter spec {spec!r}: expected NAME=DIR with both parts non-empty")
        return name, Path(directory)
    path = Path(spec)
    return path.resolve().name, path


def load_adapters(model: nn.Module, specs: Sequence[str], use: str | None = None) -> AdapterRegistry:
    """Load adapters named by ``"NAME=DIR"`` / ``"DIR"`` specs (the CLI's ``--adapter``) and
    activate ``use`` (default: the first; ``"none"``: the base model).

    Returns:
        The model's registry.
    """
    registry = adapter_registry(model)
    parsed = [parse_adapter_spec(s) for s in specs]
    seen: dict[str, Path] = {}
    for name, directory in parsed:
        if name in seen:
            raise ValueError(f"two adapters are named {name!r} ({seen[name]} and {directory}); "
                             f"name them with NAME=DIR")
        seen[name] = directory
    for name, directory in parsed:
        registry.add(name, directory)
    if use is None and parsed:
        use = parsed[0][0]
    if use is not None:
        registry.use(use)
    return registry
