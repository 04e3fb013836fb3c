"""Scoring a run from its saved files alone (what --rescore does), on hand-written outputs."""

import json

import pytest

from acculturate.config_loading import from_dict, to_dict
from acculturate.evaluate.ratings import RatingStore, item_key
from acculturate.io import write_jsonl
from acculturate.jobs.system_eval import EvalConfig, rescore

pytest.importorskip("matplotlib")


def make_run(tmp_path):
    config = from_dict(EvalConfig, {
        "name": "hand", "systems": [{"name": "base"}, {"name": "tuned"}],
        "tasks": [{"name": "qa", "kind": "blend"}, {"name": "mt", "kind": "nusax"},
                  {"name": "ap", "kind": "appropriateness", "region": "UK"},
                  {"name": "math", "kind": "cot"}]})
    (tmp_path / "config.json").write_text(json.dumps(to_dict(config)))
    qa = lambda out: [  # noqa: E731
        {"id": "q1", "country": "UK", "topic": "Food", "answers": ["fish and chips"], "output": out[0]},
        {"id": "q2", "country": "UK", "topic": "Sport", "answers": ["football"], "output": out[1]},
        {"id": "q3", "country": "US", "topic": "Food", "answers": ["burger"], "output": out[2]},
        {"id": "q4", "country": "US", "topic": "Sport", "answers": ["baseball"], "output": out[3]}]
    write_jsonl(tmp_path / "outputs/qa/base.jsonl", qa(["Fish and chips.", "cricket", "pizza", "tea"]))
    write_jsonl(tmp_path / "outputs/qa/tuned.jsonl", qa(["fish and chips", "Football!", "a burger", "tea"]))
    for s, out in (("base", "the cat"), ("tuned", "the cat sat on the mat")):
        write_jsonl(tmp_path / f"outputs/mt/{s}.jsonl",
                    [{"id": "n1", "reference": "the cat sat on the mat", "output": out}])
    for s, scores in (("base", [2, 3, None]), ("tuned", [4, 5, 4])):
        write_jsonl(tmp_path / f"outputs/ap/{s}.jsonl",
                    [{"id": f"a{i}", "prompt": "?", "output": "x", "region": "UK", "question": "?"} for i in range(3)])
        write_jsonl(tmp_path / f"judgements/ap/{s}.jsonl",
                    [{"id": f"a{i}", "judge_score": sc, "judge_reason": "r"} for i, sc in enumerate(scores)])
        write_jsonl(tmp_path / f"timing/qa/{s}.jsonl",
                    [{"ids": ["q1"], "seconds": 2.0, "prompt_tokens": 10, "completion_tokens": 8,
                      "peak_memory_bytes": 3 * 2**20, "memory_kind": "cpu_rss_growth"},
                     {"ids": ["q2"], "seconds": 2.0, "prompt_tokens": 10, "completion_tokens": 12,
                      "peak_memory_bytes": 5 * 2**20, "memory_kind": "cpu_rss_growth"}])
        write_jsonl(tmp_path / f"outputs/math/{s}.jsonl", [
            {"id": "m1", "gold": 16.0, "chains": ["5 + 3 = 8\n8 * 2 = 16\nThe answer is 16.",
                                                    "5 + 3 = 9\n9 * 2 = 18\nThe answer is 18.",
                                                    "5 + 3 = 8\n8 * 2 = 16\nThe answer is 16."]}])
    store = RatingStore(tmp_path / "ratings.sqlite")
    # Humans agree with the judge's order on the tuned answers: judge 4,5,4 vs humans 3,5,(4,4).
    store.add(item_key("ap", "tuned", "a0"), "alice", 3)
    store.add(item_key("ap", "tuned", "a1"), "alice", 5)
    store.add(item_key("ap", "tuned", "a2"), "alice", 4)
    store.add(item_key("ap", "tuned", "a2"), "bob", 4)
    return tmp_path


def test_rescore_numbers_by_hand(tmp_path):
    m = rescore(make_run(tmp_path))
    qa = m["tasks"]["qa"]
    assert qa["systems"]["base"]["accuracy"] == 0.25 and qa["systems"]["tuned"]["accuracy"] == 0.75
    assert qa["systems"]["tuned"]["by_country"]["UK"] == {"accuracy": 1.0, "correct": 2, "n": 2}
    assert qa["systems"]["base"]["by_topic"]["Food"]["accuracy"] == 0.5
    assert qa["comparisons"]["tuned"]["difference"] == pytest.approx(0.5)
    assert qa["comparisons"]["tuned"]["versus"] == "base"
    mt = m["tasks"]["mt"]["systems"]
    assert mt["tuned"]["bleu"] == pytest.approx(100) and mt["base"]["bleu"] < 10
    assert "tok:13a" in mt["base"]["bleu_signature"]
    ap = m["tasks"]["ap"]
    assert ap["systems"]["base"]["judge_mean"] == 2.5 and ap["systems"]["base"]["unparsed"] == 1
    assert ap["systems"]["tuned"]["judge_distribution"] == {"1": 0, "2": 0, "3": 0, "4": 2, "5": 1}
    # Judge on a0,a1,a2 = 4,5,4; human item means 3,5,4 -> ranks (1.5,3,1.5) vs (1,3,2):
    # deviations (-.5,1,-.5), (-1,1,0): sxy = 1.5, sxx = 1.5, syy = 2 -> rho = 1.5/sqrt(3).
    human = ap["human"]["tuned"]
    assert human["items"] == 3 and human["ratings"] == 4 and human["mean"] == pytest.approx(4.0)
    assert human["agreement"]["spearman"] == pytest.approx(1.5 / 3 ** 0.5)
    assert ap["human"]["base"]["items"] == 0 and ap["human_all_systems"]["agreement"]["n_items"] == 3
    # The paired comparison skips the example the judge could not score on one side (a2 on base).
    assert ap["comparisons"]["tuned"]["n"] == 2 and ap["comparisons"]["tuned"]["difference"] == pytest.approx(2.0)
    math_ = m["tasks"]["math"]["systems"]["base"]
    assert math_["accuracy"] == 1.0 and math_["consistency_mean"] == pytest.approx(2 / 3)
    assert math_["arithmetic_correct_rate"] == pytest.approx(5 / 6) and math_["steps_mean"] == 2
    eff = m["efficiency"]["base"]
    assert eff["seconds"] == 4.0 and eff["completion_tokens"] == 20 and eff["tokens_per_s"] == 5.0
    assert eff["peak_memory_bytes"] == 5 * 2**20 and eff["trainable_parameters"] is None


def test_report_is_self_contained(tmp_path):
    run = make_run(tmp_path)
    rescore(run)
    html = (run / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5
    assert "outputs/qa/base.jsonl" in html and "tok:13a" in html and "Spearman" in html
    assert "<script" not in html and "src=\"http" not in html
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["tasks"]["qa"]["systems"]["tuned"]["accuracy"] == 0.75


def test_rescore_refuses_missing_outputs(tmp_path):
    run = make_run(tmp_path)
    (run / "outputs/qa/tuned.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="no saved outputs"):
        rescore(run)
    with pytest.raises(FileNotFoundError, match="not an evaluation run"):
        rescore(tmp_path / "empty")
