"""Online learning in a running server: the admin routes are closed without the token, and a real
learning round on the default model hot-swaps the accepted version in (uvicorn on 127.0.0.1): the
next completion reports it, and a rollback brings the old one back."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

httpx = pytest.importorskip("httpx")

ADMIN = {"Authorization": "Bearer learn-test-token"}


def test_learning_routes_need_the_admin_token(tmp_path):
    from fastapi.testclient import TestClient

    from acculturate.feedback.store import FeedbackStore
    from acculturate.serve import ServeConfig, create_app

    store = FeedbackStore(tmp_path / "feedback.db")
    app = create_app(ServeConfig(admin_token="learn-test-token"), pool=SimpleNamespace(before_change=[]), store=store)
    routes = [("post", "/admin/learn"), ("get", "/admin/learn"), ("get", "/admin/versions"),
              ("post", "/admin/rollback")]
    with TestClient(app) as client:
        for method, path in routes:
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                r = getattr(client, method)(path, headers=headers)
                assert r.status_code == 401, (method, path, r.text)
                assert r.json()["error"]["type"] == "authentication_error"
        # With the token but no learn config: 409 that says how to turn learning on.
        r = client.post("/admin/learn", headers=ADMIN)
        assert r.status_code == 409 and "learn: CONFIG" in r.json()["error"]["message"]
        assert client.post("/admin/rollback", headers=ADMIN, json={}).status_code == 400
    store.close()


def wait_for_round(client, url: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"{url}/admin/learn", headers=ADMIN).json()
        if status["state"] != "running":
            return status
        time.sleep(0.25)
    raise TimeoutError("the learning round did not finish")


@pytest.mark.slow
def test_a_learning_round_hot_swaps_into_the_running_server(live_server, model_pool, tmp_path):
    import yaml

    from acculturate.adapters import LoRAConfig
    from acculturate.config_loading import to_dict
    from acculturate.evaluate.guard import GuardConfig
    from acculturate.jobs.learn import LearnConfig, SFTUpdate
    from acculturate.train import TrainConfig

    learn = LearnConfig(
        versions_dir=str(tmp_path / "versions"), rounds_dir=str(tmp_path / "rounds"), min_feedback=3,
        guard_fraction=0.0, lora=LoRAConfig(r=4, alpha=8, dropout=0.0), progress=False,
        sft=SFTUpdate(max_length=64, train=TrainConfig(max_steps=2, batch_size=4, lr=1e-3, warmup_ratio=0.0,
                                                       save_every=0, log_every=1)),
        # A tiny guard slice keeps the test short; the tolerance 1.0 accepts any candidate.
        guard=GuardConfig(blend_questions=2, max_new_tokens=4, max_regression={"blend_accuracy": 1.0}))
    # The way a user turns it on: ServeConfig.learn names a LearnConfig YAML.
    (tmp_path / "learn.yaml").write_text(yaml.safe_dump(to_dict(learn)))
    server, app = live_server(admin_token="learn-test-token", learn=str(tmp_path / "learn.yaml"))
    try:
        with server as url, httpx.Client(timeout=120) as client:
            def chat(text: str) -> dict:
                r = client.post(f"{url}/v1/chat/completions", json={
                    "model": "online", "messages": [{"role": "user", "content": text}], "max_tokens": 4})
                assert r.status_code == 200, r.text
                return r.json()

            answers = [chat(q) for q in ("What do people eat for breakfast?", "What is a popular sport?",
                                         "What do people drink in the morning?")]
            assert {a["system_fingerprint"] for a in answers} == {"online@v0"}
            for a, text in zip(answers, ("In Indonesia, nasi uduk.", "In Indonesia, badminton.", None)):
                body = {"completion_id": a["id"], "kind": "adjustment" if text else "inappropriate"}
                if text:
                    body["corrected_text"] = text
                assert client.post(f"{url}/v1/feedback", json=body).status_code == 200

            started = client.post(f"{url}/admin/learn", headers=ADMIN)
            assert started.status_code == 202 and started.json()["state"] == "running"
            # Serving goes on while the round trains on its own copy of the model.
            assert chat("What is a common snack?")["system_fingerprint"] == "online@v0"
            status = wait_for_round(client, url)
            assert status["state"] == "done", status
            result = status["result"]
            assert result["status"] == "accepted" and result["version"]["version"] == "v1"
            assert result["version"]["parent"] == "v0" and result["version"]["method"] == "sft"
            assert sorted(result["version"]["feedback_ids"]) == [1, 2, 3]

            after = chat("What is a common snack?")
            assert after["system_fingerprint"] == "online@v1"
            assert app.state.store.completion(after["id"])["adapter_version"] == "online@v1"

            listing = client.get(f"{url}/admin/versions", headers=ADMIN).json()
            assert listing["current"] == "v1" and [v["version"] for v in listing["data"]] == ["v0", "v1"]
            assert listing["feedback_cursor"] == 3
            # No new feedback: the next round is skipped and nothing changes.
            client.post(f"{url}/admin/learn", headers=ADMIN)
            assert wait_for_round(client, url)["result"]["status"] == "skipped"

            back = client.post(f"{url}/admin/rollback", headers=ADMIN, json={"version": "v0"})
            assert back.status_code == 200 and back.json()["version"] == "online@v0"
            assert chat("What is a common snack?")["system_fingerprint"] == "online@v0"
            missing = client.post(f"{url}/admin/rollback", headers=ADMIN, json={"version": "v7"})
            assert missing.status_code == 404 and "no version 'v7'" in missing.json()["error"]["message"]
    finally:
        if "online" in model_pool.names():
            model_pool.remove_adapter("online")
