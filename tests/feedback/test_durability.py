"""No feedback is lost when the server is killed with SIGKILL right after answering 200."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_feedback_survives_kill_9(tmp_path):
    from acculturate.feedback import FeedbackStore

    db, port = tmp_path / "feedback.db", free_port()
    # One judgement per completion per client: twelve judgements need twelve clients (API keys).
    keys = [f"durability-key-{i:02d}" for i in range(12)]
    (tmp_path / "keys.txt").write_text("\n".join(keys))
    proc = subprocess.Popen([sys.executable, "-m", "acculturate", "serve", "--port", str(port), "--db", str(db),
                             "--api-keys-file", str(tmp_path / "keys.txt")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        answer = httpx.post(f"{url}/v1/chat/completions", timeout=120, headers=auth(keys[0]), json={
            "model": "none", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 2,
            "temperature": 0, "metadata": {"region": "Mexico"}}).json()
        cid = answer["id"]
        kinds = [("correct_cultural", None), ("inappropriate", None), ("adjustment", "¡Hola!")] * 4
        ids = []
        for i, (kind, text) in enumerate(kinds):
            r = httpx.post(f"{url}/v1/feedback", timeout=30, headers=auth(keys[i]), json={
                "completion_id": cid, "kind": kind, "corrected_text": text, "comment": f"#{i}"})
            assert r.status_code == 200, r.text
            ids.append(r.json()["id"])
        os.kill(proc.pid, signal.SIGKILL)  # right after the last 200: no shutdown, no flush
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
        proc.stdout.close()

    store = FeedbackStore(db)
    rows = store.feedback()
    assert [r["id"] for r in rows] == ids
    assert [(r["kind"], r["corrected_text"], r["comment"]) for r in rows] == [
        (k, t, f"#{i}") for i, (k, t) in enumerate(kinds)]
    assert rows[0]["completion"] == answer["choices"][0]["message"]["content"]
    assert rows[0]["completion_region"] == "Mexico" and rows[0]["sampling"]["max_tokens"] == 2
