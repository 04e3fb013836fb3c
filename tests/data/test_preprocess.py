"""The pre-processing steps on the shipped instruction and NusaX data."""

from __future__ import annotations

import csv
import json

import pytest

from acculturate.data import DataError, Example, read_examples
from acculturate.data.balance import BalanceConfig, balance, group_value
from acculturate.data.counterfactual import CounterfactualConfig, counterfactual, load_swap_list, match_case
from acculturate.data.dedupe import DedupeConfig, dedupe, normalize_text
from acculturate.data.filters import LengthFilterConfig, blocklist_filter, length_filter, load_blocklist
from acculturate.data.langid import LangIdConfig, detect_language, langid_filter
from acculturate.data.steps import BlocklistFilterConfig, run_step
from acculturate.data.summary import example_id, summarize


@pytest.fixture(scope="module")
def instructions(data_dir):
    return read_examples(data_dir / "instructions" / "instruction-data.json")


@pytest.fixture(scope="module")
def nusax(data_dir):
    with open(data_dir / "nusax" / "valid.csv", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_exact_and_near_duplicates_are_removed_first_kept(instructions):
    sample = instructions[:50]
    exact = Example([{"role": "user", "content": "  " + sample[3].messages[0]["content"].upper() + "!!"},
                     {"role": "assistant", "content": sample[3].response}])
    words = sample[7].messages[0]["content"].split() + sample[7].response.split()
    near_text = " ".join(words[:-1] + ["indeed"])  # one word of ~20 changed
    near = Example([{"role": "user", "content": near_text}])
    data = sample + [exact, near]
    kept, removed = dedupe(data, DedupeConfig(threshold=0.7))
    kinds = {r["id"]: r for r in removed}
    assert len(kept) == 50
    assert kinds[example_id(exact)]["kind"] == "exact"
    assert kinds[example_id(exact)]["duplicate_of"] == example_id(sample[3])
    assert kinds[example_id(near)]["kind"] == "near"
    assert kinds[example_id(near)]["duplicate_of"] == example_id(sample[7])
    # Exact-only mode keeps the near duplicate.
    kept_exact, removed_exact = dedupe(data, DedupeConfig(near=False))
    assert len(kept_exact) == 51 and [r["kind"] for r in removed_exact] == ["exact"]


def test_near_dedupe_threshold_matters(instructions):
    # The shipped data has paraphrased tasks: a lower threshold finds more of them.
    loose = len(dedupe(instructions, DedupeConfig(threshold=0.5))[1])
    strict = len(dedupe(instructions, DedupeConfig(threshold=0.9))[1])
    assert loose > strict
    assert normalize_text("Hello,  WORLD!") == "hello world"


def test_length_filter_bounds_and_reasons(instructions):
    kept, removed = length_filter(instructions, LengthFilterConfig(min_words=10, max_words=30))
    assert kept and removed and len(kept) + len(removed) == len(instructions)
    assert all(10 <= len(" ".join(m["content"] for m in ex.messages).split()) <= 30 for ex in kept)
    assert {"words <", "words >"} & {r["reason"][r["reason"].index("words"):][:7] for r in removed}
    with pytest.raises(ValueError, match="max_words"):
        LengthFilterConfig(min_words=10, max_words=5)


def test_region_blocklist_inherits_default_and_matches_whole_words():
    indonesia = load_blocklist("Indonesia")
    assert indonesia.find("Dasar goblok, kirim ke a.b@example.com") == ["goblok", "a.b@example.com"]
    assert indonesia.find("Shit happens") == ["Shit"]             # from the inherited default list
    assert indonesia.find("asuransi dan bangsatnya") == []          # 'asu' / 'bangsat' inside other words
    assert load_blocklist("uk").find("Bloody hell, that's bollocks") == ["Bloody hell", "bollocks"]
    examples = [Example([{"role": "user", "content": "Call +62 812 3456 7890 now"}]),
                Example([{"role": "user", "content": "A clean sentence."}])]
    kept, removed = blocklist_filter(examples, load_blocklist("default"))
    assert len(kept) == 1 and removed[0]["matches"] == ["+62 812 3456 7890"]


def test_bad_blocklist_names_file_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("words: [ok]\npatterns: ['(unclosed']\n")
    with pytest.raises(DataError, match=r"bad.yaml: field 'patterns\[0\]': expected a valid regular expression"):
        load_blocklist(str(bad))
    cyc = tmp_path / "a.yaml"
    cyc.write_text("inherit: [a.yaml]\n")
    with pytest.raises(DataError, match="cycle"):
        load_blocklist(str(cyc))
    with pytest.raises(ValueError, match="shipped"):
        load_blocklist("atlantis")


def test_langid_on_nusax(nusax):
    # py3langid on the shipped NusaX sentences: English, Indonesian, Javanese are known languages.
    for column, code, floor in (("english", "en", 0.95), ("indonesian", "id", 0.9), ("javanese", "jv", 0.9)):
        hits = sum(detect_language(row[column])[0] == code for row in nusax)
        assert hits >= floor * len(nusax), (column, hits)
    mixed = [Example([{"role": "user", "content": row[col]}], {"col": col})
             for row in nusax[:20] for col in ("english", "indonesian")]
    kept, removed = langid_filter(mixed, LangIdConfig(languages=("id",)))
    assert sum(ex.meta["col"] == "indonesian" for ex in kept) >= 18
    assert all(ex.meta["lang"] == "id" for ex in kept)
    assert all(r["lang"] != "id" for r in removed)
    with pytest.raises(ValueError, match="unknown codes"):
        LangIdConfig(languages=("xx",))


def test_counterfactual_swaps_with_case_and_boundaries():
    swaps = load_swap_list("gender_en")
    text, n = swaps.swap("He gave HIS sister a Book; she thanked him. Theme: heritage.")
    assert text == "She gave HER brother a Book; he thanked her. Theme: heritage."
    assert n == 5
    assert match_case("Mr", "mrs") == "Mrs"
    ex = Example.from_alpaca("Rewrite: my father is a king.", "", "My mother is a queen.", id="x1")
    out, made = counterfactual([ex, Example.from_alpaca("Add 2 and 3.", "", "5")])
    assert len(out) == 3 and made == [{"id": "x1", "swapped": 4}]
    copy = out[2]
    assert copy.messages[0]["content"] == "Rewrite: my mother is a queen."
    assert copy.meta["instruction"] == "Rewrite: my mother is a queen."
    assert copy.meta["provenance"] == {"method": "counterfactual", "swaps": "gender_en", "source_id": "x1", "swapped": 4}
    replaced, _ = counterfactual([ex], CounterfactualConfig(mode="replace"))
    assert len(replaced) == 1 and replaced[0].response == "My father is a king."
    indonesian, _ = load_swap_list("gender_id").swap("Bapak dan anak laki-laki")
    assert indonesian == "Ibu dan anak perempuan"


def test_conflicting_swaps_are_refused(tmp_path):
    bad = tmp_path / "swaps.yaml"
    bad.write_text("pairs: [[a, b], [a, c]]\n")
    with pytest.raises(DataError, match=r"pairs\[1\].*one_way"):
        load_swap_list(str(bad))


def test_balance_modes_on_blend_countries(data_dir):
    examples = [Example([{"role": "user", "content": json.loads(line)["question_en"]}],
                        {"country": json.loads(line)["country"]})
                for line in (data_dir / "blend" / "blend_saq_en.jsonl").read_text().splitlines()]
    examples = [ex for ex in examples if ex.meta["country"] in ("UK", "US", "Spain")]
    uk_heavy = [ex for ex in examples if ex.meta["country"] == "UK"] + \
        [ex for ex in examples if ex.meta["country"] == "US"][:30] + \
        [ex for ex in examples if ex.meta["country"] == "Spain"][:45]
    counts = summarize(uk_heavy, "country")["groups"]
    down, report = balance(uk_heavy, BalanceConfig(group="country", mode="downsample"))
    result = summarize(down, "country")["groups"]
    assert len(set(result.values())) == 1 and set(result) == set(counts)
    assert result["UK"] == min(counts.values())
    up, _ = balance(uk_heavy, BalanceConfig(group="country", mode="upsample"))
    up_counts = summarize(up, "country")["groups"]
    assert set(up_counts.values()) == {counts["UK"]}
    assert sum("copy_of" in ex.meta for ex in up) == len(up) - len(uk_heavy)
    weighted, report = balance(uk_heavy, BalanceConfig(group="country", mode="weight", target={"UK": 1, "US": 1, "Spain": 2}))
    sums = {}
    for ex in weighted:
        sums[ex.meta["country"]] = sums.get(ex.meta["country"], 0) + ex.meta["weight"]
    assert sums["Spain"] == pytest.approx(2 * sums["UK"], rel=1e-3) and sums["UK"] == pytest.approx(sums["US"], rel=1e-3)
    with pytest.raises(ValueError, match="no examples"):
        balance(uk_heavy, BalanceConfig(group="country", target={"Atlantis": 1}))


def test_gender_is_a_detected_group(instructions):
    values = {group_value(ex, "gender") for ex in instructions}
    assert {"male", "female", "none"} <= values


def test_run_step_writes_output_report_and_prints_summary(tmp_path, data_dir, capsys):
    out = tmp_path / "clean.jsonl"
    result = run_step("blocklist", BlocklistFilterConfig(lists=("default",), words=("Paris",)),
                      data_dir / "instructions" / "instruction-data.json", out)
    printed = capsys.readouterr().out
    assert "blocklist: 1100 ->" in printed and "before" in printed and "words/example" in printed
    kept = read_examples(out)
    assert len(kept) == result["after"]["count"] < 1100
    assert not any("paris" in ex.messages[0]["content"].lower() for ex in kept)
    report = json.loads((tmp_path / "clean.jsonl.report.json").read_text())
    assert report["report"] and report["before"]["count"] == 1100
    with pytest.raises(ValueError, match="must differ"):
        run_step("dedupe", DedupeConfig(), out, out)


def test_run_step_bad_input_names_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": 3, "output": "b"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'instruction'"):
        run_step("dedupe", DedupeConfig(), bad, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()
