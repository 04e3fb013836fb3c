"""Online learning, end to end, with a simulated user: serve -> feedback -> learn -> hot-swap, repeated.

A real server (uvicorn on 127.0.0.1, the same app `acculturate serve` runs) serves the adapter
``online`` (``v0`` = the base model's answers). Each round a simulated user from ``simulate.region``
asks new everyday questions about home without naming it, judges each answer by its rule
(acculturate/feedback/simulated.py) and posts the judgement to /v1/feedback; a fixed probe set is
answered greedily and scored but never judged into the store. Then POST /admin/learn runs a guarded
learning round in the server's background thread and hot-swaps the accepted version in.

Writes ``results.json``, ``results.md`` (the table) and ``reward.png`` (the plot) under ``--out``.

    python examples/online_learning/simulate.py --out runs/online-demo
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
TOKEN = "simulation-admin-token"


class Server:
    """``with Server(app) as url``: uvicorn on a free loopback port in a thread."""

    def __init__(self, app):
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        # A long keep-alive: while a round trains, the client's pooled connections sit idle for minutes,
        # and with uvicorn's default 5 s the server closes them under a request (a reset seen in a real run).
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_keep_alive=3600))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self.url

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(60)
        self.sock.close()


def ask(client: httpx.Client, model: str, question: str, temperature: float, max_tokens: int) -> dict:
    r = client.post("/v1/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": question}],
        "temperature": temperature, "max_tokens": max_tokens})
    r.raise_for_status()
    body = r.json()
    return {"id": body["id"], "answer": body["choices"][0]["message"]["content"],
            "version": body["system_fingerprint"]}


def serve_all(client, model, questions, temperature, max_tokens) -> list[dict]:
    """Every question at once, so the server batches them (as concurrent users would be)."""
    with ThreadPoolExecutor(max_workers=len(questions) or 1) as pool:
        return list(pool.map(lambda q: ask(client, model, q.text, temperature, max_tokens), questions))


def learn(client) -> dict:
    admin = {"Authorization": f"Bearer {TOKEN}"}
    client.post("/admin/learn", headers=admin).raise_for_status()
    while True:
        try:
            status = client.get("/admin/learn", headers=admin).json()
        except httpx.TransportError:   # a dropped idle connection: polling is safe to repeat
            time.sleep(1.0)
            continue
        if status["state"] != "running":
            return status
        time.sleep(1.0)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["round"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(x, [r["served_reward"] for r in rows], "o-", label="served answers (judged, new questions)")
    ax.plot(x, [r["probe_reward"] for r in rows], "s--", label="probe answers (greedy, never judged)")
    for r in rows:
        ax.annotate(r["version"].split("@")[-1], (r["round"], r["served_reward"]), textcoords="offset points",
                    xytext=(0, 7), ha="center", fontsize=8)
    ax.set_xlabel("round (version served)")
    ax.set_ylabel("mean reward of the simulated user (+1 / -1)")
    ax.set_ylim(-1.1, 1.1)
    ax.set_xticks(x)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(rows: list[dict]) -> str:
    lines = ["| round | version served | served reward | probe reward | region correct (served) | "
             "round result | guard blend acc. (parent -> candidate) | learn time (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        g = r.get("guard") or {}
        blend = (f"{g['parent'].get('blend_accuracy', float('nan')):.3f} -> {g['candidate'].get('blend_accuracy', float('nan')):.3f}"
                 if g else "")
        lines.append(f"| {r['round']} | {r['version']} | {r['served_reward']:+.3f} | {r['probe_reward']:+.3f} | "
                     f"{r['served_correct']:.3f} | {r.get('learn', '')} | {blend} | {r.get('learn_seconds', '')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(HERE / "config.yaml"), help="a LearnConfig YAML")
    parser.add_argument("--out", default="runs/online-demo", help="output folder (replaced)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    args = parser.parse_args(argv)

    from acculturate.config_loading import load_yaml
    from acculturate.data import is_correct
    from acculturate.feedback.simulated import SimulatedUser, mentions
    from acculturate.jobs.learn import LearnConfig
    from acculturate.serve import ServeConfig, create_app

    started = time.perf_counter()
    config = load_yaml(LearnConfig, args.config, args.set)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    config.versions_dir, config.rounds_dir = str(out / "versions"), str(out / "rounds")
    config.progress = False
    sim = config.simulate
    user: SimulatedUser = sim.user()
    asked, probe = user.split(sim.probe_questions)
    needed = sim.questions_per_round * (sim.rounds + 1)
    if len(asked) < needed:
        raise SystemExit(f"{sim.region} has {len(asked)} questions to ask; {sim.rounds + 1} rounds of "
                         f"{sim.questions_per_round} need {needed}")

    serve_config = ServeConfig(model=config.model, db=str(out / "feedback.db"), admin_token=TOKEN,
                               max_batch_size=max(16, sim.questions_per_round), max_n=1,
                               rate_limit_per_minute=0)   # one simulated user asks in bursts on purpose
    app = create_app(serve_config, learn=config)
    rows = []
    with Server(app) as url, httpx.Client(base_url=url, timeout=600) as client:
        print(f"serving on {url}; simulated user: {sim.region}, rule {sim.rule}", flush=True)
        for r in range(sim.rounds + 1):
            t0 = time.perf_counter()
            questions = asked[r * sim.questions_per_round:(r + 1) * sim.questions_per_round]
            served = serve_all(client, config.name, questions, sim.temperature, sim.max_tokens)
            rewards, correct, kinds = [], [], {}
            for q, s in zip(questions, served):
                rewards.append(user.reward(q.text, s["answer"]))
                correct.append(is_correct(s["answer"], q.answers))   # BLEnD's answers for the region
                kind, text = user.judge(q.text, s["answer"])
                kinds[kind] = kinds.get(kind, 0) + 1
                body = {"completion_id": s["id"], "kind": kind, "region": sim.region}
                if text is not None:
                    body["corrected_text"] = text
                client.post("/v1/feedback", json=body).raise_for_status()
            probes = serve_all(client, config.name, probe, 0.0, sim.max_tokens)
            versions = {s["version"] for s in served + probes}
            row = {"round": r, "version": ", ".join(sorted(versions)),
                   "served_reward": sum(rewards) / len(rewards),
                   "probe_reward": sum(user.reward(q.text, p["answer"]) for q, p in zip(probe, probes)) / len(probe),
                   "served_correct": sum(correct) / len(correct),
                   "probe_mentions": sum(mentions(p["answer"], user.terms) for p in probes) / len(probe),
                   "feedback": kinds, "serve_seconds": round(time.perf_counter() - t0, 1),
                   "examples": [{"question": q.text, "answer": s["answer"]} for q, s in list(zip(questions, served))[:3]]}
            print(f"round {r}: {row['version']} served reward {row['served_reward']:+.3f}, probe "
                  f"{row['probe_reward']:+.3f}, feedback {kinds} ({row['serve_seconds']} s)", flush=True)
            if r < sim.rounds:
                t1 = time.perf_counter()
                status = learn(client)
                row["learn_seconds"] = round(time.perf_counter() - t1, 1)
                if status["state"] == "failed":
                    raise SystemExit(f"learning round failed: {status['error']}")
                result = status["result"]
                row["learn"] = result["status"]
                if result.get("version"):
                    row["guard"] = result["version"]["guard"]
                    row["learned_version"] = result["version"]["version"]
                    row["training"] = result["version"]["training"]
                print(f"  learn: {result['status']} {row.get('learned_version', '')} in {row['learn_seconds']} s: "
                      f"{result['reason'][:160]}", flush=True)
            rows.append(row)
        versions = client.get("/admin/versions", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    seconds = time.perf_counter() - started
    title = (f"simulated {sim.region} user ({sim.rule}), SmolLM2-135M + LoRA, "
             f"{'SFT' if config.sft.enabled else ''}{'+PPO' if config.ppo.enabled else ''}")
    plot(rows, out / "reward.png", title)
    (out / "results.md").write_text(f"# {title}\n\n{table(rows)}\nTotal time: {seconds:.0f} s\n")
    (out / "results.json").write_text(json.dumps({"rounds": rows, "versions": versions, "seconds": seconds},
                                                 indent=2, default=str))
    print(table(rows))
    print(f"total {seconds:.0f} s; results in {out}/results.md, plot {out}/reward.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
