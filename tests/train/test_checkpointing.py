"""Activation checkpointing: the policies give the same loss and gradients as none, auto chooses by
the memory estimate, and a run that cannot fit fails before its first step naming the setting."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch

from acculturate.adapters import LoRAConfig, apply_lora
from acculturate.train import TrainConfig, train
from acculturate.train import checkpointing
from acculturate.train.loss import loss_sum

_spec = importlib.util.spec_from_file_location("resume_script", Path(__file__).with_name("resume_script.py"))
resume_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(resume_script)
tiny_model, tiny_features = resume_script.tiny_model, resume_script.tiny_features

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def loss_and_grads(model, policy: str, batch: dict, device: torch.device, amp_dtype=None, offload: bool = False):
    model.train()
    checkpointing.apply(model, policy, offload=offload)
    try:
        total, n = loss_sum(model, batch, device, amp_dtype)
        (total / n).backward()
    finally:
        checkpointing.remove(model, policy)
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return (total / n).item(), grads


def _batch(vocab: int, rows: int, length: int, device) -> dict:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, vocab, (rows, length), generator=g).to(device)
    return {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}


@pytest.mark.parametrize("policy", ["mlp", "full", 1])
def test_policies_equal_no_checkpointing_on_cpu(policy):
    model = tiny_model()
    apply_lora(model, LoRAConfig(r=4, alpha=8, dropout=0.0, targets=TARGETS))
    for p in model.parameters():   # non-zero B, so LoRA's gradients are not all zero for A
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.02)
    batch = _batch(97, 3, 17, torch.device("cpu"))
    ref_loss, ref = loss_and_grads(model, "off", batch, torch.device("cpu"))
    loss, grads = loss_and_grads(model, policy, batch, torch.device("cpu"))
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    assert ref.keys() == grads.keys() and len(ref) > 0
    for name in ref:
        torch.testing.assert_close(grads[name], ref[name], rtol=1e-5, atol=1e-7)


def test_auto_chooses_by_the_estimate_and_refuses_what_cannot_fit():
    model = tiny_model()   # 2 layers
    c, cpu = model.config, torch.device("cpu")
    per = {p: checkpointing.activation_bytes(c, 1, p) for p in ("off", "mlp", "full", 1)}
    # The top layer unchecked costs no more than full's one recomputed layer (minus its kept input).
    assert per["off"] > per["mlp"] > per["full"] > per[1]
    assert checkpointing.activation_bytes(c, 1, 2) == per["full"] and checkpointing.activation_bytes(c, 1, 0) == per["off"]
    free = 10 ** 9
    fits = lambda policy: int(0.85 * free / per[policy])  # noqa: E731  tokens that fit under policy
    assert checkpointing.plan(model, "auto", fits("off"), cpu, free_bytes=free).policy == "off"
    assert checkpointing.plan(model, "auto", fits(1), cpu, free_bytes=free).policy == 1
    with pytest.raises(ValueError, match="train.batch_size or train.max_length"):
        checkpointing.plan(model, "auto", 2 * fits(1), cpu, free_bytes=free)
    with pytest.raises(ValueError, match="set train.activation_checkpointing to 1"):
        checkpointing.plan(model, "off", fits(1), cpu, free_bytes=free)
    with pytest.raises(ValueError, match="3 layers to checkpoint, but the model has 2"):
        checkpointing.plan(model, 3, 10, cpu)
    # Without a budget (the CPU): auto is off, an explicit policy is applied as asked.
    assert checkpointing.plan(model, "auto", 10 ** 9, cpu).policy == "off"
    assert checkpointing.plan(model, "full", 10 ** 9, cpu).policy == "full"
    assert checkpointing.plan(model, 2, 10 ** 9, cpu).policy == "full"   # every layer: full
    with pytest.raises(ValueError, match="TrainConfig.activation_checkpointing: expected one of"):
        TrainConfig(activation_checkpointing="some")
    with pytest.raises(ValueError, match="TrainConfig.activation_checkpointing: expected one of"):
        TrainConfig(activation_checkpointing=-1)
    assert TrainConfig(activation_checkpointing="30").activation_checkpointing == 30   # as --set gives it
    with pytest.raises(ValueError, match="TrainConfig.memory_budget_gib"):
        TrainConfig(memory_budget_gib=0)


class _Shaped(torch.nn.Module):
    """Only what plan() reads: an HF-like config and the trainable parameters (LoRA r16 at 8B: 42M)."""

    def __init__(self, **shape):
        super().__init__()
        from types import SimpleNamespace

        self.config = SimpleNamespace(**shape)
        self.lora = torch.nn.Parameter(torch.zeros(0))
        self.trainable = 41_943_040


def test_auto_checkpoints_the_fewest_layers_that_fit_the_budget(monkeypatch):
    """At the Llama-3.1-8B shape, B4 x 2048: auto takes the fewest checkpointed layers (from the
    bottom) whose estimate fits 90% of the budget, for any budget between off and full; a 20 GiB
    card (5 GiB free after the 15 GiB of weights) gets 31 of 32 layers checkpointed."""
    model = _Shaped(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                    num_key_value_heads=8)
    monkeypatch.setattr(checkpointing, "_optimizer_bytes", lambda m: 12 * m.trainable)
    cpu, tokens, optimizer = torch.device("cpu"), 4 * 2048, 12 * model.trainable
    need = lambda p: checkpointing.activation_bytes(model.config, tokens, p)  # noqa: E731
    for n in (1, 8, 16, 30, 31):
        free = int(need(n) / 0.9) + optimizer + 1
        chosen = checkpointing.plan(model, "auto", tokens, cpu, free_bytes=free)
        assert chosen.policy == n and chosen.activation_bytes == need(n)
        assert need(n - 1) > 0.9 * (free - optimizer)   # one layer fewer would not fit
    assert checkpointing.plan(model, "auto", tokens, cpu, free_bytes=5 * 2 ** 30).policy == 31
    assert checkpointing.plan(model, "auto", tokens, cpu, free_bytes=80 * 2 ** 30).policy == "off"
    assert checkpointing.recompute_cost(model.config, "mlp") == pytest.approx(32 * 14336 / (14336 + 4096 + 1024))


def test_offloaded_inputs_let_auto_leave_more_layers_unchecked(monkeypatch):
    """With the checkpointed layers' inputs in host memory only two of them count (the one being
    recomputed, the one coming back), so the same 20 GiB card gets 30 of 32 layers checkpointed,
    not 31; on the CPU the setting is refused, naming it."""
    model = _Shaped(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                    num_key_value_heads=8)
    monkeypatch.setattr(checkpointing, "_optimizer_bytes", lambda m: 12 * m.trainable)
    cuda, tokens = torch.device("cuda"), 4 * 2048   # a device object only: free_bytes is given
    input_bytes = int(2 * 1.25 * 4096 * tokens)     # one layer's input in the estimate
    for policy in ("full", 31, 16):
        kept = 32 if policy == "full" else policy
        saved = checkpointing.activation_bytes(model.config, tokens, policy) - \
            checkpointing.activation_bytes(model.config, tokens, policy, offload=True)
        assert saved == (kept - 2) * input_bytes
    assert checkpointing.plan(model, "auto", tokens, cuda, free_bytes=5 * 2 ** 30).policy == 31
    assert checkpointing.plan(model, "auto", tokens, cuda, free_bytes=5 * 2 ** 30, offload=True).policy == 30
    with pytest.raises(ValueError, match="train.offload_checkpointed_inputs"):
        checkpointing.plan(model, "auto", tokens, torch.device("cpu"), offload=True)
    with pytest.raises(ValueError, match="TrainConfig.offload_checkpointed_inputs"):
        TrainConfig(offload_checkpointed_inputs="yes")


def test_train_reports_the_policy_and_leaves_the_model_unwrapped(tmp_path):
    model = tiny_model()
    config = TrainConfig(max_steps=2, batch_size=4, log_every=1, save_every=0, activation_checkpointing="mlp")
    result = train(model, tiny_features(8), None, config, tmp_path, pad_id=0, progress=False)
    assert result.activation_checkpointing == "mlp"
    assert all("forward" not in vars(layer.mlp) for layer in model.model.layers)
    assert TrainConfig().activation_checkpointing == "auto"


# --- on a GPU ----------------------------------------------------------------------------------
def _gpu_lora_model(llama):
    """A copy of ``llama`` in bf16 with Liger's kernels and fp32 LoRA on every projection (non-zero B,
    so every adapter weight gets a gradient)."""
    from acculturate.models.kernels import use_fused_kernels

    model = copy.deepcopy(llama).to(torch.bfloat16)
    use_fused_kernels(model)
    apply_lora(model, LoRAConfig(r=8, alpha=16, dropout=0.0, targets=TARGETS))
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
            torch.nn.init.normal_(p, std=0.02)
    return model


@pytest.mark.gpu
@pytest.mark.parametrize("policy", ["mlp", "full", 2])
def test_policies_equal_no_checkpointing_on_gpu(policy, cuda_llama):
    """A Llama with LoRA on every projection, bf16 weights and fp32 adapters under autocast, Liger's
    kernels: recomputation gives the same loss and gradients (deterministic kernels)."""
    cuda = torch.device("cuda")
    model = _gpu_lora_model(cuda_llama[0])
    batch = _batch(model.config.vocab_size, 4, 256, cuda)
    ref_loss, ref = loss_and_grads(model, "off", batch, cuda, torch.bfloat16)
    loss, grads = loss_and_grads(model, policy, batch, cuda, torch.bfloat16)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    for name in ref:
        torch.testing.assert_close(grads[name], ref[name], rtol=1e-3, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("policy", ["full", 2])
def test_offloaded_inputs_give_the_same_loss_and_gradients_on_gpu(policy, cuda_llama):
    """Checkpointed layers whose inputs went to host memory and came back: the loss and gradients of
    no checkpointing, twice in a row (the host buffers are reused), and memory_allocated after the
    forward pass lower by the parked inputs."""
    cuda = torch.device("cuda")
    model = _gpu_lora_model(cuda_llama[0])
    batch = _batch(model.config.vocab_size, 8, 512, cuda)
    ref_loss, ref = loss_and_grads(model, "off", batch, cuda, torch.bfloat16)
    for _ in range(2):
        loss, grads = loss_and_grads(model, policy, batch, cuda, torch.bfloat16, offload=True)
        assert loss == pytest.approx(ref_loss, rel=1e-5)
        for name in ref:
            torch.testing.assert_close(grads[name], ref[name], rtol=1e-3, atol=1e-6)
    held = {}
    for offload in (False, True):
        model.train()
        checkpointing.apply(model, policy, offload=offload)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        total, n = loss_sum(model, batch, cuda, torch.bfloat16)
        torch.cuda.synchronize()
        held[offload] = torch.cuda.memory_allocated() - before
        (total / n).backward()
        checkpointing.remove(model, policy)
        model.zero_grad(set_to_none=True)
    checkpointed = model.config.num_hidden_layers if policy == "full" else policy
    layer_input = 8 * 512 * model.config.hidden_size * 2
    assert held[False] - held[True] >= (checkpointed - 0.5) * layer_input, (held, layer_input)


@pytest.mark.gpu
def test_auto_policy_on_gpu_reads_free_memory(cuda_llama):
    """On the GPU auto measures the free memory itself: a small micro-batch runs with checkpointing
    off; one whose activations without checkpointing exceed the free memory gets a policy that fits;
    and one that fits under no policy fails before training, naming the settings to change."""
    cuda = torch.device("cuda")
    model = copy.deepcopy(cuda_llama[0]).to(torch.bfloat16)
    apply_lora(model, LoRAConfig(r=8, alpha=16, dropout=0.0, targets=TARGETS))
    free = torch.cuda.mem_get_info(cuda)[0]
    per = {p: checkpointing.activation_bytes(model.config, 1, p) for p in ("off", "mlp", "full")}
    assert checkpointing.plan(model, "auto", 4 * 512, cuda).policy == "off"
    too_many_for_off = int(1.2 * free / per["off"])
    chosen = checkpointing.plan(model, "auto", too_many_for_off, cuda)
    assert chosen.policy not in ("off", "auto") and chosen.activation_bytes < chosen.free_bytes
    with pytest.raises(ValueError, match="train.activation_checkpointing to"):
        checkpointing.plan(model, "off", too_many_for_off, cuda)
    with pytest.raises(ValueError, match="train.batch_size"):
        checkpointing.plan(model, "auto", int(2 * free / per["full"]), cuda)


def test_summary_line_names_the_policy():
    from acculturate.cli.train import speed_line

    t = {"tokens_per_s": 13000.4, "peak_memory_bytes": 19.5 * 2 ** 30, "peak_memory_kind": "cuda_max_allocated"}
    assert speed_line({**t, "activation_checkpointing": 30}).endswith("activation checkpointing of the first 30 layers")
    assert speed_line({**t, "activation_checkpointing": 29, "checkpointed_inputs_offloaded": True}).endswith(
        "of the first 29 layers, their inputs in host memory")
    assert speed_line({**t, "activation_checkpointing": "full"}) == (
        "13,000 tokens/s, peak memory 19.50 GiB (GPU max allocated, weights included), activation checkpointing full")


def test_train_command_refuses_offload_on_the_cpu_with_a_clear_error(tmp_path, capsys, tiny_model_dir):
    """`acculturate train` with offload_checkpointed_inputs on a CPU: exit 2 and one error line naming
    the setting, before any step (no traceback)."""
    import json

    from acculturate.cli import main

    rows = [{"instruction": f"Question {i}?", "output": f"Answer {i}."} for i in range(6)]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tmp_path / "offload.yaml"
    cfg.write_text(f"""
name: offload
output_dir: {tmp_path}/runs
model: {{name: {tiny_model_dir}}}
data: {{sources: [{{path: {tmp_path}/qa.jsonl}}], test_fraction: 0.0}}
method: {{name: lora, lora: {{r: 2, alpha: 4}}}}
train: {{max_steps: 1, batch_size: 2, max_length: 64, offload_checkpointed_inputs: true}}
""")
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "error: train.offload_checkpointed_inputs" in err and "Traceback" not in err, err
