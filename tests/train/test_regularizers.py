"""The forgetting controls: KL to the base, group DRO and general-data mixing (train/regularizers.py)."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from acculturate.adapters import LoRAConfig, apply_lora
from acculturate.data.batching import pad_collate
from acculturate.train import TrainConfig, train
from acculturate.train.loss import loss_sum
from acculturate.train.regularizers import (ForgettingConfig, Objective, adapters_disabled, dro_update,
                                            group_mean_losses, kl_sum, robust_loss)

_spec = importlib.util.spec_from_file_location("resume_script", Path(__file__).with_name("resume_script.py"))
resume_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(resume_script)
tiny_model, tiny_features = resume_script.tiny_model, resume_script.tiny_features


def test_kl_sum_on_hand_computed_values():
    # p_ref = softmax([0, ln 3]) = [1/4, 3/4]; p = softmax([0, 0]) = [1/2, 1/2]
    # KL(p_ref || p) = 1/4 ln(1/2) + 3/4 ln(3/2)
    ref = torch.tensor([[0.0, math.log(3)]])
    logits = torch.tensor([[0.0, 0.0]], requires_grad=True)
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    value = kl_sum(logits, ref)
    assert value.item() == pytest.approx(expected, abs=1e-7)
    # Two positions sum; identical distributions give 0 (shifted logits are the same distribution).
    both = kl_sum(torch.tensor([[0.0, 0.0], [1.0, 2.0]]), torch.tensor([[0.0, math.log(3)], [5.0, 6.0]]))
    assert both.item() == pytest.approx(expected, abs=1e-6)
    # Gradient wrt the model's logits is p - p_ref.
    value.backward()
    torch.testing.assert_close(logits.grad, torch.tensor([[0.5 - 0.25, 0.5 - 0.75]]))


def test_dro_update_and_robust_loss_on_hand_values():
    q = torch.tensor([0.5, 0.5])
    losses = torch.tensor([1.0, 2.0])
    new = dro_update(q, losses, step_size=1.0)
    e = math.e
    # q_g e^{eta L_g} normalised: [e, e^2] / (e + e^2) = [1/(1+e), e/(1+e)]
    torch.testing.assert_close(new, torch.tensor([1 / (1 + e), e / (1 + e)]))
    assert robust_loss(new, losses).item() == pytest.approx(1 / (1 + e) + 2 * e / (1 + e))
    # Equal losses leave the weights alone; an absent group (loss 0) loses weight only by normalisation.
    torch.testing.assert_close(dro_update(torch.tensor([0.2, 0.8]), torch.tensor([3.0, 3.0]), 0.5),
                               torch.tensor([0.2, 0.8]))
    q3 = dro_update(torch.tensor([1 / 3] * 3), torch.tensor([0.0, 1.0, 0.0]), 0.1)
    assert q3[1] > q3[0] == q3[2] and q3.sum().item() == pytest.approx(1.0)


def test_group_mean_losses():
    losses = torch.tensor([1.0, 3.0, 10.0, 2.0])
    groups = torch.tensor([0, 0, 2, 0])
    torch.testing.assert_close(group_mean_losses(losses, groups, 3), torch.tensor([2.0, 0.0, 10.0]))


@pytest.mark.parametrize("field, value", [("kl_weight", -1), ("general_share", 1.0), ("general_batch_size", 0),
                                          ("dro_step_size", 0), ("group_dro", "yes")])
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"ForgettingConfig.{field}"):
        ForgettingConfig(**{field: value})


def test_general_rows_per_batch():
    assert ForgettingConfig(general_share=0.25).general_rows_per_batch(6) == 2     # 2 of 8 rows
    assert ForgettingConfig(general_share=0.01).general_rows_per_batch(4) == 1     # at least one
    assert ForgettingConfig(kl_weight=1.0, general_batch_size=3).general_rows_per_batch(8) == 3
    assert ForgettingConfig().general_rows_per_batch(8) == 0


def test_adapters_disabled_gives_the_base_logits():
    model = tiny_model().eval()
    ids = torch.tensor([[5, 9, 11, 40]])
    base = model(ids).logits
    apply_lora(model, LoRAConfig(r=2, alpha=4, dropout=0.1, targets=("q_proj", "down_proj")))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    model.train()
    assert not torch.allclose(model.eval()(ids).logits, base)
    model.train()
    with adapters_disabled(model):
        assert not model.training
        torch.testing.assert_close(model(ids).logits, base, rtol=0, atol=0)
    assert model.training   # restored, and the adapter is back
    assert not torch.allclose(model.eval()(ids).logits, base)


def test_inactive_objective_matches_the_plain_loss_gradients():
    # DRO with one group and no general data is the token-mean loss: the same gradients.
    feats = [dict(f, group="a") for f in tiny_features(4)]
    batch = pad_collate(feats, 0)
    grads = []
    for objective in (None, Objective(ForgettingConfig(group_dro=True), groups=["a"])):
        model = tiny_model()
        model.zero_grad()
        if objective is None:
            s, n = loss_sum(model, batch, torch.device("cpu"))
            (s / n).backward()
        else:
            n = int((batch["labels"][:, 1:] != -100).sum())
            batch["group"] = ["a"] * len(feats)
            objective.start_step(0, [feats])
            objective.backward(model, batch, n, 0, 1, torch.device("cpu"))
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_kl_term_is_zero_at_start_and_pulls_towards_the_base(tmp_path):
    # A LoRA with B = 0 is the base: the KL is 0 at step 1 and positive once the adapter moved.
    model = tiny_model()
    apply_lora(model, LoRAConfig(r=4, alpha=8, dropout=0.0, targets=("q_proj", "v_proj", "up_proj")))
    regional = [{"input_ids": f["input_ids"], "labels": f["input_ids"], "group": "x"} for f in tiny_features(8)]
    general = tiny_features(6)
    objective = Objective(ForgettingConfig(kl_weight=1.0, general_share=0.2), general, groups=["x"])
    config = TrainConfig(max_steps=4, batch_size=4, lr=5e-2, log_every=1, save_every=0, warmup_ratio=0)
    result = train(model, regional, None, config, tmp_path, pad_id=0, progress=False, objective=objective)
    kls = [r["kl"] for r in result.history if "kl" in r]
    assert len(kls) == 4 and kls[0] == pytest.approx(0.0, abs=1e-6) and kls[-1] > 1e-5
    assert all("general_loss" in r for r in result.history if "loss" in r)


def test_group_dro_weights_follow_the_worse_group_and_resume(tmp_path):
    # Group "hard" has random targets (high loss), "easy" repeats one token: DRO upweights "hard".
    g = torch.Generator().manual_seed(0)
    easy = [{"input_ids": [3] * 12, "labels": [3] * 12, "group": "easy"} for _ in range(4)]
    hard = [{"input_ids": (ids := torch.randint(1, 97, (12,), generator=g).tolist()), "labels": ids, "group": "hard"}
            for _ in range(4)]
    cfg = ForgettingConfig(group_dro=True, dro_step_size=0.5)
    config = TrainConfig(max_steps=3, batch_size=8, lr=1e-3, log_every=1, save_every=1)
    objective = Objective(cfg, groups=["easy", "hard"])
    result = train(tiny_model(), easy + hard, None, config, tmp_path / "a", pad_id=0, progress=False,
                   objective=objective)
    weights = result.history[-1]["dro_weights"]
    assert weights["hard"] > 0.5 > weights["easy"]
    # The weights are saved in the checkpoint and restored on resume.
    resumed = Objective(cfg, groups=["easy", "hard"])
    train(tiny_model(), easy + hard, None, config, tmp_path / "a", pad_id=0, progress=False,
          objective=resumed, resume=True)
    assert [round(float(w), 4) for w in resumed.weights] == [weights["easy"], weights["hard"]]


def test_objective_needs_general_data_for_kl():
    with pytest.raises(ValueError, match="needs general data"):
        Objective(ForgettingConfig(kl_weight=0.5), [])


def test_mixing_averages_regional_and_general_tokens_together():
    regional = tiny_features(3)
    general = tiny_features(10)[5:]
    objective = Objective(ForgettingConfig(general_share=0.5), general)
    objective.start_step(0, [regional])
    drawn = [objective.general[i] for i in objective._step_general[0]]
    assert len(drawn) == 3                                    # half of the mixed batch
    grads = []
    for use_objective in (False, True):
        model = tiny_model()
        batch = pad_collate(regional, 0)
        n = int((batch["labels"][:, 1:] != -100).sum())
        if use_objective:
            objective.backward(model, batch, n, 0, 1, torch.device("cpu"))
        else:
            s_r, n_r = loss_sum(model, batch, torch.device("cpu"))
            s_g, n_g = loss_sum(model, pad_collate(drawn, 0), torch.device("cpu"))
            ((s_r + s_g) / (n_r + n_g)).backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_kl_term_with_prompt_tuning_keeps_the_model_nearer_the_frozen_reference(tmp_path):
    """Prompt tuning has no adapter to switch off, so the KL term compares against a frozen copy made
    before the soft prompt (as jobs.finetune does). The virtual positions are stripped from the
    logits, so the shapes match, and the term works: the final KL to the base on general data falls
    with its weight."""
    from acculturate.adapters.prompt_tuning import PromptTuningConfig, apply_prompt_tuning
    from acculturate.train.regularizers import frozen_reference, target_logits

    general = tiny_features(6)
    regional = [{"input_ids": f["input_ids"], "labels": f["input_ids"]} for f in tiny_features(8)]
    batch = pad_collate(general, 0)
    final = {}
    for weight in (0.0, 20.0):
        model = tiny_model()
        reference = frozen_reference(model)
        apply_prompt_tuning(model, PromptTuningConfig(num_virtual_tokens=4))
        for name, p in model.named_parameters():
            p.requires_grad_("prompt_embeddings" in name)
        objective = (Objective(ForgettingConfig(kl_weight=weight, general_batch_size=3), general, reference=reference)
                     if weight else None)
        config = TrainConfig(max_steps=6, batch_size=4, lr=5e-2, log_every=1, save_every=0, warmup_ratio=0)
        result = train(model, regional, None, config, tmp_path / str(weight), pad_id=0, progress=False,
                       objective=objective)
        if weight:
            kls = [r["kl"] for r in result.history if "kl" in r]
            assert len(kls) == 6 and all(math.isfinite(k) and k >= 0 for k in kls)
        with torch.no_grad():
            final[weight] = float(kl_sum(target_logits(model, batch, torch.device("cpu"))[0],
                                         target_logits(reference, batch, torch.device("cpu"))[0]))
    assert final[0.0] > 0.05                  # prompt tuning alone moves the model off the base
    assert final[20.0] < 0.5 * final[0.0]     # the KL term holds it near the base
