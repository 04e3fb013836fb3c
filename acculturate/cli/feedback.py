"""`acculturate feedback | learn | reward-model | ppo`: learning from stored feedback."""

from __future__ import annotations

from pathlib import Path

from acculturate.cli.common import add_job_parser, job_config, run_job


def add_parsers(sub) -> None:
    p = sub.add_parser("feedback", help="work with the feedback store")
    actions = p.add_subparsers(dest="feedback_verb", required=True, metavar="ACTION")
    q = actions.add_parser("export", help="write rewards.jsonl and preferences.jsonl from the store")
    q.add_argument("--db", required=True, help="SQLite path or SQLAlchemy URL of the store")
    q.add_argument("--out", required=True, help="output directory")
    q.set_defaults(func=cmd_feedback_export)

    p = add_job_parser(sub, "learn", cmd_learn)
    p.add_argument("--db", default=None, help="feedback store (default: the config's db)")
    p.add_argument("--list", action="store_true", help="list the adapter versions and exit")
    p.add_argument("--rollback", metavar="VERSION", help="make an earlier accepted version current and exit")

    p = sub.add_parser("reward-model", help="train a reward model on preference pairs and feedback rewards")
    actions = p.add_subparsers(dest="reward_model_verb", required=True, metavar="ACTION")
    add_job_parser(actions, "reward-model train", cmd_reward_model_train)

    add_job_parser(sub, "ppo", cmd_ppo)


def cmd_feedback_export(args) -> int:
    from acculturate.feedback import export_feedback

    counts = export_feedback(args.db, args.out)
    print(f"wrote {counts['rewards']} reward rows to {counts['rewards_path']} and "
          f"{counts['preferences']} preference pairs to {counts['preferences_path']}")
    return 0


def cmd_learn(args) -> int:
    from acculturate.feedback.versions import VersionError, VersionStore

    config, _ = job_config(args)
    if args.db:
        config.db = args.db
    versions = VersionStore(config.versions_dir)
    try:
        if args.rollback:
            info = versions.rollback(args.rollback)
            print(f"{config.name}: serving {info.version} again (a running server picks it up with "
                  f"POST /admin/rollback)")
            return 0
        if args.list:
            table = versions.table()
            if table:
                print(table)
            return 0
    except VersionError as e:
        raise SystemExit(f"acculturate learn: error: {e}") from None
    result = run_job(args, config)
    print(f"\n{result.status}: {result.reason}")
    if result.version is not None:
        print(f"{result.version.version} (parent {result.parent}) written to {result.version.path}")
    return 0 if result.status != "failed" else 1


def cmd_reward_model_train(args) -> int:
    config, path = job_config(args)
    s = run_job(args, config, overwrite=args.restart, base_dir=path.parent)
    acc, before = s["eval_pair_accuracy"], s["eval_pair_accuracy_before"]
    if acc is not None:
        print(f"\nheld-out pair accuracy on {s['eval_pairs']} pairs: {100 * before:.1f}% (untrained) -> "
              f"{100 * acc:.1f}% after {s['steps']} steps ({s['train_wall_time_s']:.0f} s)")
    print(f"Reward model: {Path(config.output_dir) / config.name / 'reward_model'}")
    return 0


def cmd_ppo(args) -> int:
    config, path = job_config(args)
    s = run_job(args, config, overwrite=args.restart, base_dir=path.parent)
    out = Path(config.output_dir) / config.name
    print(f"\nPPO {s['steps']} steps: rollout reward {s['reward_first_steps']:.3f} (first 3 steps) -> "
          f"{s['reward_last_steps']:.3f} (last 3)")
    if s["eval_before"] and s["eval_after"]:
        print(f"held-apart greedy reward on {s['eval_prompts']} prompts: {s['eval_before']['reward_mean']:.3f} -> "
              f"{s['eval_after']['reward_mean']:.3f}")
    print(f"Adapter: {out / 'adapter'}; metrics: {out / 'metrics.jsonl'}; plot: {out / 'reward.png'}")
    return 0
