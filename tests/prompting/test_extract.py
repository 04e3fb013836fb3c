"""Answer extraction on the formats models actually write."""

import pytest

from acculturate.prompting.extract import (ANSWER_KINDS, extract_choice, extract_number, extract_short_answer,
                                           format_number, numbers_match, parse_number)

NUMBERS = [
    ("The answer is 42.", 42), ("The answer is 42", 42), ("#### 42", 42), ("**42**", 42), ("42", 42),
    ("$1,200", 1200), ("The total cost is $1,200.50.", 1200.5), ("Answer: 3/4", 0.75), ("3/4", 0.75),
    ("The answer is: 17 cookies (26 - 9).", 17), ("26 - 9 = 17", 17), ("So 26 - 9 = 17. The answer is 17.", 17),
    ("The final answer is -5.", -5), ("x = -5", -5), ("10-5=5", 5), ("\\boxed{12}", 12),
    ("The answer would be 2 1/2 hours.", 2.5), ("Final answer: 1,000,000", 1_000_000),
    ("The answer is five.", 5), ("She has twelve apples.", 12), ("The answer is 0.5", 0.5),
    ("He had 8 apples, ate 3, so he has **5** apples left. 8 - 3 = 5", 5),
    ("Step 1: 20 + 30 = 50\nStep 2: 50 * 2 = 100\nThe answer is 100.\nI hope this helps with 3 things.", 100),
    ("The answer is 7. Wait, the answer is 8.", 8), ("It costs €15.", 15), ("answer = 64", 64),
    ("50%", 50), ("The answer is .5", 0.5),
]


@pytest.mark.parametrize("text,expected", NUMBERS)
def test_extract_number(text, expected):
    assert extract_number(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "I do not know.", "no digits here at all"])
def test_extract_number_none(text):
    assert extract_number(text) is None


def test_strict_needs_a_marker():
    assert extract_number("26 - 9 = 17", strict=True) is None
    assert extract_number("so it is 17. The answer is 17.", strict=True) == 17
    assert extract_short_answer("Tea is popular.", strict=True) is None
    assert extract_choice("(B)", strict=True) is None
    assert extract_choice("The answer is (B)", strict=True) == "B"


CHOICES = [("(B)", "B"), ("Answer: B", "B"), ("The answer is (c).", "C"), ("**C**", "C"), ("B) Paris", "B"),
           ("A good choice is **D**", "D"), ("I think the correct answer is A.", "A"), ("answer: d", "D"),
           ("Option (A) is wrong; (C) is right.", "C"), ("C. Paris\nbecause...", "C")]


@pytest.mark.parametrize("text,expected", CHOICES)
def test_extract_choice(text, expected):
    assert extract_choice(text) == expected


def test_extract_choice_respects_the_option_set():
    assert extract_choice("The answer is (E).", choices="ABCD") is None
    assert extract_choice("The answer is (E).", choices="ABCDE") == "E"


SHORT = [("The answer is fish and chips.", "fish and chips"), ("**Tea**", "Tea"), ("Rice.\nIt is common.", "Rice"),
         ('Answer: "couscous"', "couscous"), ("Football", "Football"),
         ("Many things.\nThe final answer is: cricket!", "cricket"), ("  \n\nPasta.", "Pasta")]


@pytest.mark.parametrize("text,expected", SHORT)
def test_extract_short_answer(text, expected):
    assert extract_short_answer(text) == expected


def test_short_answer_fallback_position():
    text = "People there like many dishes.\nMost of all couscous."
    assert extract_short_answer(text, fallback="first") == "People there like many dishes"
    assert extract_short_answer(text, fallback="last") == "Most of all couscous"
    assert extract_short_answer("   ") is None


def test_number_helpers():
    assert parse_number("$1,200") == 1200 and parse_number("none") is None
    assert format_number(51.0) == "51" and format_number(2.5) == "2.5" and format_number(1 / 3) == "0.333333"
    assert numbers_match(17.0, 17) and not numbers_match(None, 17) and not numbers_match(17.01, 17)


def test_answer_kinds_score_and_vote_keys():
    number, short, choice = ANSWER_KINDS["number"], ANSWER_KINDS["short"], ANSWER_KINDS["choice"]
    assert number.correct(17.0, [17.0]) and not number.correct(18.0, [17.0]) and not number.correct(None, [17.0])
    assert number.key(17.0) == number.key(17) == "17"
    assert short.correct("fish and chips", ["Fish & Chips", "fish and chips"])
    assert short.correct("People eat couscous", ["couscous"]) and not short.correct("rice", ["couscous"])
    assert short.key("The Tea.") == short.key("tea")
    assert choice.correct("b", ["B"]) and choice.key("b") == "B"
