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
    """How LoRA adapts a model.

    Attributes:
        r: rank of the update ``B A``; a few to a few dozen is typical.
        alpha: scale numerator: the update is multiplied by ``alpha / r`` (``alpha / sqrt(r)`` with
            ``use_rslora``), so changing ``r`` does not change the effective learning rate much.
        dropout: dropout probability on the LoRA branch's input during training (0 disables it).
        targets: names of the ``nn.Linear`` modules to adapt, matched against the last parts of a
            module's dotted path (``"q_proj"`` matches ``model.layers.3.self_attn.q_proj``). The
            default adapts every attention and MLP projection of Llama-style models.
        use_rslora: scale by ``alpha / sqrt(r)`` (rank-stabilized LoRA) instead of ``alpha / r``.
    """

    r: int = 16
    alpha: float = 32
    dropout: float = 0.05
    targets: tuple[str, ...] = DEFAULT_TARGETS
    use_rslora: bool = False

    def __post_init__(self):
        check_lora_numbers(self.r, self.alpha, self.dropout, owner="LoRAConfig")
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
    # base matmul first (the order before 2026-12-01 session 3), kept for bench/gpu.py's ablation.
    frozen_base_last = True

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
        base = self.base_layer
        if (half and not self.merged and self.frozen_base_last and type(base) is nn.Linear
                and base.weight.dtype == x.dtype and not base.weight.requires_grad
                and (base.bias is None or not base.bias.requires_grad)
                and not (base._forward_hooks or base._forward_pre_hooks)):
            return self._half_forward(x, None, a, b)
        out = base(x)  # (..., out)
        if self.merged:  # the update is already inside base_layer.weight
            return out
        if half and out.dtype == x.dtype:
            return self._half_forward(x, out, a, b)
        update = self.lora_B(self.lora_A(self.lora_dropout(x.to(a.dtype))))  # (..., r) -> (..., out)
        return out + (self.scale * update).to(out.dtype)

    def _half_forward(self, x: torch.Tensor, out: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor
                      ) -> torch.Tensor:
        """LoRA in the activations' half dtype: cast the tiny fp32 adapter weights (r x in, out x r)
        to ``x.dtype`` instead of casting the big activation ``x`` (tokens x in) to fp32, and fold
        the scale and the residual add into one ``addmm``. The weights stay fp32 (their gradients
        arrive through the cast), so optimizer updates keep full precision, as in PEFT.

        Why: the fp32 path writes and reads an fp32 copy of every projection's input and runs the
        two small matmuls in fp32; bench/gpu.py measures what this path buys on a GPU.

        ``out`` is None when the base is a frozen ``nn.Linear`` (see :meth:`forward`): then the
        adapter's product comes first and the base matmul last, saving nothing for backward
        (:class:`_LoRAIn` + :class:`_LoRAOut` without dropout, else :class:`_FrozenAddmm`)."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])                                        # (n, in)
        bt = (b * self.scale).to(x.dtype).t()                                  # (r, out)
        if out is None:
            base = self.base_layer
            grad = torch.is_grad_enabled() and (x2.requires_grad or a.requires_grad or b.requires_grad)
            if grad and isinstance(self.lora_dropout, nn.Identity):
                a16 = a.to(x.dtype)
                y = _LoRAOut.apply(_LoRAIn.apply(x2, a16), x2, a16, bt.t(), base.weight, base.bias)
                return y.view(*lead, y.shape[-1])
            xa = F.linear(self.lora_dropout(x2), a.to(x.dtype))                # (n, r)
            lora = torch.mm(xa, bt) if base.bias is None else torch.addmm(base.bias, xa, bt)   # (n, out)
            y = _FrozenAddmm.apply(lora, x2, base.weight) if grad else torch.addmm(lora, x2, base.weight.t())
            return y.view(*lead, y.shape[-1])
        xa = F.linear(self.lora_dropout(x2), a.to(x.dtype))                    # (n, r)
        return torch.addmm(out.reshape(-1, out.shape[-1]), xa, bt).view(*lead, out.shape[-1]).to(out.dtype)

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


class _FrozenAddmm(torch.autograd.Function):
    """``c + x @ weight.T`` for a frozen ``weight``, saving no tensor for backward.

    The input gradient ``dy @ weight`` needs only the weight, which the context holds as a plain
    attribute (a frozen parameter: nothing to version-check, no activation memory). Autograd's own
    ``addmm`` would save ``weight.T`` through the saved-tensor hooks, and non-reentrant activation
    checkpointing (``torch.utils.checkpoint``, early stop on) recomputes a layer's forward until
    every saved tensor is back: a layer's last op saving nothing is then not recomputed at all. In
    a Llama layer that op is down_proj's base matmul, 27% of the layer's matmul FLOPs at the 8B
    shape (d=4096, f=14336); skipping it took 8B LoRA (B4 S2048, full checkpointing) from 10,904
    to 11,814 tokens/s on an H200 (2026-12-01, session 3).
    """

    @staticmethod
    def forward(ctx, c: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.weight = weight                                   # (out, in), frozen
        return torch.addmm(c, x, weight.t())                  # (n, out)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        dx = dy.mm(ctx.weight.to(dy.dtype)) if ctx.needs_input_grad[1] else None   # (n, in)
        return (dy if ctx.needs_input_grad[0] else None), dx, None


class _LoRAIn(torch.autograd.Function):
    """``xa = x @ a.T`` (n, r), the adapter's first product. Saves ``x``; its backward gives only
    ``a``'s gradient: the adapter's share of ``x``'s gradient is added by :class:`_LoRAOut`, inside
    the base matmul's, so autograd sums no second (n, in) gradient (one add of a 64-224 MB tensor
    less per projection at the 8B shape, B4 S2048)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.mm(a.t())                                                     # (n, r)

    @staticmethod
    def backward(ctx, dxa: torch.Tensor):
        (x,) = ctx.saved_tensors
        return None, (dxa.t().mm(x) if ctx.needs_input_grad[1] else None)     # da: (r, in)


class _LoRAOut(torch.autograd.Function):
    """``x @ weight.T + xa @ bs.T (+ bias)`` for a frozen ``weight``, saving no tensor for backward
    (see :class:`_FrozenAddmm` for why the last op of a checkpointed layer must save none). The
    small ``xa`` (n, r) and the cast adapter weights are held as context attributes: outside
    checkpointing's recomputation, about 57 MB for all 224 projections of the 8B shape at B4 S2048.
    Backward: ``dx = dy @ weight + (dy @ bs) @ a`` as one GEMM plus an in-place rank-r update."""

    @staticmethod
    def forward(ctx, xa, x, a, bs, weight, bias):   # xa (n, r), x (n, in), a (r, in), bs (out, r)
        ctx.xa, ctx.a, ctx.bs, ctx.weight = xa, a, bs, weight
        out = x.mm(weight.t()) if bias is None else torch.addmm(bias, x, weight.t())   # (n, out)
        return out.addmm_(xa, bs.t())

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        dxa = dy.mm(ctx.bs)                                                    # (n, r)
        dbs = dy.t().mm(ctx.xa) if ctx.needs_input_grad[3] else None           # (out, r)
        dx = dy.mm(ctx.weight.to(dy.dtype)).addmm_(dxa, ctx.a) if ctx.needs_input_grad[1] else None
        return dxa, dx, None, dbs, None, None


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
            exist), or the model already has LoRA layers.
    """
    linears = linear_names(model)
    unmatched = [t for t in config.targets if not any(matches_target(n, t) for n in linears)]
    if unmatched:
        short = sorted({n.rsplit(".", 1)[-1] for n in linears})
        raise ValueError(
            f"LoRAConfig.targets {list(unmatched)} matched no nn.Linear module of "
            f"{type(model).__name__}; its Linear modules are named {short}"
            + (f" (e.g. {linears[0]})" if linears else " (it has none)"))
    names = [n for n in linears if any(matches_target(n, t) for t in config.targets)]
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
