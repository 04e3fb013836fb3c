"""Search-space pieces of hyperparameter search: parameters, sampling, pruning, GPU assignment."""

import json

import optuna
import pytest

from acculturate.config_loading import ConfigError, from_dict
from acculturate.train.hpo import Param, assign_devices, default_workers, pruning_hook, suggest, visible_gpus

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize("data, message", [
    ({"low": 1e-3, "high": 1e-4}, "expected low < high"),
    ({"low": 0.0, "high": 1.0, "log": True}, "log: a log-scale range needs low > 0"),
    ({"low": 1, "high": 4, "choices": [1, 2]}, "either choices or low/high"),
    ({"choices": []}, "choices: expected a non-empty list"),
    ({"choices": [4, 4]}, "each value may appear once"),
    ({"low": 1}, "both low and high"),
    ({"low": 1e-4, "high": 1e-3, "log": True, "step": 1e-4}, "step: not allowed with log"),
])
def test_param_errors_name_the_problem(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Param, data, "search.train.lr")


def test_suggest_keeps_integers_integers_and_fixed_values():
    space = {"train.epochs": from_dict(Param, {"low": 1, "high": 3}),
             "train.lr": from_dict(Param, {"low": "1e-4", "high": 1e-2, "log": True}),
             "method.name": Param(choices=["lora", "full"])}
    assert space["train.epochs"].is_int and not space["train.lr"].is_int
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        values = suggest(study.ask(), space)
        assert isinstance(values["train.epochs"], int) and 1 <= values["train.epochs"] <= 3
        assert 1e-4 <= values["train.lr"] <= 1e-2 and values["method.name"] in ("lora", "full")
    fixed = suggest(optuna.trial.FixedTrial({"train.epochs": 2, "train.lr": 5e-4, "method.name": "full"}), space)
    assert fixed == {"train.epochs": 2, "train.lr": 5e-4, "method.name": "full"}


def _study_with_a_good_trial(direction="minimize", values=(1.0, 0.9)):
    study = optuna.create_study(direction=direction, pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    dist = optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)
    study.add_trial(optuna.trial.create_trial(params={"train.lr": 1e-3}, distributions={"train.lr": dist},
                                              value=values[-1], intermediate_values={8: values[0], 16: values[1]}))
    return study


def test_pruning_hook_reports_at_examples_seen_and_prunes_a_bad_trial():
    study = _study_with_a_good_trial()
    trial = study.ask()
    hook = pruning_hook(trial, examples_per_step=4)
    with pytest.raises(optuna.TrialPruned, match="8 examples"):
        hook(2, 5.0)   # step 2 x 4 examples: compared with the good trial's value at 8 examples
    assert study.trials[-1].intermediate_values == {8: 5.0}
    good = study.ask()
    pruning_hook(good, examples_per_step=8)(1, 0.5)   # better than the median: runs on
    # a maximizing study (accuracy) gets the negated loss: a low loss is a high value
    study = _study_with_a_good_trial("maximize", values=(-1.0, -0.9))
    trial = study.ask()
    pruning_hook(trial, 4, maximize=True)(2, 0.5)
    assert study.trials[-1].intermediate_values == {8: -0.5}
    with pytest.raises(optuna.TrialPruned, match="diverged"):
        pruning_hook(study.ask(), 4)(1, float("nan"))


def test_pruning_stops_the_real_training_loop(tiny_model_dir, tmp_path):
    """A clearly bad trial (an untrained random model's loss, ~10.8, against a finished trial that
    reached 1.0 after the same 8 examples) is pruned at its first periodic eval: the loop stops."""
    from acculturate.models import load
    from acculturate.adapters import LoRAConfig, prepare_model
    from acculturate.train import TrainConfig, train

    model, tok = load(tiny_model_dir, device="cpu")
    prepare_model(model, "lora", lora=LoRAConfig(r=2, alpha=4))
    features = [{"input_ids": list(range(10, 30)), "labels": [-100] * 5 + list(range(15, 30))}] * 16
    study = _study_with_a_good_trial()
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned):
        train(model, features, features[:4], TrainConfig(max_steps=8, batch_size=4, eval_every=2, save_every=0,
                                                         log_every=1), tmp_path, pad_id=tok.pad_token_id,
              progress=False, on_eval=pruning_hook(trial, 4))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 2 and "eval_loss" in rows[-1]   # stopped right after the first eval
    assert study.trials[-1].intermediate_values.keys() == {8}


def test_one_gpu_per_worker():
    assert assign_devices(2, []) == [None, None]                       # CPU: environment untouched
    assert assign_devices(2, ["0", "1"]) == ["0", "1"]
    assert assign_devices(3, ["0", "1"]) == ["0", "1", "0"]            # more workers than GPUs: shared
    assert assign_devices(1, ["0", "1", "2", "3"]) == ["0"]
    with pytest.raises(ValueError, match="workers"):
        assign_devices(0, ["0"])
    assert visible_gpus({}, 4) == ["0", "1", "2", "3"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "3,5"}, 2) == ["3", "5"]   # the user's restriction kept
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, 0) == []
    assert default_workers([]) == 1 and default_workers(["3", "5"]) == 2


def test_worker_environments():
    from acculturate.jobs.tune import worker_env

    envs = worker_env(2, {"CUDA_VISIBLE_DEVICES": "2,7", "PATH": "/bin"}, device_count=2)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["2", "7"] and all(e["PATH"] == "/bin" for e in envs)
    cpu = worker_env(2, {"OMP_NUM_THREADS": "1"}, device_count=0)
    assert all("CUDA_VISIBLE_DEVICES" not in e and e["OMP_NUM_THREADS"] == "1" for e in cpu)
