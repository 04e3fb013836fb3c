"""Prompt tuning (Lester et al. 2021, arXiv:2104.08691): n learned virtual-token embeddings
prepended to every input; every weight of the model stays frozen.

The model is not subclassed or wrapped. :func:`apply_prompt_tuning` adds one submodule,
``model.prompt_tuning`` (a :class:`PromptEmbedding` holding ``prompt_embeddings``, an
``nn.Embedding(n, d)``, the only trainable parameter), and two hooks on the model's ``forward``:

- before it: ``input_ids`` become ``inputs_embeds`` with the n prompt vectors in front, shape
  (B, n + T, d); ``attention_mask`` gets n ones in front, ``position_ids`` become
  ``[0 .. n-1, n + p]`` (a real token keeps its relative position, shifted by n, as PEFT's default
  positions ``arange(n + T)`` give for an unpadded row), ``labels`` get n ``-100`` in front, and an
  index ``logits_to_keep`` is shifted by n (an int one is capped at T, so the virtual positions
  never reach the vocabulary projection).
- after it: any logits still covering the virtual positions (a call with ``labels``, whose loss
  the model computes over all n + T) are cut to the last T, so ``.logits`` always lines up with
  the caller's tokens. ``hidden_states``/``attentions``, if asked for, keep the virtual positions.

With a KV cache the virtual tokens go in once, at prefill (an empty or absent cache); later steps
only extend the mask by the n cached virtual positions and shift ``position_ids`` by n. So
``acculturate.train.train`` (which calls ``model(input_ids, attention_mask, use_cache=False,
logits_to_keep=positions)``) and ``acculturate.decode.generate`` (left padding, explicit
``position_ids``, a cache) run a prompt-tuned model unchanged. Packed rows (``position_ids``
restarting inside a row) are refused: only the first example of the row would see the prompt.

This matches PEFT's ``PeftModelForCausalLM`` for prompt tuning (same inputs_embeds, mask and labels;
PEFT drops explicit ``position_ids`` and returns the n virtual logits too). The on-disk format is
in :mod:`acculturate.adapters.peft_format`.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
from torch import nn

from acculturate.data.batching import IGNORE_INDEX

ATTRIBUTE = "prompt_tuning"   # the submodule name on the model (and the parameter's name prefix)


@dataclass
class PromptTuningConfig:
    """How prompt tuning adapts a model."""

    num_virtual_tokens: int = 20
    """How many learned vectors go in front of every input (Lester et al. use 5-100; 20 is PEFT's usual
    choice)."""
    init_text: str | None = None
    """Initialise the vectors from the embeddings of this text's tokens (repeated or truncated to
    ``num_virtual_tokens``), e.g. "Answer as a person from Mexico would:"; None initialises them randomly
    from the embedding matrix's per-dimension mean and std."""
    seed: int = 0
    """Seed of the random initialisation (unused with ``init_text``)."""

    def __post_init__(self):
        n = self.num_virtual_tokens
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ValueError(f"PromptTuningConfig.num_virtual_tokens must be a positive integer, got {n!r}")
        if self.init_text is not None and (not isinstance(self.init_text, str) or not self.init_text.strip()):
            raise ValueError(f"PromptTuningConfig.init_text must be a non-empty string or None, got {self.init_text!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"PromptTuningConfig.seed must be an integer, got {self.seed!r}")


class PromptEmbedding(nn.Module):
    """The learned virtual tokens and the forward hooks that put them in front of the inputs.

    Args:
        weight: the initial (n, d) vectors; copied into ``prompt_embeddings.weight`` (trainable).
    """

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        n, d = weight.shape
        self.prompt_embeddings = nn.Embedding(n, d, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            self.prompt_embeddings.weight.copy_(weight)
        self._strip = False      # set by before_forward: the logits may still hold the virtual positions
        self._real_length = 0    # T of the current call
        self._handles = []
        self._forward_names: tuple[str, ...] = ()

    @property
    def num_virtual_tokens(self) -> int:
        return self.prompt_embeddings.num_embeddings

    def attach(self, model: nn.Module) -> None:
        """Register the hooks on ``model``'s forward."""
        self._forward_names = tuple(inspect.signature(model.forward).parameters)
        self._handles = [model.register_forward_pre_hook(self.before_forward, with_kwargs=True),
                         model.register_forward_hook(self.after_forward)]

    def detach(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def before_forward(self, model: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:  # model(ids) or model(ids, mask): name them, as forward's signature does
            kwargs = {**dict(zip(self._forward_names, args)), **kwargs}
            args = ()
        n = self.num_virtual_tokens
        input_ids = kwargs.pop("input_ids", None)
        embeds = kwargs.get("inputs_embeds")
        if (input_ids is None) == (embeds is None):
            raise ValueError("a prompt-tuned model needs exactly one of input_ids and inputs_embeds")
        cache = kwargs.get("cache", kwargs.get("past_key_values"))  # transformers 5.x / 4.x name
        past = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
        batch = (input_ids if input_ids is not None else embeds).shape[0]
        mask, positions = kwargs.get("attention_mask"), kwargs.get("position_ids")
        if mask is not None:
            if mask.dim() != 2:
                raise ValueError(f"prompt tuning needs a 2-D attention_mask (B, T), got shape {tuple(mask.shape)}")
            kwargs["attention_mask"] = torch.cat([mask.new_ones(batch, n), mask], dim=1)   # (B, n + T)
        if past:  # decoding: the virtual tokens are in the cache already
            if input_ids is not None:
                kwargs["input_ids"] = input_ids
            if positions is not None:
                kwargs["position_ids"] = positions + n
            self._strip = False
            return args, kwargs

        if embeds is None:
            embeds = model.get_input_embeddings()(input_ids)                          # (B, T, d)
        length = embeds.shape[1]
        prompts = self.prompt_embeddings.weight.to(embeds.dtype)                     # (n, d)
        kwargs["inputs_embeds"] = torch.cat([prompts.expand(batch, -1, -1), embeds], dim=1)  # (B, n + T, d)
        if positions is not None:
            check_unpacked(positions, mask)
            virtual = torch.arange(n, device=positions.device, dtype=positions.dtype).expand(batch, n)
            kwargs["position_ids"] = torch.cat([virtual, positions + n], dim=1)      # (B, n + T)
        labels = kwargs.get("labels")
        if labels is not None:
            kwargs["labels"] = torch.cat([labels.new_full((batch, n), IGNORE_INDEX), labels], dim=1)
        keep = kwargs.get("logits_to_keep")
        if isinstance(keep, torch.Tensor) and keep.dim() == 1:
            kwargs["logits_to_keep"] = keep + n          # positions, now after the n virtual ones
        elif isinstance(keep, int) and labels is None and "logits_to_keep" in self._forward_names:
            # 0 means all T; k > T would reach into the virtual positions. With labels the model
            # needs all n + T logits for its loss: cut them afterwards instead.
            kwargs["logits_to_keep"] = min(keep, length) if keep else length
        self._strip, self._real_length = True, length
        return args, kwargs

    def after_forward(self, model: nn.Module, args: tuple, output):
        strip, self._strip = self._strip, False
        logits = getattr(output, "logits", None)
        n, length = self.num_virtual_tokens, self._real_length
        if strip and logits is not None and logits.shape[1] == n + length:
            output.logits = logits[:, n:]   # (B, T, V): the caller's positions
        return output

    def extra_repr(self) -> str:
        return f"num_virtual_tokens={self.num_virtual_tokens}, token_dim={self.prompt_embeddings.embedding_dim}"


def check_unpacked(positions: torch.Tensor, mask: torch.Tensor | None) -> None:
    """Raise ``ValueError`` if a row's ``position_ids`` restart at 0 on more than one real token
    (a packed row: the prompt would precede only its first example)."""
    real = mask.bool() if mask is not None else torch.ones_like(positions, dtype=torch.bool)
    starts = ((positions == 0) & real).sum(dim=1)   # (B,)
    if bool((starts > 1).any()):
        raise ValueError("prompt tuning cannot run on packed rows (position_ids restart inside a row, so "
                         "only the row's first example would follow the virtual tokens); set "
                         "TrainConfig.packing to false")


def prompt_embedding(model: nn.Module) -> PromptEmbedding | None:
    """The model's :class:`PromptEmbedding`, or None if it is not prompt-tuned."""
    module = getattr(model, ATTRIBUTE, None)
    return module if isinstance(module, PromptEmbedding) else None


def _parameter_dtype(embedding: torch.Tensor) -> torch.dtype:
    # fp32 vectors over a half-precision model, as for LoRA: their updates would round away in bf16.
    return torch.float32 if embedding.dtype in (torch.float16, torch.bfloat16) else embedding.dtype


@torch.no_grad()
def init_prompt_weight(model: nn.Module, config: PromptTuningConfig, tokenizer=None) -> torch.Tensor:
    """The initial (n, d) virtual-token vectors for ``config``.

    From text: the embeddings of ``tokenizer(init_text)["input_ids"]`` (as PEFT tokenizes it),
    repeated or truncated to n. Random: each dimension drawn from N(mean, std) of that dimension
    over the embedding matrix, so the vectors start on the scale of real tokens (PEFT's RANDOM draws
    N(0, 1), about 40x SmolLM2's embedding scale).

    Raises:
        ValueError: ``init_text`` without a tokenizer, or a text that tokenizes to nothing.
    """
    embedding = model.get_input_embeddings().weight                    # (V, d)
    n, dtype = config.num_virtual_tokens, _parameter_dtype(embedding)
    if config.init_text is not None:
        if tokenizer is None:
            raise ValueError("PromptTuningConfig.init_text needs the model's tokenizer to initialise from text")
        ids = tokenizer(config.init_text)["input_ids"]
        if not ids:
            raise ValueError(f"PromptTuningConfig.init_text {config.init_text!r} tokenizes to no tokens")
        ids = (ids * math.ceil(n / len(ids)))[:n]
        return embedding[torch.tensor(ids, device=embedding.device)].to(dtype).clone()   # (n, d)
    table = embedding.float()
    mean, std = table.mean(dim=0), table.std(dim=0)                     # (d,), (d,)
    generator = torch.Generator().manual_seed(config.seed)
    noise = torch.randn(n, table.shape[1], generator=generator)         # (n, d), drawn on the CPU
    return (mean + std * noise.to(table.device)).to(dtype)


def attach_prompt(model: nn.Module, weight: torch.Tensor) -> PromptEmbedding:
    """Freeze every parameter of ``model`` and prepend ``weight``'s (n, d) vectors to its inputs.

    Returns:
        The :class:`PromptEmbedding` (also ``model.prompt_tuning``); its vectors train.
    Raises:
        ValueError: the model is already prompt-tuned, or ``d`` is not its embedding size.
    """
    if prompt_embedding(model) is not None:
        raise ValueError("the model is already prompt-tuned; remove_prompt_tuning() it first")
    embedding = model.get_input_embeddings().weight
    if weight.dim() != 2 or weight.shape[1] != embedding.shape[1]:
        raise ValueError(f"prompt vectors must have shape (n, {embedding.shape[1]}) for "
                         f"{type(model).__name__}, got {tuple(weight.shape)}")
    for p in model.parameters():
        p.requires_grad_(False)
    module = PromptEmbedding(weight.detach().to(embedding.device, _parameter_dtype(embedding)))
    setattr(model, ATTRIBUTE, module)
    module.attach(model)
    return module


def apply_prompt_tuning(model: nn.Module, config: PromptTuningConfig, tokenizer=None) -> PromptEmbedding:
    """Prompt-tune ``model`` in place: only ``config.num_virtual_tokens`` vectors train.

    Args:
        model: an HF causal LM (its forward takes ``inputs_embeds``).
        config: how many virtual tokens and how to initialise them.
        tokenizer: the model's tokenizer; needed only with ``config.init_text``.
    Returns:
        The :class:`PromptEmbedding` (``model.prompt_tuning``).
    """
    return attach_prompt(model, init_prompt_weight(model, config, tokenizer))


def remove_prompt_tuning(model: nn.Module) -> PromptEmbedding:
    """Remove the hooks and the submodule; the model runs as before :func:`apply_prompt_tuning`
    (its parameters stay frozen). Returns the removed :class:`PromptEmbedding`."""
    module = prompt_embedding(model)
    if module is None:
        raise ValueError("the model is not prompt-tuned")
    module.detach()
    delattr(model, ATTRIBUTE)
    return module
