"""Back-translation and Self-Instruct: filters on real data, and real-model runs on a tiny sample
(resumed without generating again)."""

from __future__ import annotations

import json

import pytest

from acculturate.augment import BackTranslateConfig, SelfInstructConfig, backtranslate, self_instruct
from acculturate.augment import backtranslation as bt_module
from acculturate.augment import self_instruction as si_module
from acculturate.augment.backtranslation import _rejection, first_line, with_prompt
from acculturate.augment.progress import partial_path
from acculturate.augment.self_instruction import (
    RougeL, clean_instruction, instruction_rejection, load_seed_tasks, proposal_prompt,
)
from acculturate.data import DataError, Example, read_examples
from acculturate.data.dedupe import normalize_text
from acculturate.data.filters import load_blocklist


@pytest.fixture(scope="module")
def instructions(data_dir):
    return read_examples(data_dir / "instructions" / "instruction-data.json")


def test_backtranslation_rejections():
    config = BackTranslateConfig()
    assert _rejection("Name a fruit.", "Sebutkan buah.", "Name a fruit!", 0.99, config) == "identical to the original"
    assert _rejection("Name a fruit.", "Name a fruit.", "List a fruit.", 0.9, config).startswith("pivot not in id")
    assert _rejection("Name a fruit.", "Sebutkan nama satu buah-buahan.", "Tell me a fruit.", 0.5, config).startswith("too far")
    assert _rejection("Name a fruit.", "Sebutkan nama satu buah-buahan.", "Name one fruit.", 0.99, config).startswith("too similar")
    assert _rejection("Name a fruit.", "Sebutkan nama satu buah-buahan.", "Name one fruit.", 0.85, config) is None
    assert first_line('"Sebutkan buah."\n\nExplanation: ...') == "Sebutkan buah."
    with pytest.raises(ValueError, match="min_similarity"):
        BackTranslateConfig(min_similarity=0.9, max_similarity=0.5)


def test_paraphrase_replaces_only_the_instruction(instructions):
    ex = next(e for e in instructions if e.meta["input"])
    new = with_prompt(ex, "Fix the grammar of this sentence.", {"provenance": {"method": "backtranslate"}})
    assert new.meta["instruction"] == "Fix the grammar of this sentence."
    assert new.messages[0]["content"] == "Fix the grammar of this sentence.\n\n" + ex.meta["input"]
    assert new.response == ex.response


def test_embedding_similarity_bounds_separate_paraphrase_from_drift():
    from acculturate.models.embedding import embed

    a, b, c = embed(["Convert 45 kilometers to meters.", "Change 45 km into meters.",
                     "The example of a camera is very good."])
    config = BackTranslateConfig()
    assert config.min_similarity <= float(a @ b) <= config.max_similarity
    assert float(a @ c) < config.min_similarity


def test_self_instruct_filters_on_the_seed_tasks():
    seeds = load_seed_tasks()
    assert len(seeds) == 175 and seeds[0]["id"] == "seed_task_0"
    rouge, seen = RougeL(), set()
    for s in seeds:
        rouge.add(s["instruction"])
        seen.add(normalize_text(s["instruction"]))
    config = SelfInstructConfig()
    blocklist = load_blocklist("default")
    copy = seeds[5]["instruction"]
    assert instruction_rejection(copy, rouge, seen, blocklist, config)[0] == "duplicate"
    near = copy.rstrip("?.") + " please."
    reason, score = instruction_rejection(near, rouge, seen, blocklist, config)
    assert reason.startswith("too similar") and score >= 0.7
    new = "Name three dishes that families in Indonesia cook for Eid al-Fitr."
    reason, score = instruction_rejection(new, rouge, seen, blocklist, config)
    assert reason is None and score < 0.7
    assert instruction_rejection("Draw a picture of a cat.", rouge, seen, blocklist, config)[0] == "needs more than text"
    assert instruction_rejection("Sebutkan tiga makanan khas dari Jawa Tengah untuk lebaran.", rouge, seen,
                                 blocklist, config)[0].startswith("not in en")
    assert clean_instruction("3. Task: Write a haiku about rain.\nMore text") == "Write a haiku about rain."
    assert "in Indonesia" in proposal_prompt(["a", "b"], "Indonesia")


def test_bad_seed_file_names_line(tmp_path):
    bad = tmp_path / "seeds.jsonl"
    bad.write_text('{"instruction": "ok", "instances": [{"input": "", "output": "x"}]}\n{"instances": []}\n')
    with pytest.raises(DataError, match=r"seeds.jsonl:2: field 'instruction'"):
        load_seed_tasks(bad)


def _no_generate(*args, **kwargs):
    raise AssertionError("a resumed run must not generate again")


@pytest.mark.slow
def test_backtranslate_real_model_and_resume(default_model, instructions, tmp_path, monkeypatch):
    model, tokenizer = default_model
    sample = [ex for ex in instructions if len(ex.meta["instruction"].split()) <= 8][:3]
    out = tmp_path / "bt.jsonl"
    config = BackTranslateConfig(pivot="French", pivot_code=None, max_new_tokens=20, batch_size=2,
                                 min_similarity=0.0, max_similarity=1.0, limit=2)
    result = backtranslate(model, tokenizer, sample, out, config, progress=False)
    log = [json.loads(line) for line in partial_path(out).read_text().splitlines()]
    assert log[0]["settings"]["pivot"] == "French" and len(log) == 3
    assert all(row["pivot_text"] for row in log[1:])      # the model did translate something
    assert result["considered"] == 2 and result["accepted"] + sum(result["rejected"].values()) == 2
    written = read_examples(out)
    assert written[:3] == sample                          # every original, also the one past the limit
    assert len(written) == 3 + result["accepted"]
    for ex in written[3:]:
        p = ex.meta["provenance"]
        assert p["method"] == "backtranslate" and p["pivot"] == "French" and p["model"] == "smollm2-135m"
    monkeypatch.setattr(bt_module, "generate", _no_generate)
    again = backtranslate(model, tokenizer, sample, out, config, progress=False)
    assert again == result and read_examples(out) == written
    with pytest.raises(ValueError, match="different settings"):
        backtranslate(model, tokenizer, sample, out, BackTranslateConfig(pivot="German"), progress=False)


@pytest.mark.slow
def test_self_instruct_real_model_and_resume(default_model, tmp_path, monkeypatch):
    model, tokenizer = default_model
    out = tmp_path / "si.jsonl"
    config = SelfInstructConfig(num_instructions=2, batch_size=2, max_rounds=1, max_new_tokens=24,
                                answer_max_new_tokens=32, max_answer_words=60, rouge_threshold=0.7,
                                region="Indonesia", persona="local", language=None)
    result = self_instruct(model, tokenizer, out, config, progress=False)
    log = [json.loads(line) for line in partial_path(out).read_text().splitlines()][1:]
    assert result["proposed"] == len(log) == 2 and result["rounds"] == 1
    assert result["kept"] == sum(1 for r in log if r["rejected"] is None)
    assert all(r["instruction"] for r in log)
    for r in log:
        assert r["rejected"] is not None or r["rouge_l_max"] < 0.7
    if result["kept"]:
        rows = read_examples(out)
        assert len(rows) == result["kept"]
        for ex in rows:
            p = ex.meta["provenance"]
            assert p["method"] == "self_instruct" and p["region"] == "Indonesia" and p["persona"] == "local"
            assert len(p["prompt_task_ids"]) == config.prompt_tasks and ex.response
    monkeypatch.setattr(si_module, "generate", _no_generate)
    assert self_instruct(model, tokenizer, out, config, progress=False) == result
