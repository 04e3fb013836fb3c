import math

import pytest
import torch

from acculturate.train.schedule import warmup_cosine, warmup_cosine_lambda, warmup_steps_for


def test_warmup_then_cosine_hand_values():
    # 4 warm-up steps, 10 in all: warm-up 1/4..4/4, then cosine over 6 steps from 1.
    values = [warmup_cosine(s, 4, 10) for s in range(10)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0]
    assert values[4] == 1.0                                          # cosine starts at its peak
    assert values[5] == pytest.approx(0.5 * (1 + math.cos(math.pi / 6)))   # 0.9330
    assert values[7] == pytest.approx(0.5)                           # half way: 3 of 6
    assert values[9] == pytest.approx(0.5 * (1 + math.cos(5 * math.pi / 6)))   # 0.0670, not 0
    assert all(a >= b for a, b in zip(values[4:], values[5:]))


def test_min_ratio_and_no_warmup():
    assert warmup_cosine(0, 0, 5) == 1.0
    assert warmup_cosine(3, 0, 4, min_ratio=0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(0.75 * math.pi)))
    assert warmup_cosine(50, 0, 4, min_ratio=0.1) == pytest.approx(0.1)   # past the end: the floor


def test_invalid_shapes_are_named():
    with pytest.raises(ValueError, match="total_steps"):
        warmup_cosine(0, 0, 0)
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_cosine_lambda(11, 10)


def test_warmup_steps_for_rounds_up():
    assert warmup_steps_for(0.05, 100) == 5
    assert warmup_steps_for(0.05, 10) == 1
    assert warmup_steps_for(0.0, 10) == 0


def test_lambda_drives_lambdalr_step_by_step():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine_lambda(2, 6))
    lrs = []
    for _ in range(6):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([2 * warmup_cosine(s, 2, 6) for s in range(6)])
    assert lrs[:2] == [1.0, 2.0]
