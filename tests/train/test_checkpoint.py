import importlib.util
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from acculturate.train.checkpoint import (CheckpointError, find_checkpoint, load_checkpoint, save_checkpoint,
                                          trainable_state)

_spec = importlib.util.spec_from_file_location("resume_script", Path(__file__).with_name("resume_script.py"))
resume_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(resume_script)


def setup(model, lr=0.1):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    return opt, sched


def one_step(model, opt, sched):
    ids = torch.arange(1, 9).unsqueeze(0)
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()


def test_round_trip_restores_weights_optimizer_scheduler_and_rng(tmp_path):
    model = resume_script.tiny_model()
    for p in model.model.layers[0].parameters():   # a frozen part: it must not be saved
        p.requires_grad_(False)
    opt, sched = setup(model)
    one_step(model, opt, sched)
    one_step(model, opt, sched)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    path = save_checkpoint(tmp_path / "ckpt", model=model, optimizer=opt, scheduler=sched,
                           progress={"step": 2}, config={"lr": 0.1}, metrics=[{"step": 1, "loss": 4.0}])
    expected_draws = (random.random(), np.random.rand(), torch.rand(1).item())
    one_step(model, opt, sched)   # what the saved run does next
    expected = {k: v.detach().clone() for k, v in trainable_state(model).items()}

    other = resume_script.tiny_model()    # same init; trained differently below, then restored
    for p in other.model.layers[0].parameters():
        p.requires_grad_(False)
    opt2, sched2 = setup(other)
    one_step(other, opt2, sched2)
    ckpt = load_checkpoint(path, model=other, optimizer=opt2, scheduler=sched2)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected_draws
    assert ckpt.progress == {"step": 2} and ckpt.config == {"lr": 0.1} and ckpt.metrics[0]["loss"] == 4.0
    assert sched2.last_epoch == 2
    one_step(other, opt2, sched2)
    for name, value in trainable_state(other).items():
        assert torch.equal(value, expected[name]), name
    from safetensors.torch import load_file
    saved = load_file(str(path / "trainable.safetensors"))
    assert not any(k.startswith("model.layers.0.") for k in saved)


def test_mismatched_model_is_named(tmp_path):
    model = resume_script.tiny_model()
    opt, sched = setup(model)
    save_checkpoint(tmp_path / "c", model=model, optimizer=opt, scheduler=sched, progress={}, config={}, metrics=[])
    other = resume_script.tiny_model()
    other.lm_head.weight.requires_grad_(False)
    opt2, sched2 = setup(other)
    with pytest.raises(CheckpointError, match="unexpected \\['lm_head.weight'\\]"):
        load_checkpoint(tmp_path / "c", model=other, optimizer=opt2, scheduler=sched2)
    (tmp_path / "c" / "trainer_state.pt").unlink()
    with pytest.raises(CheckpointError, match="has no trainer_state.pt"):
        load_checkpoint(tmp_path / "c", model=model, optimizer=opt, scheduler=sched)


def test_find_checkpoint_falls_back_to_the_swap_backup(tmp_path):
    model = resume_script.tiny_model()
    opt, sched = setup(model)
    save_checkpoint(tmp_path / "checkpoint", model=model, optimizer=opt, scheduler=sched,
                    progress={}, config={}, metrics=[])
    assert find_checkpoint(tmp_path / "checkpoint") == tmp_path / "checkpoint"
    # A kill between atomic_dir's two renames leaves only the renamed old directory.
    (tmp_path / "checkpoint").rename(tmp_path / ".checkpoint.old")
    assert find_checkpoint(tmp_path / "checkpoint") == tmp_path / ".checkpoint.old"
    assert find_checkpoint(tmp_path / "nothing") is None
