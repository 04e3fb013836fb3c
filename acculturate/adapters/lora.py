"""LoRA (Hu et al. 2021, arXiv:2106.09685) as a layer that wraps an ``nn.Linear``.

``LoRALinear`` computes ``W x + s * B A x`` with ``W`` frozen, ``A`` (r, in) and ``B`` (out, r)
trainable and ``s = alpha / r`` (or ``alpha / sqrt(r)`` with rank-stabilized LoRA, Kalajdzievski
2023, arXiv:2312.03732). Its attribute names (``base_layer``, ``lora_A``, ``lora_B``,
``lora_dropout``) are PEFT's, so a module path plus ``.lora_A.weight`` is exactly the key PEFT
stores (after its ``base_model.model.`` prefix); see ``peft_format.py``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

PEFT_PREFIX = "base_model.model."   # what PEFT puts before every module path in a saved adapter
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoRAConfig:
    """How LoRA adapts a model."""

    r: int = 16
    """Rank of the update ``B A``; a few to a few dozen is typical."""
    alpha: float = 32
    """Scale numerator: the update is multiplied by ``alpha / r`` (``alpha / sqrt(r)`` with ``use_rslora``),
    so changing ``r`` does not change the effective learning rate much."""
    dropout: float = 0.05
    """Dropout probability on the LoRA branch's input during training (0 disables it)."""
    targets: tuple[str, ...] = DEFAULT_TARGETS
    """Names of the ``nn.Linear`` modules to adapt, matched against the last parts of a module's dotted path
    (``"q_proj"`` matches ``model.layers.3.self_attn.q_proj``). The default adapts every attention and MLP
    projection of Llama-style models."""
    use_rslora: bool = False
    """Scale by ``alpha / sqrt(r)`` (rank-stabilized LoRA) instead of ``alpha / r``."""
    layers: tuple[int, ...] | str | None = None
    """Adapt only these transformer layers (PEFT's ``layers_to_transform``): a list of layer numbers or a
    slice ``"START:STOP"``; negative numbers count from the last layer (``"-15:"``: the top 15). No gradient
    flows below the lowest adapted layer, so training skips the backward pass of the layers under it
    (saved adapters list the layer numbers, as PEFT does). None: every layer."""

    def __post_init__(self):
        check_lora_numbers(self.r, self.alpha, self.dropout, owner="LoRAConfig")
        if isinstance(self.layers, list):
            self.layers = tuple(self.layers)
        if isinstance(self.layers, int) and not isinstance(self.layers, bool):
            self.layers = (self.layers,)   # PEFT's form for a single layer
        if isinstance(self.layers, str):
            _parse_slice(self.layers)
        elif self.layers is not None and (
                not isinstance(self.layers, tuple) or not self.layers
                or not all(isinstance(i, int) and not isinstance(i, bool) for i in self.layers)):
            raise ValueError(f"LoRAConfig.layers must be a non-empty list of layer numbers or a slice "
                             f"'START:STOP' (e.g. '-15:'), got {self.layers!r}")
        if isinstance(self.targets, str):  # a bare string would silently become its characters
            self.targets = (self.targets,)
        self.targets = tuple(self.targets)
        if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise ValueError(
                f"LoRAConfig.targets must be a non-empty list of module names, got {self.targets!r}")

    @property
    def scale(self) -> float:
        """The factor on ``B A``: ``alpha / r``, or ``alpha / sqrt(r)`` with ``use_rslora``."""
        return lora_scale(self.r, self.alpha, self.use_rslora)


def _parse_slice(text: str) -> slice:
    parts = text.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        return slice(*(int(p) if p.strip() else None for p in parts))
    except ValueError:
        raise ValueError(f"LoRAConfig.layers: expected a slice 'START:STOP' of layer numbers (e.g. '-15:' or "
                         f"'4:12'), got {text!r}") from None


def layer_number(name: str) -> int | None:
    """The transformer layer a module path lies in (``model.layers.15.mlp.up_proj`` -> 15): the last
    number between dots, as PEFT reads it for ``layers_to_transform``; None outside the layers."""
    m = re.match(r".*\.[^.]*\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def select_layers(names: list[str], layers: tuple[int, ...] | str | None) -> list[str]:
    """The paths in ``names`` that lie in ``layers`` (:attr:`LoRAConfig.layers`, resolved against the
    layer count that ``names`` shows); all of them when ``layers`` is None."""
    if layers is None:
        return list(names)
    numbers = [n for n in map(layer_number, names) if n is not None]
    if not numbers:
        raise ValueError(f"LoRAConfig.layers={layers!r}: none of the modules lies in a numbered layer "
                         f"(e.g. {names[0] if names else 'no modules'})")
    count = max(numbers) + 1
    if isinstance(layers, str):
        chosen = set(range(count)[_parse_slice(layers)])
    else:
        wrong = [i for i in layers if not -count <= i < count]
        if wrong:
            raise ValueError(f"LoRAConfig.layers: {wrong} out of range for a model with {count} layers")
        chosen = {i % count for i in layers}
    if not chosen:
        raise ValueError(f"LoRAConfig.layers={layers!r} selects no layer of a model with {count} layers")
    return [n for n in names if layer_number(n) in chosen]


def check_lora_numbers(r, alpha, dropout, owner: str) -> None:
    """Raise ``ValueError`` naming ``owner.field`` if rank, alpha or dropout is out of range."""
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise ValueError(f"{owner}.r must be a positive integer, got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        raise ValueError(f"{owner}.alpha must be a positive number, got {alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"{owner}.dropout must be a number in [0, 1), got {dropout!r}")


def lora_scale(r: int, alpha: float, use_rslora: bool = False) -> float:
    """``alpha / r`` (LoRA), or ``alpha / sqrt(r)`` (rsLoRA: keeps the update's size stable as r grows)."""
    return alpha / math.sqrt(r) if use_rslora else alpha / r


class LoRALinear(nn.Module):
    """``base(x) + scale * lora_B(lora_A(dropout(x)))`` around a frozen ``nn.Linear``.

    ``lora_A`` starts Kaiming-uniform (``a=sqrt(5)``, as PEFT and ``nn.Linear`` do) and ``lora_B``
    at zero, so the wrapped layer equals the base layer exactly until ``B`` is trained. Adapter
    weights live in fp32 when the base is fp16/bf16 (as PEFT's default ``autocast_adapter_dtype``
    does): their updates are small relative to their values and would round away in half precision.

    Args:
        base: the layer to adapt; its parameters are frozen.
        r: rank; alpha: scale numerator; dropout: dropout probability on the LoRA branch.
        use_rslora: scale by ``alpha / sqrt(r)`` instead of ``alpha / r``.
    """

    # Half-precision forward over a frozen nn.Linear: adapter product first, base matmul last with
    # nothing saved for backward (_FrozenAddmm), so activation checkpointing's early stop skips the
    # base matmul of a layer's last projection (down_proj) when it recomputes the layer. False: the
    # base matmul first, then the adapter (the earlier order), kept for bench/gpu.py's ablation.
    frozen_base_last = True
    # q/k/v (and gate/up) of one layer read the same input: computed together, one adapter product
    # x @ [A_q; A_k; A_v].T and one input gradient for the three (see SiblingGroup). False: each
    # alone, kept for bench/gpu.py's ablation.
    fuse_siblings = True

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0,
                 use_rslora: bool = False):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        check_lora_numbers(r, alpha, dropout, owner="LoRALinear")
        self.base_layer = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.r = r
        self.alpha = alpha
        self.use_rslora = use_rslora
        self.scale = lora_scale(r, alpha, use_rslora)
        weight = base.weight
        dtype = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(base.in_features, r, bias=False, device=weight.device, dtype=dtype)
        self.lora_B = nn.Linear(r, base.out_features, bias=False, device=weight.device, dtype=dtype)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.merged = False
        self._siblings: SiblingGroup | None = None   # set by group_siblings()

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    @property
    def weight(self) -> torch.Tensor:
        """The base weight (some model code reads ``proj.weight.dtype``)."""
        return self.base_layer.weight

    def delta_weight(self) -> torch.Tensor:
        """``scale * B @ A``, shape (out, in), in the adapter's dtype."""
        return self.scale * (self.lora_B.weight @ self.lora_A.weight)  # (out, r) @ (r, in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., in)
        a, b = self.lora_A.weight, self.lora_B.weight
        half = x.dtype in (torch.float16, torch.bfloat16) and a.dtype != x.dtype
        if half and self._frozen_half_path(x):
            return self._half_forward(x, None, a, b)
        out = self.base_layer(x)  # (..., out)
        if self.merged:  # the update is already inside base_layer.weight
            return out
        if half and out.dtype == x.dtype:
            return self._half_forward(x, out, a, b)
        update = self.lora_B(self.lora_A(self.lora_dropout(x.to(a.dtype))))  # (..., r) -> (..., out)
        return out + (self.scale * update).to(out.dtype)

    def _frozen_half_path(self, x: torch.Tensor) -> bool:
        """Whether the half-precision path with the base matmul last applies: the base is a plain
        frozen ``nn.Linear`` in ``x``'s dtype or a quantized one (QLoRA's ``NF4Linear``, dequantized
        to ``x``'s dtype inside the matmul), without hooks, its bias (if any) frozen and in ``x``'s
        dtype, and the adapter is not merged."""
        base = self.base_layer
        if not self.frozen_base_last or self.merged or base._forward_hooks or base._forward_pre_hooks:
            return False
        if base.bias is not None and (base.bias.requires_grad or base.bias.dtype != x.dtype):
            return False
        if type(base) is nn.Linear:
            return base.weight.dtype == x.dtype and not base.weight.requires_grad
        return _is_quantized(base)

    def _half_forward(self, x: torch.Tensor, out: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor
                      ) -> torch.Tensor:
        """LoRA in the activations' half dtype: cast the tiny fp32 adapter weights (r x in, out x r)
        to ``x.dtype`` instead of casting the big activation ``x`` (tokens x in) to fp32, and fold
        the scale and the residual add into the matmuls. The weights stay fp32 (their gradients
        arrive through the cast), so optimizer updates keep full precision, as in PEFT.

        Why: the fp32 path writes and reads an fp32 copy of every projection's input and runs the
        two small matmuls in fp32; bench/gpu.py measures what this path buys on a GPU.

        ``out`` is None when the base is a frozen ``nn.Linear`` (see :meth:`forward`): then the
        adapter's product comes first, written into the output, and the base matmul accumulates onto
        it last, saving nothing for backward (:class:`_LoRAIn` + :class:`_LoRAOut` without dropout,
        for this layer alone or with its siblings, else :class:`_FrozenAddmm`)."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])                                        # (n, in)
        base = self.base_layer
        grad = out is None and torch.is_grad_enabled() and (x2.requires_grad or a.requires_grad or b.requires_grad)
        if grad and isinstance(self.lora_dropout, nn.Identity):
            y = self._siblings.forward(self, x, x2) if self._siblings is not None else None
            if y is None:
                y = _lora_out([self], x2)[0]
            return y.view(*lead, y.shape[-1])
        a16, bs = self._half_weights(x.dtype)                                  # (r, in), (out, r)
        xa = F.linear(self.lora_dropout(x2), a16)                              # (n, r)
        if out is not None:
            return torch.addmm(out.reshape(-1, out.shape[-1]), xa, bs.t()).view(*lead, out.shape[-1]).to(out.dtype)
        lora = torch.mm(xa, bs.t()) if base.bias is None else torch.addmm(base.bias, xa, bs.t())   # (n, out)
        weight = _frozen_weight(base)
        y = _FrozenAddmm.apply(lora, x2, weight) if grad else lora.addmm_(x2, _dense(weight, x2.dtype).t())
        return y.view(*lead, y.shape[-1])

    def _half_weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``A`` (r, in) and ``scale * B`` (out, r) cast to ``dtype`` (differentiable casts)."""
        return self.lora_A.weight.to(dtype), (self.lora_B.weight * self.scale).to(dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """Add ``scale * B A`` into the base weight, so the forward pass is one matmul.

        A no-op if already merged. Train only while unmerged: merged, the forward pass no longer
        goes through ``A`` and ``B``, so they would get no gradient.

        A quantized base (QLoRA's ``NF4Linear``) has no writable weight: it is first replaced by a
        frozen ``nn.Linear`` holding ``dequant(W)`` (in the bias's dtype, else fp32), the weights the
        adapter was trained against, so the merged layer gives the QLoRA layer's outputs. That
        replacement stays after :meth:`unmerge`. (``qlora.merge_qlora(model, dtype)`` picks the dtype.)
        """
        if not self.merged and not isinstance(self.base_layer, nn.Linear):
            quantized = self.base_layer   # duck-typed: lora.py cannot import nf4 (nf4 imports lora)
            dtype = quantized.bias.dtype if quantized.bias is not None else torch.float32
            weight = quantized.dequantize(dtype)                                  # (out, in)
            linear = nn.Linear(quantized.in_features, quantized.out_features, bias=quantized.bias is not None,
                               device=weight.device, dtype=dtype)
            linear.weight.copy_(weight)
            if quantized.bias is not None:
                linear.bias.copy_(quantized.bias)
            self.base_layer = linear.requires_grad_(False).train(quantized.training)
        if not self.merged:
            w = self.base_layer.weight
            w.copy_((w.float() + self.delta_weight().float()).to(w.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract ``scale * B A`` from the base weight again (exact in fp32; in bf16/fp16 the
        round trip loses the low bits of ``W``, as in PEFT). A no-op if not merged."""
        if self.merged:
            w = self.base_layer.weight
            w.copy_((w.float() - self.delta_weight().float()).to(w.dtype))
            self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, scale={self.scale:g}, merged={self.merged}"


def _is_quantized(base: nn.Module) -> bool:
    """A quantized frozen base (QLoRA's ``NF4Linear``), duck-typed (nf4.py imports this module): it
    stores packed codes and gives its weight back with ``dequantize(dtype)``."""
    return callable(getattr(base, "dequantize", None)) and isinstance(getattr(base, "packed", None), torch.Tensor)


def _frozen_weight(base: nn.Module):
    """What the frozen matmuls below take as ``weight``: a plain base's weight tensor, or the
    quantized base itself (dequantized by :func:`_dense` at each use, never stored)."""
    return base.weight if type(base) is nn.Linear else base


def _dense(weight, dtype: torch.dtype) -> torch.Tensor:
    """``weight`` as a dense (out, in) tensor of ``dtype``: a plain weight cast if needed, a quantized
    base dequantized (a temporary that lives for one matmul: QLoRA keeps no full-size weight)."""
    if isinstance(weight, torch.Tensor):
        return weight.to(dtype)
    return weight.dequantize(dtype)


class _FrozenAddmm(torch.autograd.Function):
    """``c + x @ weight.T`` for a frozen ``weight``, accumulated into ``c`` in place and saving no
    tensor for backward.

    The input gradient ``dy @ weight`` needs only the weight, which the context holds as a plain
    attribute (a frozen parameter: nothing to version-check, no activation memory). Autograd's own
    ``addmm`` would save ``weight.T`` through the saved-tensor hooks, and non-reentrant activation
    checkpointing (``torch.utils.checkpoint``, early stop on) recomputes a layer's forward until
    every saved tensor is back: a layer's last op saving nothing is then not recomputed at all. In
    a Llama layer that op is down_proj's base matmul, 27% of the layer's matmul FLOPs at the 8B
    shape (d=4096, f=14336); skipping it took 8B LoRA (B4 S2048, full checkpointing) from 10,904
    to 11,814 tokens/s on an H200 (measured 2026-12-01). In place because an out-of-place
    ``addmm(c, ...)`` first copies ``c`` into a new tensor (one device copy per call: the 417
    ``Memcpy DtoD`` a step of that profile).
    """

    @staticmethod
    def forward(ctx, c: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.weight = weight                                   # (out, in), frozen (or a quantized base)
        ctx.mark_dirty(c)                                     # c (the adapter's product) is ours to overwrite
        return c.addmm_(x, _dense(weight, x.dtype).t())       # (n, out)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        dx = dy.mm(_dense(ctx.weight, dy.dtype)) if ctx.needs_input_grad[1] else None   # (n, in)
        return (dy if ctx.needs_input_grad[0] else None), dx, None


class _LoRAIn(torch.autograd.Function):
    """``xa = x @ a.T`` (n, r), the adapter's first product (``a`` may stack the ``A`` of several
    siblings). Saves ``x``; its backward gives only ``a``'s gradient: the adapter's share of ``x``'s
    gradient is added by :class:`_LoRAOut`, inside the base matmul's, so autograd sums no second
    (n, in) gradient (one add of a 64-224 MB tensor less per projection at the 8B shape, B4 S2048)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.mm(a.t())                                                     # (n, r)

    @staticmethod
    def backward(ctx, dxa: torch.Tensor):
        (x,) = ctx.saved_tensors
        return None, (dxa.t().mm(x) if ctx.needs_input_grad[1] else None)     # da: (r, in)


class _LoRAOut(torch.autograd.Function):
    """``y_i = xa_i @ bs_i.T (+ bias_i) + x @ weight_i.T`` for one or more projections of the same
    input ``x`` (frozen ``weight_i``; ``xa_i`` is member i's column block of ``xa``), saving no
    tensor for backward (see :class:`_FrozenAddmm` for why the last op of a checkpointed layer
    must save none). The small ``xa`` (n, r) and the cast adapter weights are context attributes:
    outside checkpointing's recomputation, about 57 MB for all 224 projections of the 8B shape at
    B4 S2048.

    Each output is first written by its rank-r product, then the base GEMM accumulates onto it
    (beta = 1): the read of ``y`` happens in the epilogue of a compute-bound GEMM, where the order
    "base GEMM, then a rank-r ``addmm_``" reads and writes every output once more in a
    memory-bound kernel. Backward the same way: ``dx = dxa @ a``, then ``dx += dy_i @ weight_i`` for
    each member, so siblings' input gradients are summed inside their GEMMs, not by autograd."""

    @staticmethod
    def forward(ctx, xa, x, a, *members):   # xa (n, R), x (n, in), a (R, in); members: (bs, weight, bias) each
        ctx.xa, ctx.a = xa, a
        ctx.members = [members[i:i + 3] for i in range(0, len(members), 3)]
        outs, lo = [], 0
        for bs, weight, bias in ctx.members:                                   # bs (out, r)
            xa_i = xa[:, lo:lo + bs.shape[1]]
            lo += bs.shape[1]
            y = xa_i.mm(bs.t()) if bias is None else torch.addmm(bias, xa_i, bs.t())   # (n, out)
            outs.append(y.addmm_(x, _dense(weight, x.dtype).t()))
        return tuple(outs)

    @staticmethod
    def backward(ctx, *dys):
        dxa = torch.cat([dy.mm(bs) for dy, (bs, _, _) in zip(dys, ctx.members)], dim=1)   # (n, R)
        grads, lo = [], 0
        for i, (dy, (bs, _, _)) in enumerate(zip(dys, ctx.members)):
            need = ctx.needs_input_grad[3 + 3 * i]
            grads += [dy.t().mm(ctx.xa[:, lo:lo + bs.shape[1]]) if need else None, None, None]   # dbs (out, r)
            lo += bs.shape[1]
        dx = None
        if ctx.needs_input_grad[1]:
            dx = dxa.mm(ctx.a)                                                 # (n, in)
            for dy, (_, weight, _) in zip(dys, ctx.members):
                dx.addmm_(dy, _dense(weight, dy.dtype))
        return (dxa, dx, None, *grads)


def _lora_out(members: list[LoRALinear], x2: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The outputs of ``members`` (frozen plain-Linear or quantized bases, no dropout) for the same ``x2``
    (n, in): one ``_LoRAIn`` over their stacked ``A`` and one ``_LoRAOut``."""
    halves = [m._half_weights(x2.dtype) for m in members]
    a = halves[0][0] if len(halves) == 1 else torch.cat([h[0] for h in halves])   # (R, in)
    flat = []
    for m, (_, bs) in zip(members, halves):
        flat += [bs, _frozen_weight(m.base_layer), m.base_layer.bias]
    return _LoRAOut.apply(_LoRAIn.apply(x2, a), x2, a, *flat)


class SiblingGroup:
    """LoRA layers of one module that the model calls one after the other on the same input (a
    layer's q/k/v projections, its gate/up projections): the first one (the leader) computes all
    their outputs in one :func:`_lora_out` and hands the others theirs when they are called with that
    very tensor. What that saves at the 8B shape: two of the three reads of ``x`` by the rank-r
    products, two small GEMMs, and the sums of the siblings' input gradients (bench/gpu.py).

    A follower called with another input than the leader's, or not called at all before the leader
    runs again, turns the grouping off for good (e.g. a cross-attention whose k/v read another tensor): every layer
    then computes alone, as without the group. Only the training path (gradients on, no dropout)
    groups; inference calls each layer alone.
    """

    def __init__(self, members: list[LoRALinear]):
        self.members = members
        self.enabled = True
        self._pending: tuple[torch.Tensor, dict[int, torch.Tensor]] | None = None   # (x, outputs by index)

    def forward(self, layer: LoRALinear, x: torch.Tensor, x2: torch.Tensor) -> torch.Tensor | None:
        """``layer``'s (n, out) output for ``x`` (x2 = x as (n, in)), or None: compute it alone."""
        if not (self.enabled and layer.fuse_siblings):
            return None
        index = next(i for i, m in enumerate(self.members) if m is layer)
        pending = self._pending
        if index > 0:
            if pending is None:   # the leader computed alone (e.g. it has dropout): so does this one
                return None
            if pending[0] is x and index in pending[1]:
                y = pending[1].pop(index)
                if not pending[1]:
                    self._pending = None
                return y
            self._off()   # called with another input than the leader's
            return None
        if pending is not None:   # the followers did not take what the leader computed last time
            self._off()
            return None
        if not all(isinstance(m.lora_dropout, nn.Identity) and m._frozen_half_path(x) for m in self.members):
            return None
        outs = _lora_out(self.members, x2)
        self._pending = (x, dict(enumerate(outs[1:], start=1)))
        return outs[0]

    def _off(self) -> None:
        self.enabled = False
        self._pending = None


SIBLING_NAMES = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def group_siblings(model: nn.Module) -> list[SiblingGroup]:
    """Give the LoRA layers named in one of :data:`SIBLING_NAMES` under the same parent module a
    shared :class:`SiblingGroup` (at least two of them; the first name present leads). Called by
    :func:`wrap_modules`; returns the groups."""
    groups = []
    for parent in model.modules():
        for names in SIBLING_NAMES:
            members = [getattr(parent, n, None) for n in names]
            members = [m for m in members if isinstance(m, LoRALinear)]
            if len(members) >= 2:
                group = SiblingGroup(members)
                for m in members:
                    m._siblings = group
                groups.append(group)
    return groups


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """The model's ``LoRALinear`` layers by module path, in model order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def linear_names(model: nn.Module) -> list[str]:
    """Paths of the model's plain ``nn.Linear`` modules (the ones LoRA could wrap)."""
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and not isinstance(m, LoRALinear) and name
            and not _inside_lora(name)]


def _inside_lora(name: str) -> bool:
    return bool(re.search(r"(^|\.)(base_layer|lora_A|lora_B)$", name))


def matches_target(name: str, target: str) -> bool:
    """PEFT's rule for a list of target names: the module path equals ``target`` or ends with
    ``"." + target``."""
    return name == target or name.endswith("." + target)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def wrap_modules(model: nn.Module, names: list[str], config: LoRAConfig) -> list[str]:
    """Wrap exactly the ``nn.Linear`` modules at ``names`` and freeze every other parameter.

    Used by :func:`apply_lora` and by the adapter loader (which wraps the modules an adapter file
    names). Returns ``names``.
    """
    if lora_modules(model):
        raise ValueError("the model already has LoRA layers; merge_lora() it or start from the base model")
    for name in names:
        module = model.get_submodule(name)
        if not isinstance(module, nn.Linear):
            raise TypeError(f"LoRA can only wrap nn.Linear; {name} is a {type(module).__name__}")
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        layer = LoRALinear(model.get_submodule(name), config.r, config.alpha, config.dropout, config.use_rslora)
        # A new module starts in training mode; follow the model's, or an eval-mode model would
        # apply LoRA dropout at inference.
        layer.train(model.training)
        _set_module(model, name, layer)
    group_siblings(model)
    return list(names)


def apply_lora(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Wrap every ``nn.Linear`` whose path matches one of ``config.targets`` in a ``LoRALinear``.

    Every other parameter is frozen, so only the ``lora_A``/``lora_B`` weights train.

    Args:
        model: the model to adapt, modified in place.
        config: rank, scale, dropout and target names.
    Returns:
        The paths of the wrapped modules, in model order.
    Raises:
        ValueError: a target matched no ``nn.Linear`` (the message lists the Linear names that
            exist), ``config.layers`` selects no layer, or the model already has LoRA layers.
    """
    linears = linear_names(model)
    unmatched = [t for t in config.targets if not any(matches_target(n, t) for n in linears)]
    if unmatched:
        short = sorted({n.rsplit(".", 1)[-1] for n in linears})
        raise ValueError(
            f"LoRAConfig.targets {list(unmatched)} matched no nn.Linear module of "
            f"{type(model).__name__}; its Linear modules are named {short}"
            + (f" (e.g. {linears[0]})" if linears else " (it has none)"))
    names = select_layers([n for n in linears if any(matches_target(n, t) for t in config.targets)], config.layers)
    return wrap_modules(model, names, config)


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Replace each ``LoRALinear`` by a plain ``nn.Linear`` holding ``W + scale * B A``.

    The result has the base model's architecture and state-dict keys, so it saves and loads as an
    ordinary model and runs at the base model's cost. Modifies ``model`` in place.

    Returns:
        ``model``.
    """
    for name, module in lora_modules(model).items():
        module.merge()
        _set_module(model, name, module.base_layer)  # still frozen, as the base was under LoRA
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights under PEFT's key names:
    ``base_model.model.<module path>.lora_A.weight`` and ``....lora_B.weight``."""
    state = {}
    for name, module in lora_modules(model).items():
        state[f"{PEFT_PREFIX}{name}.lora_A.weight"] = module.lora_A.weight.detach().contiguous()
        state[f"{PEFT_PREFIX}{name}.lora_B.weight"] = module.lora_B.weight.detach().contiguous()
    return state
