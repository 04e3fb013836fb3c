import json

import pytest

from acculturate.data import BLEND_PROMPT, DataError, blend_countries, is_correct, load_blend, normalize_answer


def blend_file(tmp_path, rows):
    path = tmp_path / "blend.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def row(id, country, answers, topic="Food", question="Q?"):
    return {"id": id, "country": country, "topic": topic, "question_en": question, "answers_en": answers}


def test_most_voted_answer_is_the_response(tmp_path):
    path = blend_file(tmp_path, [
        row("A/1", "Spain", [{"answers": ["paella", "valencian paella"], "count": 2},
                             {"answers": ["tortilla"], "count": 3}], question="Popular dish in Spain?"),
        row("A/2", "Spain", []),  # nobody answered: skipped
        row("A/3", "UK", [{"answers": ["tea"], "count": 2}, {"answers": ["coffee"], "count": 2},
                          {"answers": [], "count": 4}], topic="Sport"),  # tie: first group; empty group ignored
        row("A/4", "UK", [{"answers": [], "count": 1}]),  # only an empty group: skipped
    ])
    spain, uk = load_blend(path)
    assert spain.messages == [
        {"role": "user", "content": BLEND_PROMPT.format(question="Popular dish in Spain?")},
        {"role": "assistant", "content": "tortilla"},
    ]
    assert spain.meta == {"id": "A/1", "country": "Spain", "topic": "Food", "question": "Popular dish in Spain?",
                          "answers": ["paella", "valencian paella", "tortilla"]}
    assert uk.response == "tea"
    assert [e.meta["id"] for e in load_blend(path, countries="uk")] == ["A/3"]
    assert [e.meta["id"] for e in load_blend(path, topics=["sport"])] == ["A/3"]
    assert blend_countries(path) == ["Spain", "UK"]


def test_shipped_file_and_country_selection():
    countries = blend_countries()
    assert len(countries) == 12 and "North_Korea" in countries
    nk = load_blend(countries=["North Korea"])
    assert nk and {e.meta["country"] for e in nk} == {"North_Korea"}
    alg = load_blend(countries=["Algeria"])
    fruit = next(e for e in alg if e.meta["id"] == "Algeria/Al-en-04")
    assert fruit.response == "orange" and fruit.meta["answers"] == ["orange", "dates", "bananas", "watermelon"]
    assert "Algeria/Al-en-02" not in {e.meta["id"] for e in alg}  # empty answers_en
    assert BLEND_PROMPT.format(question="x") == "x\nAnswer in a few words."


def test_unknown_country_lists_the_available_ones():
    with pytest.raises(ValueError, match=r"unknown \['Atlantis'\]; available: \['Algeria', 'Assam'"):
        load_blend(countries=["Atlantis"])


def test_malformed_row_is_a_named_error(tmp_path):
    path = blend_file(tmp_path, [row("A/1", "UK", [{"answers": ["tea"], "count": 1}]), {"id": "A/2", "country": "UK"}])
    with pytest.raises(DataError, match=r"blend\.jsonl:2: field 'topic': expected a str, got nothing"):
        load_blend(path)


@pytest.mark.parametrize("text, expected", [
    ("The Ice-Cream!", "ice cream"),
    ("  a   cup of   tea. ", "cup of tea"),
    ("Anand's, an apple", "anand s apple"),
    ("«Jollof» rice", "jollof rice"),
    ("", ""),
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize("prediction, answers, expected", [
    ("Jollof rice", ["jollof rice", "rice"], True),
    ("People usually eat jollof rice at weddings.", ["Jollof Rice"], True),
    ("The tea.", ["tea"], True),
    ("Steak and chips", ["tea"], False),  # 'tea' inside 'steak' is not a word match
    ("rice", ["jollof rice"], False),  # a part of the answer is not enough
    ("ice-cream", ["ice cream"], True),
    ("", ["tea"], False),
    ("The", ["the"], False),  # nothing left after normalization
    ("Coffee", [], False),
])
def test_is_correct(prediction, answers, expected):
    assert is_correct(prediction, answers) is expected
