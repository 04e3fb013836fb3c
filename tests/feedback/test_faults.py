"""Faults: ``kill -9`` of a server while it streams and writes feedback, then a restart on the same
store (SQLite and PostgreSQL): every feedback row it acknowledged is there. ``kill -9`` of a process
writing adapter versions (what ``acculturate learn`` and a hot swap do): the store is left at the old
or the new version, never a half-written one, and its history stays consistent."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

KEYS = [f"fault-key-{i:02d}" for i in range(8)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def start_server(db: str, keys_file, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "acculturate", "serve", "--port", str(port), "--db", db,
                             "--api-keys-file", str(keys_file), "--set", "rate_limit_per_minute=0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        assert proc.poll() is None, "server exited"
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.2)


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)


def acknowledged_then_killed(url: str, proc: subprocess.Popen, kill_after: int) -> tuple[list[int], str]:
    """Completions, then feedback from several clients at once while a long answer streams; kill -9
    once ``kill_after`` feedback rows were acknowledged. Returns (acknowledged ids, completion id)."""
    answer = httpx.post(f"{url}/v1/completions", timeout=120, headers=auth(KEYS[0]), json={
        "model": "none", "prompt": ["Tea or coffee?", "Name a city."], "n": 4, "max_tokens": 2}).json()
    cid, choices = answer["id"], len(answer["choices"])
    acked: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()

    def stream() -> None:   # in flight when the kill comes
        try:
            with httpx.stream("POST", f"{url}/v1/chat/completions", headers=auth(KEYS[1]), timeout=60, json={
                    "model": "none", "stream": True, "max_tokens": 200,
                    "messages": [{"role": "user", "content": "Tell a long story."}]}) as r:
                for _ in r.iter_lines():
                    if stop.is_set():
                        return
        except httpx.HTTPError:
            pass

    def writer(key: str) -> None:
        kinds = ["correct_cultural", "inappropriate", "adjustment"]
        for i in range(10_000):
            if stop.is_set():
                return
            kind = kinds[i % 3]
            body = {"completion_id": cid, "choice_index": i % choices, "kind": kind, "comment": f"{key}#{i}",
                    "corrected_text": "Tea, with milk." if kind == "adjustment" else None}
            try:
                r = httpx.post(f"{url}/v1/feedback", headers=auth(key), json=body, timeout=30)
            except httpx.HTTPError:
                return
            if r.status_code == 200:
                with lock:
                    acked.append((r.json()["id"], key, body["choice_index"], kind))

    threads = [threading.Thread(target=stream)] + [threading.Thread(target=writer, args=(k,)) for k in KEYS]
    for t in threads:
        t.start()
    while len(acked) < kill_after and all(t.is_alive() for t in threads[1:]):
        time.sleep(0.01)
    kill(proc)   # mid-stream, with feedback requests in flight: no shutdown, no flush
    stop.set()
    for t in threads:
        t.join(60)
    return acked, cid


def last_per_client(acked) -> dict:
    """What must be in the store: per (client, choice) the last acknowledged judgement (later ones
    of a client replace its earlier ones)."""
    latest = {}
    for row_id, key, choice, kind in sorted(acked):
        latest[(key, choice)] = (row_id, kind)
    return latest


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_acknowledged_feedback_survives_kill_9_during_streaming_and_writes(backend, request, tmp_path):
    from acculturate.feedback import FeedbackStore
    from acculturate.serve.auth import client_id

    db = str(tmp_path / "feedback.db") if backend == "sqlite" else request.getfixturevalue("postgres_url")
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text("\n".join(KEYS))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(db, keys_file, port)
    try:
        acked, cid = acknowledged_then_killed(url, proc, kill_after=random.Random(backend).randint(40, 80))
    finally:
        kill(proc)
    assert len(acked) >= 40

    # Restart on the same store: it serves, and every acknowledged judgement (the last of each client
    # on each choice) is there with its kind.
    proc = start_server(db, keys_file, port)
    try:
        r = httpx.post(f"{url}/v1/feedback", headers=auth(KEYS[0]), timeout=30,
                       json={"completion_id": cid, "kind": "correct_cultural", "choice_index": 7})
        assert r.status_code == 200, r.text
    finally:
        kill(proc)
    store = FeedbackStore(db)
    rows = {r["id"]: r for r in store.feedback() if r["completion_id"] == cid}
    store.close()
    expected = last_per_client(acked)
    expected.pop((KEYS[0], 7), None)   # replaced just now, after the restart
    stored = {(r["client"], r["choice_index"]): r for r in rows.values()}
    # Each client's last acknowledged judgement on each choice is there, or a later one of the same
    # client replaced it (committed just before the kill, its answer lost with the connection).
    missing, newer = [], 0
    for (key, choice), (row_id, kind) in expected.items():
        row = stored.get((client_id(key), choice))
        if row is None or row["id"] < row_id or (row["id"] == row_id and row["kind"] != kind):
            missing.append((key, choice, row_id))
        newer += row is not None and row["id"] > row_id
    print(f"\n{backend}: {len(acked)} feedback writes acknowledged before kill -9, {len(expected)} judgements "
          f"expected after replacements, {len(expected) - len(missing)} found ({newer} replaced by a later "
          f"write committed before the kill)")
    assert not missing
    # One judgement per client and choice, even across the kill.
    per_client = [(r["client"], r["choice_index"]) for r in rows.values()]
    assert len(per_client) == len(set(per_client))


WRITER = textwrap.dedent("""
    import shutil, sys, time
    from pathlib import Path
    from acculturate.feedback.versions import VersionStore

    root, adapter = sys.argv[1], Path(sys.argv[2])
    store = VersionStore(root)

    def slow_copy(target):   # an adapter written in pieces, slowly: a kill lands mid-write
        target.mkdir(parents=True)
        for f in sorted(adapter.iterdir()):
            shutil.copy2(f, target / f.name)
            time.sleep(0.01)

    if store.current() is None:
        store.add(adapter, parent=None, method="init", accepted=True, reason="start")
    print("ready", flush=True)
    i = 0
    while True:
        i += 1
        current = store.current().version
        accepted = i % 3 != 0
        info = store.add(slow_copy, parent=current, method="sft", accepted=accepted, feedback_ids=[i],
                         reason="accepted: ok" if accepted else "rejected: REGRESSED",
                         feedback_cursor=i if accepted else None)
        if i % 4 == 0:   # a rollback now and then, as `acculturate learn --rollback` / POST /admin/rollback
            store.rollback(info.parent)
""")


def check_store(root, adapter) -> list[str]:
    """The version store is consistent: every listed version is complete, every parent exists, the
    current one was accepted and its adapter reads; returns the version names."""
    from safetensors.torch import load_file

    from acculturate.adapters.peft_format import read_adapter_config
    from acculturate.feedback.versions import VersionStore

    store = VersionStore(root)
    names = store.names()
    for name in names:
        info = store.get(name)   # meta.json readable
        assert info.parent is None or info.parent in names
        assert (info.adapter_dir / "adapter_config.json").is_file()
        assert sorted(p.name for p in info.adapter_dir.iterdir()) == sorted(p.name for p in adapter.iterdir())
    current = store.current()
    assert current is not None and current.accepted and current.version in names
    read_adapter_config(current.adapter_dir)
    assert load_file(str(current.adapter_dir / "adapter_model.safetensors"))
    assert [v.version for v in store.lineage(current.version)][-1] == "v0"
    return names


@pytest.mark.slow
def test_kill_9_while_writing_versions_leaves_old_or_new(tmp_path, tiny_model_dir):
    from acculturate.adapters import LoRAConfig, apply_lora, save_adapter
    from acculturate.models import load

    model, _ = load(str(tiny_model_dir), device="cpu")
    config = LoRAConfig(r=2, alpha=4, targets=("q_proj", "v_proj"))
    apply_lora(model, config)
    adapter = save_adapter(model, tmp_path / "adapter", str(tiny_model_dir), config)
    root = tmp_path / "versions"
    rng = random.Random(0)
    kills, seen = 6, []
    for _ in range(kills):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(adapter)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        time.sleep(rng.uniform(0.05, 0.6))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        proc.stdout.close()
        proc.stderr.close()
        seen.append(len(check_store(root, adapter)))
    # It got on with writing between kills, and the next writer always picked up where the last stopped.
    assert seen[-1] > seen[0] > 1 and seen == sorted(seen)
    print(f"\nversion store: {kills} kill -9 while writing, {seen[-1]} versions, every one complete")


@pytest.mark.slow
def test_kill_9_during_hot_swaps_serves_old_or_new_after_restart(tmp_path):
    """A server hot-swapping adapter versions (POST /admin/rollback, as after a learning round) while
    it answers is killed; restarted, it serves exactly the version state.json names, complete."""
    import torch
    import yaml

    from acculturate.adapters import LoRAConfig, apply_lora, save_adapter
    from acculturate.feedback.versions import VersionStore
    from acculturate.models import load

    model, _ = load("smollm2-135m", device="cpu")
    config = LoRAConfig(r=2, alpha=4, dropout=0.0, targets=("q_proj", "v_proj"))
    apply_lora(model, config)
    v0 = save_adapter(model, tmp_path / "a0", "smollm2-135m", config)   # B = 0: the base model's answers
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    v1 = save_adapter(model, tmp_path / "a1", "smollm2-135m", config)
    del model
    versions = VersionStore(tmp_path / "versions")
    versions.add(v0, parent=None, method="init", accepted=True, reason="start")
    versions.add(v1, parent="v0", method="sft", accepted=True, reason="accepted: ok", feedback_cursor=0)
    (tmp_path / "learn.yaml").write_text(yaml.safe_dump({"versions_dir": str(tmp_path / "versions"),
                                                        "rounds_dir": str(tmp_path / "rounds")}))
    admin = {"Authorization": "Bearer admin-token-0001"}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "acculturate", "serve", "--port", str(port), "--db", str(tmp_path / "fb.db"),
               "--set", f"learn={tmp_path / 'learn.yaml'}", "--set", "admin_token=admin-token-0001"]

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    return proc
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)

    proc = start()
    swaps, stop = [], threading.Event()

    def swapper() -> None:
        for i in range(1000):
            if stop.is_set():
                return
            try:
                r = httpx.post(f"{url}/admin/rollback", headers=admin, json={"version": f"v{i % 2}"}, timeout=30)
            except httpx.HTTPError:
                return
            if r.status_code == 200:
                swaps.append(r.json()["version"])

    def asker() -> None:
        while not stop.is_set():
            try:
                httpx.post(f"{url}/v1/chat/completions", timeout=30, json={
                    "model": "online", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3})
            except httpx.HTTPError:
                return

    threads = [threading.Thread(target=swapper), threading.Thread(target=asker)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(swaps) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(random.Random(1).uniform(0.0, 0.5))
        kill(proc)
    finally:
        stop.set()
        kill(proc)
        for t in threads:
            t.join(60)
    assert len(swaps) >= 5
    current = VersionStore(tmp_path / "versions").state()["current"]
    assert current in ("v0", "v1")
    check_store(tmp_path / "versions", v0)
    proc = start()
    try:
        card = httpx.get(f"{url}/v1/models/online", timeout=30).json()
        assert card["version"] == f"online@{current}"
        answer = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
            "model": "online", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3})
        assert answer.status_code == 200 and answer.json()["system_fingerprint"] == f"online@{current}"
    finally:
        kill(proc)
    print(f"\nhot swap: killed after {len(swaps)} swaps; restarted serving {current}, as state.json says")
