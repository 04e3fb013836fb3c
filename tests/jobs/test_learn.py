"""One learning round (jobs/learn.learn_round) on the real default model: what a rejected candidate
leaves behind (a version on record, nothing served, the feedback kept for the next round) and what
an accepted one changes."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("sqlalchemy")




def seed_store(store, tokenizer):
    from acculturate.data import render_prompt
    from acculturate.feedback.store import CompletionRecord

    rows = [("What do people eat for breakfast?", "Bread.", "adjustment", "In Indonesia, nasi uduk."),
            ("What is a popular sport?", "Football.", "adjustment", "In Indonesia, badminton."),
            ("What is a common snack?", "In Indonesia, krupuk.", "correct_cultural", None)]
    for i, (question, answer, kind, text) in enumerate(rows):
        messages = [{"role": "user", "content": question}]
        store.record_completions([CompletionRecord(
            id=f"c{i}", choice_index=0, endpoint="chat.completions", model="online", adapter="online",
            adapter_version="online@v0", prompt=render_prompt(messages, tokenizer, "chat"), completion=answer,
            finish_reason="stop", prompt_tokens=10, completion_tokens=3, sampling={}, messages=messages)])
        store.add_feedback(f"c{i}", kind, corrected_text=text)


@pytest.mark.slow
def test_rejected_then_accepted_round(tmp_path, tokenizer, monkeypatch):
    from safetensors.torch import load_file

    import acculturate.jobs.learn as learn_job
    from acculturate.adapters import LoRAConfig, adapter_registry
    from acculturate.evaluate.guard import GuardConfig
    from acculturate.feedback.store import FeedbackStore
    from acculturate.feedback.versions import VersionStore
    from acculturate.jobs.learn import LearnConfig, SFTUpdate, learn_round
    from acculturate.train import TrainConfig

    store = FeedbackStore(tmp_path / "feedback.db")
    versions = VersionStore(tmp_path / "versions")
    config = LearnConfig(
        versions_dir=str(tmp_path / "versions"), rounds_dir=str(tmp_path / "rounds"), min_feedback=3,
        guard_fraction=0.0, lora=LoRAConfig(r=4, alpha=8, dropout=0.0), progress=False,
        sft=SFTUpdate(max_length=64, train=TrainConfig(max_steps=1, batch_size=4, lr=1e-3, warmup_ratio=0.0,
                                                       save_every=0, log_every=1)),
        guard=GuardConfig(blend_questions=0, feedback=False))
    skipped = learn_round(config, store, versions)
    assert skipped.status == "skipped" and "min_feedback=3" in skipped.reason
    assert versions.names() == ["v0"] and versions.current().method == "init"
    seed_store(store, tokenizer)

    # A guard that sees the candidate lose 0.4 accuracy: the round is written down, not served.
    def regressing(model, tok, guard, rows, skip=()):
        return {"blend_accuracy": 0.5 if adapter_registry(model).active() == "parent" else 0.1}

    monkeypatch.setattr(learn_job, "guard_metrics", regressing)
    rejected = learn_round(config, store, versions)
    assert rejected.status == "rejected" and "REGRESSED" in rejected.reason
    v1 = versions.get("v1")
    assert not v1.accepted and v1.parent == "v0" and v1.method == "sft" and v1.feedback_ids == [1, 2, 3]
    assert v1.guard["parent"] == {"blend_accuracy": 0.5} and v1.guard["candidate"] == {"blend_accuracy": 0.1}
    assert v1.training["sft"]["examples"] == 3 and v1.training["sft"]["steps"] == 1
    assert versions.current().version == "v0" and versions.state()["feedback_cursor"] == 0

    # The same feedback again with no guard metric at all: rejected, and the round says why.
    monkeypatch.undo()
    unguarded = learn_round(config, store, versions)
    assert unguarded.status == "rejected" and "no guard metric is configured" in unguarded.reason
    round_json = json.loads((tmp_path / "rounds" / "after-v0-feedback-3" / "round.json").read_text())
    assert round_json["status"] == "rejected" and "allow_unguarded" in round_json["reason"]
    assert versions.current().version == "v0" and versions.state()["feedback_cursor"] == 0

    # Again with a real guard (a small BLEnD slice, every candidate within tolerance): v3 (parent v0)
    # is served, the cursor moves, and the guard's numbers were computed for both sides.
    config.guard = GuardConfig(blend_questions=4, max_new_tokens=6, feedback=False,
                               max_regression={"blend_accuracy": 1.0})
    accepted = learn_round(config, store, versions)
    assert accepted.status == "accepted" and accepted.version.version == "v3", accepted.reason
    v3 = versions.get("v3")
    assert set(v3.guard["candidate"]) == set(v3.guard["parent"]) == {"blend_accuracy"}
    assert all(0 <= v3.guard[side]["blend_accuracy"] <= 1 for side in ("candidate", "parent"))
    assert "blend_accuracy" in v3.guard["deltas"] and "ok" in accepted.reason
    assert [v.version for v in versions.lineage("v3")] == ["v3", "v0"]
    assert versions.current().version == "v3" and versions.state()["feedback_cursor"] == 3
    # The supervised step moved the adapter off v0's B = 0.
    b = [t for k, t in load_file(versions.get("v3").adapter_dir / "adapter_model.safetensors").items() if "lora_B" in k]
    b0 = [t for k, t in load_file(versions.get("v0").adapter_dir / "adapter_model.safetensors").items() if "lora_B" in k]
    assert all(float(t.abs().max()) == 0 for t in b0) and any(float(t.abs().max()) > 0 for t in b)
    assert learn_round(config, store, versions).status == "skipped"   # nothing new since v3
    store.close()


def test_learn_cli_lists_and_rolls_back(tmp_path, capsys):
    """`acculturate learn CONFIG --list / --rollback` over an existing version store (no model needed)."""
    import json

    from acculturate.cli import main
    from acculturate.feedback.versions import VersionStore

    def adapter(path):
        path.mkdir(parents=True)
        (path / "adapter_config.json").write_text(json.dumps({}))

    versions = VersionStore(tmp_path / "versions")
    versions.add(adapter, parent=None, method="init", accepted=True, reason="start")
    versions.add(adapter, parent="v0", method="sft", accepted=True, reason="accepted: ok")
    versions.add(adapter, parent="v1", method="sft+ppo", accepted=False, reason="rejected: blend_accuracy REGRESSED")
    config = tmp_path / "learn.yaml"
    config.write_text(f"versions_dir: {tmp_path / 'versions'}\n")
    assert main(["learn", str(config), "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("* v1") and "parent=v0" in lines[1]
    assert "rejected" in lines[2] and "REGRESSED" in lines[2]
    assert main(["learn", str(config), "--rollback", "v0"]) == 0
    assert versions.current().version == "v0"
    with pytest.raises(SystemExit, match="v2 was rejected by the guard"):
        main(["learn", str(config), "--rollback", "v2"])
