"""Chain-of-thought proxies on hand-written chains."""

from fractions import Fraction

from acculturate.evaluate.cot import (arithmetic_claims, chain_proxies, consistency, final_answer,
                                      follows_from_last_step, majority_answer, parse_number, split_steps)

CHAIN = "Step 1: 5 + 3 = 8\nStep 2: 8 * 2 = 16\nThe answer is 16."


def test_parse_number():
    assert parse_number("$1,250.5") == Fraction(2501, 2)
    assert parse_number("-3") == -3
    assert parse_number("abc") is None


def test_arithmetic_claims_recomputed():
    claims = arithmetic_claims("3 + 4 = 7, then 10 / 4 = 2.5, then 6 x 7 = 41 and 9 − 2 = 7")
    assert [(c.op, c.correct) for c in claims] == [("+", True), ("/", True), ("*", False), ("-", True)]
    assert claims[2].value == 42 and claims[2].claimed == 41


def test_arithmetic_claims_edge_cases():
    assert arithmetic_claims("0.1 + 0.2 = 0.3")[0].correct            # exact rationals, no float error
    assert arithmetic_claims("10 / 3 = 3.33")[0].correct              # rounded to the claimed decimals
    assert not arithmetic_claims("10 / 3 = 3.4")[0].correct
    assert arithmetic_claims("$1,200 - 200 = 1000")[0].correct
    assert arithmetic_claims("12 times 3 = 36")[0].correct
    zero = arithmetic_claims("5 / 0 = 0")[0]
    assert zero.value is None and not zero.correct
    chained = arithmetic_claims("2 + 3 = 5 + 1 = 6")
    assert [(c.a, c.b, c.claimed) for c in chained] == [(2, 3, 5), (5, 1, 6)]
    assert arithmetic_claims("no maths here; __import__('os') = 1") == []


def test_steps():
    assert split_steps(CHAIN) == ["5 + 3 = 8", "8 * 2 = 16"]
    assert split_steps("1. Add 2 and 3.\n2. Double it.\nSo the answer is 10.") == ["Add 2 and 3.", "Double it."]
    assert split_steps("First add 2 and 3 to get 5. Then double it to get 10. The answer is 10.") == [
        "First add 2 and 3 to get 5.", "Then double it to get 10."]
    assert split_steps("") == []


def test_final_answer_and_follows():
    assert final_answer(CHAIN) == 16
    assert final_answer("I think it is 12 or maybe 14") == 14
    assert final_answer("no idea") is None
    assert follows_from_last_step(CHAIN) is True
    assert follows_from_last_step(CHAIN.replace("answer is 16", "answer is 17")) is False
    # Last step without an equation: its last number.
    assert follows_from_last_step("Add them to get 9.\nThe answer is 9.") is True
    assert follows_from_last_step("The answer is 9.") is None     # no step left once the answer line goes


def test_consistency():
    assert consistency([Fraction(16), Fraction(16), Fraction(17)]) == 2 / 3
    assert consistency([None, None]) == 0.0
    assert consistency([Fraction(3), None]) == 0.5
    assert consistency([]) is None
    assert majority_answer([None, Fraction(2), Fraction(3), Fraction(3)]) == 3
    assert majority_answer([None]) is None


def test_chain_proxies():
    assert chain_proxies(CHAIN) == {"steps": 2, "arithmetic_claims": 2, "arithmetic_correct": 2, "answer": 16.0,
                                    "follows_from_last_step": True}
