from collections import Counter

import pytest

from acculturate.data import Example, train_test_split


def examples(counts):
    return [Example.from_alpaca(f"q{c}{i}", "", "a", country=c) for c, n in counts.items() for i in range(n)]


def test_deterministic_by_seed_and_a_partition():
    items = list(range(100))
    train, test = train_test_split(items, test_fraction=0.2, seed=3)
    assert (train, test) == train_test_split(items, test_fraction=0.2, seed=3)
    assert test != train_test_split(items, test_fraction=0.2, seed=4)[1]
    assert len(test) == 20 and sorted(train + test) == items
    assert train == sorted(train) and test == sorted(test)  # original order kept


def test_small_lists_get_at_least_one_test_and_one_train_item():
    assert train_test_split([1, 2], test_fraction=0.01)[1] != []
    train, test = train_test_split([1, 2], test_fraction=0.99)
    assert len(train) == 1 and len(test) == 1
    assert train_test_split([1], test_fraction=0.5) == ([1], [])


def test_stratified_by_meta_key_keeps_each_group_fraction():
    items = examples({"UK": 50, "Spain": 30, "Assam": 10, "US": 2, "China": 1})
    train, test = train_test_split(items, test_fraction=0.2, seed=0, stratify="country")
    test_counts = Counter(e.meta["country"] for e in test)
    assert test_counts == {"UK": 10, "Spain": 6, "Assam": 2, "US": 1}  # China (1 item) stays in train
    assert len(train) + len(test) == len(items)
    assert {id(e) for e in train}.isdisjoint(id(e) for e in test)


def test_stratify_by_function_and_dict_key():
    items = [{"label": i % 3, "x": i} for i in range(30)]
    by_key = train_test_split(items, test_fraction=0.1, stratify="label", seed=1)
    by_fn = train_test_split(items, test_fraction=0.1, stratify=lambda d: d["label"], seed=1)
    assert by_key == by_fn
    assert Counter(d["label"] for d in by_key[1]) == {0: 1, 1: 1, 2: 1}


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="test_fraction"):
        train_test_split([1, 2, 3], test_fraction=1.0)
    with pytest.raises(KeyError, match="stratify"):
        train_test_split(examples({"UK": 3}), stratify="topic")
