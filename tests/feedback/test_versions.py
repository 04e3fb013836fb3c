"""The adapter version store: lineage, atomic writes, current pointer, rollback, damaged metadata."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from acculturate.feedback.versions import VersionError, VersionStore


def fake_adapter(tag: str):
    """A writer of a minimal adapter directory (the store only checks adapter_config.json exists)."""
    def write(path):
        path.mkdir(parents=True)
        (path / "adapter_config.json").write_text(json.dumps({"tag": tag}))
        (path / "adapter_model.safetensors").write_bytes(tag.encode())
    return write


def test_lineage_current_and_rollback(tmp_path):
    store = VersionStore(tmp_path / "versions")
    assert store.current() is None and store.names() == []
    v0 = store.add(fake_adapter("0"), parent=None, method="init", accepted=True)
    v1 = store.add(fake_adapter("1"), parent="v0", method="sft", accepted=True, feedback_ids=[1, 2, 3],
                   guard={"candidate": {"blend_accuracy": 0.3}}, feedback_cursor=3)
    v2 = store.add(fake_adapter("2"), parent="v1", method="sft+ppo", accepted=False, feedback_ids=[4, 5],
                   reason="rejected: blend_accuracy regressed")
    v3 = store.add(fake_adapter("3"), parent="v1", method="ppo", accepted=True, feedback_ids=[4, 5, 6],
                   feedback_cursor=6)
    assert [v.version for v in (v0, v1, v2, v3)] == ["v0", "v1", "v2", "v3"]
    assert store.names() == ["v0", "v1", "v2", "v3"]
    # The rejected v2 never became current; v3 did and moved the feedback cursor.
    assert store.current().version == "v3" and store.state()["feedback_cursor"] == 6
    assert [v.version for v in store.lineage("v3")] == ["v3", "v1", "v0"]
    assert store.get("v1").feedback_ids == [1, 2, 3] and store.get("v1").guard["candidate"]["blend_accuracy"] == 0.3
    assert (store.get("v3").adapter_dir / "adapter_model.safetensors").read_bytes() == b"3"
    # Rollback to an earlier accepted version; a rejected one is refused with its reason.
    assert store.rollback("v1").version == "v1" and store.current().version == "v1"
    with pytest.raises(VersionError, match="rejected by the guard.*blend_accuracy regressed"):
        store.rollback("v2")
    with pytest.raises(VersionError, match="no version 'v9'.*v0, v1, v2, v3"):
        store.rollback("v9")
    with pytest.raises(VersionError, match="named v0, v1"):
        store.get("latest")
    events = [(e["event"], e["version"]) for e in store.state()["events"]]
    assert events == [("init", "v0"), ("accept", "v1"), ("accept", "v3"), ("rollback", "v1")]
    # The cursor never moves back (a rollback does not re-learn consumed feedback).
    assert store.state()["feedback_cursor"] == 6
    # A fresh object over the same directory sees the same thing.
    assert VersionStore(tmp_path / "versions").current().version == "v1"


def test_add_checks_its_inputs(tmp_path):
    store = VersionStore(tmp_path)
    with pytest.raises(VersionError, match="no version 'v0'"):
        store.add(fake_adapter("x"), parent="v0", method="sft", accepted=True)
    with pytest.raises(VersionError, match="method must be one of"):
        store.add(fake_adapter("x"), parent=None, method="magic", accepted=True)
    with pytest.raises(VersionError, match="rejected cannot be made current"):
        store.add(fake_adapter("x"), parent=None, method="init", accepted=False, make_current=True)
    with pytest.raises(VersionError, match="left no adapter_config.json"):
        store.add(lambda d: d.mkdir(), parent=None, method="init", accepted=True)
    assert store.names() == []          # nothing half-written is left as a version
    assert [p.name for p in (tmp_path / "versions").iterdir()] == []


def test_a_failing_writer_leaves_the_store_as_it_was(tmp_path):
    store = VersionStore(tmp_path)
    store.add(fake_adapter("0"), parent=None, method="init", accepted=True)

    def broken(path):
        fake_adapter("half")(path)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store.add(broken, parent="v0", method="sft", accepted=True)
    assert store.names() == ["v0"] and store.current().version == "v0"
    assert sorted(p.name for p in (tmp_path / "versions").iterdir()) == ["v0"]


def test_killed_while_writing_a_version_leaves_the_last_good_state(tmp_path):
    """SIGKILL inside the adapter writer: the next reader sees v0 current and no v1."""
    script = textwrap.dedent(f"""
        import json, os, signal
        from acculturate.feedback.versions import VersionStore
        store = VersionStore({str(tmp_path)!r})
        def write(path):
            path.mkdir(parents=True)
            (path / "adapter_config.json").write_text("{{}}")
            if path.parent.name != "v0" and not path.parent.name.startswith(".v0"):
                os.kill(os.getpid(), signal.SIGKILL)
        store.add(write, parent=None, method="init", accepted=True)
        store.add(write, parent="v0", method="sft", accepted=True)
    """)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    store = VersionStore(tmp_path)
    assert store.names() == ["v0"] and store.current().version == "v0"
    # The next add takes the number v1 (the debris of the killed write is ignored).
    assert store.add(fake_adapter("1"), parent="v0", method="sft", accepted=True).version == "v1"


def test_damaged_metadata_gives_a_clear_error(tmp_path):
    store = VersionStore(tmp_path)
    store.add(fake_adapter("0"), parent=None, method="init", accepted=True)
    meta = tmp_path / "versions" / "v0" / "meta.json"
    meta.write_text("{not json")
    with pytest.raises(VersionError, match=r"v0/meta.json: not valid JSON \(line 1"):
        store.get("v0")
    meta.write_text(json.dumps({"version": "v0", "method": "init", "accepted": "yes"}))
    with pytest.raises(VersionError, match=r"meta.json: field 'accepted' must be of type bool"):
        store.current()
    (tmp_path / "state.json").write_text(json.dumps({"current": "v0", "feedback_cursor": "seven", "events": []}))
    with pytest.raises(VersionError, match=r"state.json: field 'feedback_cursor' must be of type int"):
        store.state()
