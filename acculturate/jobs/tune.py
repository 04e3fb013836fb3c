"""`acculturate tune CONFIG`: hyperparameter search over an `acculturate train` config with Optuna.

Each trial trains the ``base`` config with some fields replaced by values the TPE sampler picks from
``search`` (any ``train.*`` or ``method.*`` field: learning rate, epochs, batch size, LoRA rank and
alpha, warm-up, the method itself), on the training split minus a validation slice, and is scored
on that validation slice (eval loss, or BLEnD answer accuracy). The base config's own test split is
never seen while searching: after the study the best trial and the default one (trial 0, the base
config as it is) are both scored on it, so the report says honestly whether tuning helped.

Pruning: every ``study.eval_every_examples`` training examples the loop computes the validation loss
and reports it to the trial (at the number of examples seen, so trials with different batch sizes are
compared after the same data); Optuna's median pruner stops trials that are worse than the median.

Storage: ``sqlite:///<run>/study.db`` by default, so a killed study resumes (``acculturate tune``
again): trials it finished are kept, a trial it was running is marked failed once its heartbeat is
stale and re-run with the same parameters, from its last training checkpoint. ``study.storage`` may
name any SQLAlchemy URL (PostgreSQL, MySQL) so several machines share one study.

Layout of ``<output_dir>/<name>/``::

    config.json    the tune configuration (a rerun with a different one is refused)
    study.db       the Optuna study (unless study.storage names another database)
    trials/<n>/    one training run per trial: config.json, train/, adapter/, result.json
    trials.json trials.md   every trial: state, value, parameters, validation and test metrics
    best.yaml      the best trial as a ready-to-run `acculturate train` config
    final.json     best vs default on the held-apart test split
    report.html    self-contained: summary, optimisation history, importances, slices, trials
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

from acculturate.config_loading import to_dict
from acculturate.io import write_json
from acculturate.jobs.common import open_run, run_dir
from acculturate.jobs.finetune import prepare_and_train, save_trained
from acculturate.jobs.tune_report import write_results
from acculturate.jobs.tune_study import (METRICS, TuneConfig, TuneData, accuracy, get_dotted, question_examples,
                                         storage_url, trial_config, trial_dir, tune_data)
from acculturate.train.hpo import assign_devices, default_workers, pruning_hook, suggest, visible_gpus

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------
# one trial


def run_trial(trial, config: TuneConfig, data: TuneData, run: Path, *, progress: bool = True) -> float:
    """Train and score one trial; returns the objective (and stores metrics as user attributes)."""
    from acculturate.models import load
    from acculturate.train import evaluate_loss
    from acculturate.train.sft import prepare_rows

    if "dir" not in trial.user_attrs:
        trial.set_user_attr("dir", trial.number)
    values = suggest(trial, config.search)
    ft = trial_config(config, values)
    per_step = ft.train.batch_size * ft.train.grad_accum
    every = config.study.eval_every_examples
    train_cfg = replace(ft.train, eval_every=every // per_step if every else 0)
    out = trial_dir(run, trial)
    write_json(out / "config.json", to_dict(ft))
    maximize = METRICS[config.objective.metric] == "maximize"
    hook = pruning_hook(trial, per_step, maximize=maximize) if config.study.pruner != "none" and every else None
    log.info("trial %d: %s", trial.number, values)

    loaded = load(ft.model.name, device=ft.model.device, dtype=ft.model.dtype)
    summary, result = prepare_and_train(loaded, ft.method, train_cfg, data.fit, out, resume=True, on_eval=hook)
    if result.eval_loss is None or not math.isfinite(result.eval_loss):
        raise RuntimeError(f"trial {trial.number}: validation loss is {result.eval_loss} (diverged?)")
    validation = {"eval_loss": result.eval_loss}
    test_rows, _ = prepare_rows(data.test_features, train_cfg)
    device = next(loaded.model.parameters()).device
    test = {"eval_loss": evaluate_loss(loaded.model, test_rows, train_cfg, loaded.tokenizer.pad_token_id, device)}
    if config.objective.metric == "accuracy":
        validation.update(accuracy(loaded.model, loaded.tokenizer, config,
                                    question_examples(data.fit.test_examples, config.objective.limit),
                                    out / "eval" / "validation.jsonl", progress))
    if ft.method.name in ("lora", "qlora", "prompt_tuning"):   # small: kept for the final check
        save_trained(loaded, ft.method, out, ft.model.name)
    row = {"number": trial.number, "params": values, "validation": validation, "test": test,
           "train": {"steps": result.steps, "wall_time_s": round(result.wall_time_s, 1),
                     "tokens_per_s": round(result.tokens_per_s, 1), "trainable_params": summary["trainable"],
                     "resumed_from_step": result.resumed_from_step}}
    for key in ("validation", "test", "train"):
        trial.set_user_attr(key, row[key])
    write_json(out / "result.json", row)
    return validation[config.objective.metric]


# ---------------------------------------------------------------------------------------------------
# the study, its workers


def open_study(config: TuneConfig, run: Path, worker: int = 0):
    """Create or load the study (the same call in every worker); quiet about experimental features."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    url = storage_url(config, run)
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = RDBStorage(url, engine_kwargs=engine, heartbeat_interval=config.study.heartbeat_s,
                             grace_period=3 * config.study.heartbeat_s,
                             heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                                 max_retry=2, inherit_intermediate_values=True))
        # constant_liar: a running trial counts as a bad result, so parallel workers spread out
        sampler = optuna.samplers.TPESampler(seed=config.study.seed + worker, constant_liar=True,
                                             n_startup_trials=config.study.startup_trials)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=config.study.prune_after_trials, n_warmup_steps=0)
              if config.study.pruner == "median" else optuna.pruners.NopPruner())
    return optuna.create_study(study_name=config.name, storage=storage, sampler=sampler, pruner=pruner,
                               direction=METRICS[config.objective.metric], load_if_exists=True)


def _count(study, *states) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


def reclaim_stale_trials(study, heartbeat_s: int) -> int:
    """Mark trials of a killed process as failed (their heartbeat stopped) and queue their retries.

    Waits up to one grace period while a RUNNING trial's heartbeat is recent: it may belong to a
    process killed a moment ago, or to a live worker elsewhere (which then keeps it).
    Returns the number of trials reclaimed.
    """
    import optuna
    from optuna.trial import TrialState

    before = _count(study, TrialState.FAIL)
    deadline = time.monotonic() + 4 * heartbeat_s
    while _count(study, TrialState.RUNNING) and time.monotonic() < deadline:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        if _count(study, TrialState.RUNNING):
            time.sleep(min(1.0, heartbeat_s))
    reclaimed = _count(study, TrialState.FAIL) - before
    if reclaimed:
        log.warning("%d trial(s) of an interrupted run will be re-run with the same parameters", reclaimed)
    return reclaimed


def run_worker(config: TuneConfig, run: Path, worker: int = 0, *, base_dir: Path | None = None,
               progress: bool = True) -> int:
    """Run trials until the study has ``n_trials`` finished ones; returns how many this worker ran."""
    from optuna.trial import TrialState

    from acculturate.models import load

    study = open_study(config, run, worker)
    data = None
    ran = 0
    while True:
        finished = _count(study, TrialState.COMPLETE, TrialState.PRUNED)
        running = _count(study, TrialState.RUNNING)
        waiting = _count(study, TrialState.WAITING)   # the default trial, or re-runs of killed ones
        if finished >= config.study.n_trials or (not waiting and finished + running >= config.study.n_trials):
            return ran
        if data is None:   # tokenize once per worker (the tokenizer is the base model's)
            data = tune_data(config, load(config.base.model.name, device="cpu").tokenizer, base_dir)
        study.optimize(lambda t: run_trial(t, config, data, run, progress=progress), n_trials=1, catch=())
        ran += 1


def worker_env(workers: int, environ: dict[str, str] | None = None, device_count: int | None = None) -> list[dict]:
    """One environment per worker: its own GPU (``CUDA_VISIBLE_DEVICES``) when there are GPUs, and an
    even share of the CPU threads otherwise."""
    environ = dict(os.environ if environ is None else environ)
    if device_count is None:
        import torch

        device_count = torch.cuda.device_count()
    gpus = visible_gpus(environ, device_count)
    envs = []
    for gpu in assign_devices(workers, gpus):
        env = dict(environ)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        if "OMP_NUM_THREADS" not in environ:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
        envs.append(env)
    return envs


def run_tune(config: TuneConfig, *, workers: int | None = None, overwrite: bool = False,
             base_dir: Path | None = None, progress: bool = True) -> dict:
    """Run (or continue) the study, then write ``trials.*``, ``best.yaml``, ``final.json``, ``report.html``.

    Args:
        workers: worker processes sharing the study; default one per GPU, or 1 on a CPU machine
            (which runs in this process).
    Returns:
        the summary also written to ``results.json``.
    """
    import torch

    run = run_dir(config.output_dir, config.name)
    _allow_more_trials(run, config)
    open_run(config, overwrite)
    study = open_study(config, run)
    if config.study.include_default and not any(t.user_attrs.get("default") for t in study.get_trials(deepcopy=False)):
        study.enqueue_trial({k: get_dotted(to_dict(config.base), k) for k in config.search}, user_attrs={"default": True})
    reclaim_stale_trials(study, config.study.heartbeat_s)

    gpus = visible_gpus(dict(os.environ), torch.cuda.device_count())
    workers = workers or default_workers(gpus)
    if workers == 1 and not gpus:
        run_worker(config, run, 0, base_dir=base_dir, progress=progress)
    else:
        _run_workers(run, workers, base_dir, progress)
    return write_results(study, config, run, base_dir=base_dir, progress=progress)


def _allow_more_trials(run: Path, config: TuneConfig) -> None:
    """A study may be continued with a different ``study.n_trials`` (run more, or stop sooner): the
    saved config is updated so ``check_run_dir`` only refuses real changes."""
    saved = run / "config.json"
    if saved.exists():
        old = json.loads(saved.read_text())
        if isinstance(old.get("study"), dict) and old["study"].get("n_trials") != config.study.n_trials:
            old["study"]["n_trials"] = config.study.n_trials
            write_json(saved, old)


def _run_workers(run: Path, workers: int, base_dir: Path | None, progress: bool) -> None:
    """Start ``workers`` processes (``python -m acculturate.jobs.tune RUN --worker K``), wait for all."""
    procs = []
    for k, env in enumerate(worker_env(workers)):
        cmd = [sys.executable, "-m", "acculturate.jobs.tune", str(run), "--worker", str(k)]
        if base_dir:
            cmd += ["--base-dir", str(base_dir)]
        if not progress:
            cmd.append("--no-progress")
        log.info("worker %d: %s (CUDA_VISIBLE_DEVICES=%s)", k, " ".join(cmd), env.get("CUDA_VISIBLE_DEVICES", "unset"))
        procs.append(subprocess.Popen(cmd, env=env))
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        raise
    if any(codes):
        raise RuntimeError(f"tune workers exited with codes {codes}; see the log above. Rerun to continue "
                           f"the study in {run}")


def _main(argv: list[str] | None = None) -> int:
    """A worker process: reads ``<run>/config.json`` and runs trials of its study."""
    import argparse

    from acculturate.config_loading import load_yaml

    p = argparse.ArgumentParser(prog="python -m acculturate.jobs.tune")
    p.add_argument("run_dir")
    p.add_argument("--worker", type=int, default=0)
    p.add_argument("--base-dir")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(levelname)s worker{args.worker} %(name)s: %(message)s")
    run = Path(args.run_dir)
    config = load_yaml(TuneConfig, run / "config.json")   # JSON is YAML
    run_worker(config, run, args.worker, base_dir=Path(args.base_dir) if args.base_dir else None,
               progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
