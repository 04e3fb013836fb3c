"""LoRALinear, apply_lora, merge_lora, lora_state_dict on tiny shapes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from acculturate.adapters.lora import (
    LoRAConfig, LoRALinear, apply_lora, lora_modules, lora_state_dict, merge_lora,
)


def _randomize_b(model_or_layer, seed=0):
    g = torch.Generator().manual_seed(seed)
    layers = [model_or_layer] if isinstance(model_or_layer, LoRALinear) else lora_modules(model_or_layer).values()
    with torch.no_grad():
        for layer in layers:
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.1)


def test_step_zero_equals_base():
    torch.manual_seed(0)
    base = nn.Linear(12, 10)
    x = torch.randn(3, 5, 12)
    expected = base(x)
    layer = LoRALinear(base, r=4, alpha=8, dropout=0.0)
    assert torch.equal(layer(x), expected)
    assert torch.count_nonzero(layer.lora_B.weight) == 0


def test_forward_is_base_plus_scaled_ba():
    torch.manual_seed(0)
    base = nn.Linear(12, 10)
    layer = LoRALinear(base, r=4, alpha=8, dropout=0.0)
    _randomize_b(layer)
    x = torch.randn(3, 12)
    a, b = layer.lora_A.weight, layer.lora_B.weight  # (r, in), (out, r)
    expected = base(x) + (8 / 4) * (x @ a.T @ b.T)
    torch.testing.assert_close(layer(x), expected)


def test_rslora_scale():
    layer = LoRALinear(nn.Linear(8, 8), r=16, alpha=8, use_rslora=True)
    assert layer.scale == pytest.approx(8 / math.sqrt(16))
    assert LoRAConfig(r=16, alpha=8, use_rslora=True).scale == pytest.approx(2.0)
    assert LoRAConfig(r=16, alpha=8).scale == pytest.approx(0.5)


def test_a_is_kaiming_uniform_and_base_frozen():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(256, 64), r=32, alpha=32)
    a = layer.lora_A.weight
    bound = 1 / math.sqrt(256)  # kaiming_uniform(a=sqrt(5)): sqrt(6 / ((1 + 5) * fan_in))
    assert a.abs().max() <= bound
    assert a.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)  # std of U(-b, b)
    assert not any(p.requires_grad for p in layer.base_layer.parameters())
    assert layer.lora_A.bias is None and layer.lora_B.bias is None


def test_merge_unmerge_in_place():
    torch.manual_seed(0)
    base = nn.Linear(12, 10)
    w0 = base.weight.detach().clone()
    layer = LoRALinear(base, r=4, alpha=8)
    _randomize_b(layer)
    x = torch.randn(4, 12)
    unmerged = layer(x)
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer(x), unmerged, atol=1e-5, rtol=0)
    torch.testing.assert_close(base(x), unmerged, atol=1e-5, rtol=0)  # the update lives in W now
    layer.merge()  # idempotent
    torch.testing.assert_close(layer(x), unmerged, atol=1e-5, rtol=0)
    layer.unmerge()
    torch.testing.assert_close(base.weight, w0, atol=1e-6, rtol=0)
    torch.testing.assert_close(layer(x), unmerged, atol=1e-5, rtol=0)


def test_half_precision_base_keeps_fp32_adapter():
    base = nn.Linear(8, 8).to(torch.bfloat16)
    layer = LoRALinear(base, r=2, alpha=4)
    assert layer.lora_A.weight.dtype == torch.float32
    out = layer(torch.randn(3, 8, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16


def test_half_precision_path_matches_fp32_reference():
    """LoRA in the activations' bf16 (adapter weights cast down, scale folded into addmm) computes the
    same layer and the same fp32 adapter gradients as the fp32 reference, to bf16 rounding."""
    torch.manual_seed(0)
    base = nn.Linear(64, 48, bias=True).to(torch.bfloat16)
    layer = LoRALinear(base, r=4, alpha=8)
    _randomize_b(layer)
    x = torch.randn(2, 5, 64, dtype=torch.bfloat16, requires_grad=True)
    out = layer(x)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 5, 48)
    weights = (layer.lora_A.weight, layer.lora_B.weight)
    grads = torch.autograd.grad(out.float().square().sum(), (x, *weights))
    # Reference: everything in fp32 from the same bf16 inputs and weights.
    xr = x.detach().float().requires_grad_(True)
    a, b = (w.detach().clone().requires_grad_(True) for w in weights)
    ref = base.float()(xr) + layer.scale * (xr @ a.t() @ b.t())
    ref_grads = torch.autograd.grad(ref.square().sum(), (xr, a, b))
    rel = lambda u, v: float((u.float() - v).norm() / v.norm())
    assert rel(out, ref) < 1e-2
    for got, want in zip(grads, ref_grads):
        assert got.dtype == want.dtype or got.dtype == torch.bfloat16
        assert rel(got, want) < 2e-2
    assert grads[1].dtype == torch.float32 and grads[2].dtype == torch.float32


def test_dropout_only_in_training():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(16, 16), r=4, alpha=8, dropout=0.5)
    _randomize_b(layer)
    x = torch.randn(8, 16)
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x))
    layer.train()
    assert not torch.allclose(layer(x), layer(x))


@pytest.mark.parametrize("kwargs, field", [
    ({"r": 0}, "r"), ({"r": -2}, "r"), ({"r": 2.5}, "r"), ({"r": True}, "r"),
    ({"alpha": 0}, "alpha"),
    ({"dropout": 1.0}, "dropout"), ({"dropout": -0.1}, "dropout"),
    ({"targets": ()}, "targets"), ({"targets": ("q_proj", "")}, "targets"),
])
def test_config_validation_names_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"LoRAConfig\.{field} "):
        LoRAConfig(**kwargs)


def test_config_accepts_single_target_string():
    assert LoRAConfig(targets="q_proj").targets == ("q_proj",)


def test_linear_validation_names_field():
    with pytest.raises(ValueError, match=r"LoRALinear\.r "):
        LoRALinear(nn.Linear(4, 4), r=0, alpha=1)
    with pytest.raises(TypeError, match="nn.Linear"):
        LoRALinear(nn.Conv1d(4, 4, 1), r=2, alpha=1)


def test_apply_lora_wraps_targets_and_freezes_rest(tiny_llama):
    names = apply_lora(tiny_llama, LoRAConfig(r=2, alpha=4))
    assert len(names) == 2 * 7  # 2 layers x (q, k, v, o, gate, up, down)
    assert "model.layers.0.self_attn.q_proj" in names and "lm_head" not in names
    assert list(lora_modules(tiny_llama)) == names
    trainable = {n for n, p in tiny_llama.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A.weight", "lora_B.weight")) for n in trainable)
    assert len(trainable) == 2 * len(names)


def test_apply_lora_step_zero_equals_base(tiny_llama, tiny_ids):
    expected = tiny_llama(tiny_ids).logits
    apply_lora(tiny_llama, LoRAConfig(r=4, alpha=8))
    assert torch.equal(tiny_llama(tiny_ids).logits, expected)


def test_gradients_reach_only_a_and_b(tiny_llama, tiny_ids):
    apply_lora(tiny_llama, LoRAConfig(r=4, alpha=8, dropout=0.0))
    _randomize_b(tiny_llama)  # with B = 0 the gradient of A is exactly zero
    tiny_llama(tiny_ids, labels=tiny_ids).loss.backward()
    for name, p in tiny_llama.named_parameters():
        if "lora_" in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_apply_lora_unknown_target_lists_linear_names(tiny_llama):
    with pytest.raises(ValueError, match=r"\['c_attn'\].*'down_proj'.*'q_proj'"):
        apply_lora(tiny_llama, LoRAConfig(targets=("c_attn",)))
    with pytest.raises(ValueError, match=r"\['q_prj'\]"):  # a typo next to valid names still fails
        apply_lora(tiny_llama, LoRAConfig(targets=("q_proj", "q_prj")))
    assert not lora_modules(tiny_llama)


def test_apply_lora_twice_is_refused(tiny_llama):
    apply_lora(tiny_llama, LoRAConfig(targets=("q_proj",)))
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(tiny_llama, LoRAConfig(targets=("v_proj",)))


def test_merge_lora_gives_plain_model_with_same_logits(tiny_llama, tiny_ids, make_llama):
    base_keys = set(make_llama().state_dict())
    apply_lora(tiny_llama, LoRAConfig(r=4, alpha=8))
    _randomize_b(tiny_llama)
    unmerged = tiny_llama(tiny_ids).logits
    assert not torch.allclose(unmerged, make_llama()(tiny_ids).logits)  # B != 0 changed the model
    assert merge_lora(tiny_llama) is tiny_llama
    assert not lora_modules(tiny_llama)
    assert type(tiny_llama.model.layers[0].self_attn.q_proj) is nn.Linear
    assert set(tiny_llama.state_dict()) == base_keys
    torch.testing.assert_close(tiny_llama(tiny_ids).logits, unmerged, atol=1e-5, rtol=0)


def test_lora_state_dict_uses_peft_keys(tiny_llama):
    apply_lora(tiny_llama, LoRAConfig(r=3, targets=("q_proj",)))
    state = lora_state_dict(tiny_llama)
    assert sorted(state) == [
        f"base_model.model.model.layers.{i}.self_attn.q_proj.lora_{ab}.weight" for i in (0, 1) for ab in "AB"]
    assert state["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (3, 16)
    assert state["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"].shape == (16, 3)


def test_new_layers_follow_the_models_train_mode(tiny_llama, make_llama):
    apply_lora(tiny_llama, LoRAConfig())  # tiny_llama is in eval mode: no dropout at inference
    assert not any(m.training for m in lora_modules(tiny_llama).values())
    training = make_llama().train()
    apply_lora(training, LoRAConfig())
    assert all(m.training for m in lora_modules(training).values())


@pytest.mark.parametrize("bias,dropout", [(False, 0.0), (True, 0.0), (False, 0.1)])
def test_half_precision_frozen_base_last_equals_base_first(bias, dropout):
    """The bf16 path that runs the adapter first and the frozen base matmul last (saving nothing for
    backward) computes what the base-first order does, and under non-reentrant checkpointing its
    recomputation skips the base matmul (early stop): exactly 2 n in out FLOPs fewer in backward."""
    import copy

    from torch.utils.checkpoint import checkpoint
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    base = nn.Linear(64, 96, bias=bias).to(torch.bfloat16)
    x0 = torch.randn(3, 5, 64, dtype=torch.bfloat16)
    g = torch.randn(3, 5, 96, dtype=torch.bfloat16)
    results = {}
    try:
        for order in (False, True):
            LoRALinear.frozen_base_last = order
            layer = LoRALinear(copy.deepcopy(base), 8, 16, dropout=dropout)
            torch.manual_seed(1)
            nn.init.normal_(layer.lora_A.weight)
            nn.init.normal_(layer.lora_B.weight)
            x = x0.clone().requires_grad_(True)
            torch.manual_seed(2)   # the same dropout mask in both orders
            y = checkpoint(layer, x, use_reentrant=False)
            with FlopCounterMode(display=False) as flops:
                y.backward(g)
            results[order] = (y.float(), x.grad.float(), layer.lora_A.weight.grad, layer.lora_B.weight.grad,
                              flops.get_total_flops())
    finally:
        LoRALinear.frozen_base_last = True
    for ref, new in zip(results[False][:4], results[True][:4]):
        assert (ref - new).norm() / ref.norm() < 1e-2   # bf16 rounding of a different summation order
    assert results[False][4] - results[True][4] >= 2 * 15 * 64 * 96


def _bf16_lora_llama(make_llama, bias=False, device="cpu"):
    model = make_llama(seed=3).train().to(device=device, dtype=torch.bfloat16)
    if bias:   # Qwen2-style q/k/v biases
        for layer in model.model.layers:
            for name in ("q_proj", "k_proj", "v_proj"):
                old = getattr(layer.self_attn, name)
                new = nn.Linear(old.in_features, old.out_features, bias=True, dtype=torch.bfloat16, device=device)
                with torch.no_grad():
                    new.weight.copy_(old.weight)
                    new.bias.normal_(std=0.1)
                setattr(layer.self_attn, name, new)
    apply_lora(model, LoRAConfig(r=4, alpha=8, dropout=0.0))
    _randomize_b(model)
    return model


def _loss_and_grads(model, ids, checkpointing):
    model.zero_grad(set_to_none=True)
    if checkpointing:   # non-reentrant, as the trainer runs it (recomputation with early stop)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    embeds = model.model.embed_tokens(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds).logits
    loss = logits.float().logsumexp(-1).mean()
    loss.backward()
    grads = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.requires_grad}
    return logits.float().detach(), embeds.grad.float(), grads


@pytest.mark.parametrize("bias,checkpointing,device", [
    (False, False, "cpu"), (False, True, "cpu"), (True, True, "cpu"),
    pytest.param(False, True, "cuda", marks=pytest.mark.gpu)])
def test_sibling_groups_compute_what_each_layer_alone_does(make_llama, tiny_ids, bias, checkpointing, device):
    """q/k/v and gate/up computed together (one stacked A, one input gradient) give the outputs and
    gradients of each projection computed alone, with and without activation checkpointing: both
    bf16 paths are measured against the same model in fp32, and grouping may not add error."""
    import copy

    from acculturate.adapters.lora import SiblingGroup

    model = _bf16_lora_llama(make_llama, bias, device)
    reference = copy.deepcopy(model).float()   # the same (bf16-rounded) weights, computed in fp32
    tiny_ids = tiny_ids.to(device)
    groups = {id(m._siblings): m._siblings for m in lora_modules(model).values() if m._siblings}
    assert len(groups) == 4 and all(isinstance(g, SiblingGroup) for g in groups.values())   # 2 layers x (qkv, gate/up)
    results = {"fp32": _loss_and_grads(reference, tiny_ids, checkpointing)}
    try:
        for fuse in (False, True):
            LoRALinear.fuse_siblings = fuse
            results[fuse] = _loss_and_grads(model, tiny_ids, checkpointing)
    finally:
        LoRALinear.fuse_siblings = True
    assert all(g.enabled for g in groups.values())
    rel = lambda u, v: float((u - v).norm() / v.norm())

    def errors(side):
        (y, dx, g), (y_ref, dx_ref, g_ref) = results[side], results["fp32"]
        return [rel(y, y_ref), rel(dx, dx_ref)] + [rel(g[n], g_ref[n]) for n in sorted(g_ref)]

    alone, grouped = errors(False), errors(True)
    assert results[True][2].keys() == results["fp32"][2].keys()
    assert max(alone) < 0.05, alone   # the bf16 path itself is sound
    worst = max(e / (a + 2e-3) for e, a in zip(grouped, alone))
    assert worst < 2, (alone, grouped)
    assert all(v.norm() > 0 for v in results[True][2].values())


def test_sibling_group_runs_fewer_matmuls(make_llama, tiny_ids):
    """Grouped, a layer's forward runs one rank-r product for q/k/v and one for gate/up."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountMM(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.addmm_.default)
            return func(*args, **(kwargs or {}))

    model = _bf16_lora_llama(make_llama)
    counts = {}
    try:
        for fuse in (False, True):
            LoRALinear.fuse_siblings = fuse
            with CountMM() as mode:
                model(tiny_ids)
            counts[fuse] = mode.n
    finally:
        LoRALinear.fuse_siblings = True
    assert counts[False] - counts[True] == 2 * (2 + 1)   # per layer: 3 -> 1 (q/k/v) and 2 -> 1 (gate/up)


def test_sibling_group_turns_off_when_followers_read_another_input():
    """A k/v reading another tensor than q (cross-attention) gets its own result, and the group
    stops grouping."""
    from acculturate.adapters.lora import group_siblings

    torch.manual_seed(0)
    parent = nn.Module()
    for name in ("q_proj", "k_proj", "v_proj"):
        setattr(parent, name, LoRALinear(nn.Linear(8, 6).to(torch.bfloat16), 2, 4).requires_grad_(True))
        getattr(parent, name).base_layer.requires_grad_(False)
        _randomize_b(getattr(parent, name))
    (group,) = group_siblings(parent)
    x = torch.randn(5, 8, dtype=torch.bfloat16, requires_grad=True)
    other = torch.randn(5, 8, dtype=torch.bfloat16, requires_grad=True)
    alone = {}
    try:
        LoRALinear.fuse_siblings = False
        alone = {n: getattr(parent, n)(other) for n in ("k_proj", "v_proj")}
        alone["q_proj"] = parent.q_proj(x)
    finally:
        LoRALinear.fuse_siblings = True
    q = parent.q_proj(x)
    k, v = parent.k_proj(other), parent.v_proj(other)
    assert not group.enabled
    for name, got in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
        assert torch.equal(got, alone[name])


def test_deepcopy_keeps_sibling_groups_inside_the_copy(make_llama):
    import copy

    model = _bf16_lora_llama(make_llama)
    twin = copy.deepcopy(model)
    attn = twin.model.layers[0].self_attn
    assert attn.q_proj._siblings is attn.k_proj._siblings
    assert attn.q_proj._siblings.members == [attn.q_proj, attn.k_proj, attn.v_proj]
    assert attn.q_proj._siblings is not model.model.layers[0].self_attn.q_proj._siblings


def test_sibling_groups_under_torch_compile_give_the_eager_results(make_llama, tiny_ids):
    """A user may torch.compile the model: the group's Python state (the leader's outputs handed to
    its followers) must trace to the same computation. aot_eager: Dynamo and AOTAutograd without
    Inductor's C++ compile."""
    model = _bf16_lora_llama(make_llama)

    def loss_and_grads(fn):
        model.zero_grad(set_to_none=True)
        loss = fn(tiny_ids).logits.float().logsumexp(-1).mean()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    eager = loss_and_grads(model)
    torch._dynamo.reset()
    compiled = loss_and_grads(torch.compile(model, backend="aot_eager"))
    assert torch.equal(eager[0], compiled[0])
    assert all(torch.equal(a, b) for a, b in zip(eager[1], compiled[1]))
    assert all(m._siblings.enabled for m in lora_modules(model).values() if m._siblings)


@pytest.mark.parametrize("layers, adapted", [("-1:", {1}), ((0,), {0}), ((-2, 1), {0, 1}), ("0:1", {0}), (None, {0, 1})])
def test_layers_picks_the_adapted_layers(make_llama, layers, adapted):
    names = apply_lora(make_llama(), LoRAConfig(r=2, alpha=4, layers=layers))
    assert {int(n.split(".")[2]) for n in names} == adapted and len(names) == 7 * len(adapted)


@pytest.mark.parametrize("layers, message", [((5,), r"\[5\] out of range for a model with 2 layers"),
                                             ("3:", "selects no layer"), ("a", "expected a slice")])
def test_layers_out_of_range_is_a_named_error(make_llama, layers, message):
    with pytest.raises(ValueError, match=message):
        apply_lora(make_llama(), LoRAConfig(r=2, alpha=4, layers=layers))


def test_no_backward_runs_below_the_lowest_adapted_layer(make_llama, tiny_ids):
    """Why ``layers`` makes training cheaper: layer 0's output needs no gradient, so autograd keeps
    nothing of it and its backward pass never runs."""
    model = make_llama()
    apply_lora(model, LoRAConfig(r=2, alpha=4, layers="-1:"))
    outputs = {}
    for i, layer in enumerate(model.model.layers):
        layer.register_forward_hook(lambda m, a, out, i=i: outputs.__setitem__(i, out[0] if isinstance(out, tuple) else out))
    model.train()
    model(tiny_ids).logits.sum().backward()
    assert not outputs[0].requires_grad and outputs[1].requires_grad
