import importlib.util
import json
from pathlib import Path

import pytest
import torch

from acculturate.train import TrainConfig, evaluate_loss, train
from acculturate.train.checkpoint import trainable_state

_spec = importlib.util.spec_from_file_location("resume_script", Path(__file__).with_name("resume_script.py"))
resume_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(resume_script)
tiny_model, tiny_features = resume_script.tiny_model, resume_script.tiny_features


@pytest.mark.parametrize("field, value", [("batch_size", 0), ("grad_accum", -1), ("lr", 0), ("max_steps", 0), ("min_steps", 0),
                                          ("warmup_ratio", 1.5), ("packing", "yes"), ("log_every", 0),
                                          ("max_grad_norm", -1.0)])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"TrainConfig.{field}: expected"):
        TrainConfig(**{field: value})


def capture_grads(monkeypatch):
    """Record the gradients train() clips (so the test sees exactly what the optimizer steps on)."""
    seen = []
    clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(params, max_norm, *args, **kwargs):
        params = list(params)
        seen.append([p.grad.detach().clone() for p in params])
        return clip(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    return seen


def test_grad_accum_2x4_equals_batch_8(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    # Very different target counts per example: a mean of per-micro-batch means would not match.
    feats = tiny_features(8)
    feats = [{"input_ids": f["input_ids"], "labels": [-100] * (len(f["labels"]) - 2 - i % 2 * 6) +
              f["input_ids"][-(2 + i % 2 * 6):]} for i, f in enumerate(feats)]
    seen = capture_grads(monkeypatch)
    results = []
    for name, bs, ga in [("b8", 8, 1), ("b4x2", 4, 2)]:
        model = tiny_model()
        model.train()
        config = TrainConfig(max_steps=1, batch_size=bs, grad_accum=ga, log_every=1, save_every=0)
        results.append(train(model, feats, None, config, tmp_path / name, pad_id=0, progress=False))
    assert len(seen) == 2
    for g8, g4 in zip(*seen):
        torch.testing.assert_close(g4, g8, atol=1e-6, rtol=1e-5)
    assert results[0].train_loss == pytest.approx(results[1].train_loss, rel=1e-6)


@pytest.mark.parametrize("epochs, min_steps, max_steps, steps", [(1, 5, None, 5), (2, 3, None, 4), (1, 5, 2, 2)])
def test_min_steps_repeats_a_small_dataset(tmp_path, epochs, min_steps, max_steps, steps):
    """6 examples in batches of 3: 2 steps an epoch; min_steps raises that, max_steps overrides both."""
    config = TrainConfig(epochs=epochs, min_steps=min_steps, max_steps=max_steps, batch_size=3, save_every=0)
    assert train(tiny_model(), tiny_features(6), None, config, tmp_path, pad_id=0, progress=False).steps == steps


def test_log_checkpoint_and_result_fields(tmp_path):
    model = tiny_model()
    feats = tiny_features(12)
    config = TrainConfig(epochs=2, batch_size=4, log_every=2, eval_every=3, save_every=2, lr=1e-2)
    r = train(model, feats, feats[:4], config, tmp_path, pad_id=0, progress=False)
    assert r.steps == 6 and r.resumed_from_step == 0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == r.history
    assert [row["step"] for row in rows if "loss" in row] == [2, 3, 4, 6]   # 3 for the eval
    assert [row["step"] for row in rows if "eval_loss" in row] == [3, 6]
    assert rows[-1]["eval_loss"] == pytest.approx(r.eval_loss, abs=1e-6)
    assert all(row["tokens_per_s"] > row["label_tokens_per_s"] > 0 for row in rows if "loss" in row)
    assert r.trainable_params == r.total_params == sum(p.numel() for p in model.parameters())
    assert r.peak_memory_kind == "cpu_rss_growth" and r.peak_memory_bytes >= 0
    state = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    assert state["progress"]["step"] == 6 and state["config"]["lr"] == 1e-2
    assert not model.training


def test_packing_trains_on_the_same_loss(tmp_path):
    model = tiny_model()
    feats = tiny_features(16)
    plain = evaluate_loss(model, feats, TrainConfig(batch_size=4), 0, torch.device("cpu"))
    packed_rows = __import__("acculturate.train.sft", fromlist=["prepare_rows"]).prepare_rows(
        feats, TrainConfig(packing=True, max_length=48))[0]
    assert len(packed_rows) < len(feats)
    packed = evaluate_loss(model, packed_rows, TrainConfig(batch_size=4, packing=True), 0, torch.device("cpu"))
    assert packed == pytest.approx(plain, abs=1e-5)
    r = train(model, feats, feats, TrainConfig(epochs=3, batch_size=2, packing=True, max_length=48, lr=1e-2,
                                               warmup_ratio=0.0), tmp_path, pad_id=0, progress=False)
    assert r.eval_loss < plain - 0.05


def test_resume_refuses_a_changed_config_or_data(tmp_path):
    feats = tiny_features(8)
    train(tiny_model(), feats, None, TrainConfig(max_steps=2, batch_size=4), tmp_path, pad_id=0, progress=False)
    with pytest.raises(ValueError, match=r"TrainConfig.lr was 0.0002 there and is 0.001 now"):
        train(tiny_model(), feats, None, TrainConfig(max_steps=2, batch_size=4, lr=1e-3), tmp_path,
              resume=True, pad_id=0, progress=False)
    with pytest.raises(ValueError, match="training features differ"):
        train(tiny_model(), feats[:7], None, TrainConfig(max_steps=2, batch_size=4), tmp_path,
              resume=True, pad_id=0, progress=False)
    # Only reporting fields changed, and already at the end: nothing to redo.
    r = train(tiny_model(), feats, None, TrainConfig(max_steps=2, batch_size=4, log_every=5), tmp_path,
              resume=True, pad_id=0, progress=False)
    assert r.resumed_from_step == 2 and r.steps == 2


def test_resume_without_checkpoint_starts_fresh(tmp_path):
    feats, config = tiny_features(8), TrainConfig(max_steps=3, batch_size=4, lr=1e-2)
    a, b = tiny_model(), tiny_model()
    ra = train(a, feats, None, config, tmp_path / "a", resume=True, pad_id=0, progress=False)
    train(b, feats, None, config, tmp_path / "b", pad_id=0, progress=False)
    assert ra.resumed_from_step == 0
    for (name, pa), pb in zip(trainable_state(a).items(), trainable_state(b).values()):
        assert torch.equal(pa, pb), name


def test_errors_for_untrainable_model_and_targetless_data(tmp_path):
    model = tiny_model()
    with pytest.raises(ValueError, match="none of the 1 training features has a target token"):
        train(model, [{"input_ids": [1, 2, 3], "labels": [-100, -100, -100]}], None, TrainConfig(),
              tmp_path, pad_id=0, progress=False)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter of the model requires grad"):
        train(model, tiny_features(2), None, TrainConfig(), tmp_path, pad_id=0, progress=False)


def test_bf16_model_trains_fp32_masters_and_is_returned_in_bf16(tmp_path):
    model = tiny_model().to(torch.bfloat16)
    before = {k: v.detach().clone() for k, v in trainable_state(model).items()}
    train(model, tiny_features(8), None, TrainConfig(max_steps=2, batch_size=4, lr=1e-2), tmp_path,
          pad_id=0, progress=False)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert any(not torch.equal(before[k], v) for k, v in trainable_state(model).items())
    from safetensors.torch import load_file
    assert all(t.dtype == torch.float32 for t in load_file(str(tmp_path / "checkpoint" /
                                                              "trainable.safetensors")).values())


@pytest.mark.slow
def test_training_the_last_block_lowers_the_loss_on_real_model(fresh_model, tmp_path):
    model, tok = fresh_model
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.model.layers[-1].parameters():
        p.requires_grad_(True)
    feats = []
    for q, a in [("Traditional Indonesian shadow puppetry?", "Wayang kulit."),
                 ("Kenya's long-distance running town?", "Iten."),
                 ("Brazilian festival before Lent?", "Carnaval."),
                 ("Japanese art of folding paper?", "Origami.")]:
        prompt, answer = tok(f"Q: {q}\nA:")["input_ids"], tok(f" {a}")["input_ids"] + [tok.eos_token_id]
        feats.append({"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer})
    config = TrainConfig(max_steps=6, batch_size=4, lr=1e-3, warmup_ratio=0.0, save_every=0)
    before = evaluate_loss(model, feats, config, tok.pad_token_id, torch.device("cpu"))
    r = train(model, feats, feats, config, tmp_path, pad_id=tok.pad_token_id, progress=False)
    assert r.eval_loss < before * 0.7, (before, r.eval_loss)
    assert r.trainable_params == sum(p.numel() for p in model.model.layers[-1].parameters())
    assert r.total_params > 100_000_000


@pytest.mark.gpu
def test_bf16_model_on_cuda_trains_under_autocast(tmp_path):
    model = tiny_model().to("cuda", torch.bfloat16)
    feats = tiny_features(16)
    config = TrainConfig(epochs=4, batch_size=4, lr=1e-2, warmup_ratio=0.0, save_every=0)
    before = evaluate_loss(model, feats, config, 0, torch.device("cuda"))
    r = train(model, feats, feats, config, tmp_path, pad_id=0, progress=False)
    assert r.eval_loss < before - 0.05
    assert r.peak_memory_kind == "cuda_max_allocated" and r.peak_memory_bytes > 0
    assert all(p.dtype == torch.bfloat16 and p.is_cuda for p in model.parameters())


@pytest.mark.gpu
def test_packed_training_on_cuda_uses_varlen_attention(tmp_path):
    from acculturate.models.varlen import uses_varlen_attention
    model = tiny_model().to("cuda", torch.bfloat16)
    feats = tiny_features(16)
    config = TrainConfig(epochs=4, batch_size=2, lr=1e-2, warmup_ratio=0.0, save_every=0, packing=True, max_length=64)
    before = evaluate_loss(model, feats, TrainConfig(batch_size=2), 0, torch.device("cuda"))   # unpacked
    r = train(model, feats, feats, config, tmp_path, pad_id=0, progress=False)
    assert uses_varlen_attention(model)
    assert r.eval_loss < before - 0.05


@pytest.mark.parametrize("packing", [False, True])
def test_meta_weight_scales_each_examples_share_of_the_gradient(tmp_path, monkeypatch, packing):
    """An example weighted 0 contributes nothing; the others keep their plain token-mean share:
    training on [A (weight 0), B] steps on N_B / (N_A + N_B) times the gradient of B alone."""
    torch.set_num_threads(1)
    a, b = tiny_features(2)
    targets = [sum(x != -100 for x in f["labels"][1:]) for f in (a, b)]
    seen = capture_grads(monkeypatch)
    for name, feats in [("weighted", [dict(a, weight=0.0), dict(b, weight=1.0)]), ("alone", [b])]:
        config = TrainConfig(max_steps=1, batch_size=2, log_every=1, save_every=0, packing=packing,
                             max_grad_norm=1e9)
        train(tiny_model(), feats, None, config, tmp_path / f"{name}-{packing}", pad_id=0, progress=False)
    share = targets[1] / sum(targets)
    for weighted, alone in zip(*seen):
        torch.testing.assert_close(weighted, alone * share, atol=1e-7, rtol=1e-5)
