"""Padding, packing and length grouping; packing is proved on the real model (attention never
crosses examples: a packed row gives the logits and loss of each example run alone)."""

from __future__ import annotations

import pytest
import torch

from acculturate.data.batching import (length_grouped_batches, pack_features, packed_collate, pad_collate,
                                       shuffled_batches)


def feature(ids, n_prompt=0):
    return {"input_ids": list(ids), "labels": [-100] * n_prompt + list(ids[n_prompt:])}


def test_pad_collate_right_pads_and_masks():
    batch = pad_collate([feature([5, 6, 7], 1), feature([8])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert all(t.dtype == torch.long for t in batch.values())


def test_pad_collate_names_bad_feature_and_field():
    with pytest.raises(ValueError, match=r"feature 1: field 'labels' has 2 entries, expected 3"):
        pad_collate([feature([1]), {"input_ids": [1, 2, 3], "labels": [1, 2]}], pad_id=0)
    with pytest.raises(ValueError, match=r"feature 0: missing field 'labels'"):
        pad_collate([{"input_ids": [1]}], pad_id=0)
    with pytest.raises(ValueError, match=r"feature 0: field 'input_ids' is empty"):
        pad_collate([feature([])], pad_id=0)


def test_pack_features_first_fit_decreasing():
    feats = [feature(range(10, 10 + n), 1) for n in (3, 6, 2, 5, 4)]
    rows = pack_features(feats, max_length=8)
    # Decreasing lengths 6,5,4,3,2 into bins of 8: [6,2], [5,3], [4].
    assert [r["seq_lens"] for r in rows] == [[6, 2], [5, 3], [4]]
    for r in rows:
        assert len(r["input_ids"]) == len(r["labels"]) == len(r["position_ids"]) == sum(r["seq_lens"]) <= 8
        starts = [0]
        for n in r["seq_lens"][:-1]:
            starts.append(starts[-1] + n)
        assert r["position_ids"] == [p for n in r["seq_lens"] for p in range(n)]
        assert all(r["labels"][s] == -100 for s in starts)   # never a target across examples
    # Every token is kept exactly once.
    assert sorted(t for r in rows for t in r["input_ids"]) == sorted(t for f in feats for t in f["input_ids"])
    assert pack_features(feats, 8) == rows   # deterministic


def test_pack_features_truncates_long_features():
    rows = pack_features([feature(range(1, 12), 2), feature([1, 2])], max_length=4)
    assert [r["seq_lens"] for r in rows] == [[4], [2]]
    assert rows[0]["input_ids"] == [1, 2, 3, 4] and rows[0]["labels"] == [-100, -100, 3, 4]
    with pytest.raises(ValueError, match="max_length"):
        pack_features([feature([1])], max_length=0)


def test_packed_collate_pads_as_its_own_block():
    rows = pack_features([feature([1, 2, 3]), feature([4, 5]), feature([6])], max_length=5)
    batch = packed_collate(rows, pad_id=0)
    assert set(batch) == {"input_ids", "labels", "position_ids"}   # no attention_mask (see module doc)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5], [6, 0, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 0, 1, 2, 3]]
    assert batch["labels"].tolist() == [[-100, 2, 3, -100, 5], [-100, -100, -100, -100, -100]]


def test_length_grouped_batches_cover_all_and_cut_padding():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 200, (400,), generator=g).tolist()
    grouped = length_grouped_batches(lengths, 8, torch.Generator().manual_seed(1))
    plain = shuffled_batches(len(lengths), 8, torch.Generator().manual_seed(1))
    for batches in (grouped, plain):
        assert sorted(i for b in batches for i in b) == list(range(400))

    def padding(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    assert padding(grouped) < padding(plain) / 5
    assert grouped == length_grouped_batches(lengths, 8, torch.Generator().manual_seed(1))


def texts_to_features(tok, texts):
    feats = []
    for prompt, answer in texts:
        p, a = tok(prompt)["input_ids"], tok(answer)["input_ids"]
        feats.append({"input_ids": p + a, "labels": [-100] * len(p) + a})
    return feats


TEXTS = [("Q: What is rendang?\nA:", " A slow-cooked spicy beef dish from West Sumatra."),
         ("Q: Capital of Kenya?\nA:", " Nairobi."),
         ("Translate to Indonesian: good morning\n", " selamat pagi"),
         ("Q: 2+3?\nA:", " 5")]


@pytest.mark.slow
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_row_equals_examples_alone_on_real_model(default_model, attn):
    from acculturate.train.loss import loss_sum

    model, tok = default_model
    feats = texts_to_features(tok, TEXTS)
    rows = pack_features(feats, max_length=64)
    assert len(rows) == 1 and len(rows[0]["seq_lens"]) == 4
    batch = packed_collate(rows, tok.pad_token_id)
    previous = model.config._attn_implementation
    model.set_attn_implementation(attn)
    try:
        with torch.no_grad():
            packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                           use_cache=False).logits[0]                  # (T, V)
            # The same row with positions that do not restart: plain causal attention across examples.
            crossing = model(input_ids=batch["input_ids"], use_cache=False).logits[0]
            start, alone_loss, alone_targets = 0, 0.0, 0
            order = sorted(range(4), key=lambda i: -len(feats[i]["input_ids"]))   # the packing order
            assert rows[0]["seq_lens"] == [len(feats[i]["input_ids"]) for i in order]
            for i in order:
                n = len(feats[i]["input_ids"])
                alone = model(input_ids=torch.tensor([feats[i]["input_ids"]])).logits[0]   # (n, V)
                torch.testing.assert_close(packed[start:start + n], alone, atol=1e-4, rtol=1e-4)
                if start > 0:   # the control: without restarts, later examples do see earlier ones
                    assert (crossing[start:start + n] - alone).abs().max() > 1.0
                s, k = loss_sum(model, pad_collate([feats[i]], tok.pad_token_id), torch.device("cpu"))
                alone_loss, alone_targets = alone_loss + s.item(), alone_targets + k
                start += n
            packed_loss, packed_targets = loss_sum(model, batch, torch.device("cpu"))
    finally:
        model.set_attn_implementation(previous)
    assert packed_targets == alone_targets
    assert packed_loss.item() == pytest.approx(alone_loss, abs=1e-3)


def test_weighted_features_carry_loss_weights_through_padding_and_packing():
    feats = [dict(feature([5, 6, 7], 1), weight=2.5), feature([8, 9])]
    batch = pad_collate(feats, pad_id=0)
    assert batch["loss_weights"].tolist() == [[2.5, 2.5, 2.5], [1.0, 1.0, 0.0]]
    assert "loss_weights" not in pad_collate([feature([1, 2])], pad_id=0)
    rows = pack_features(feats, max_length=8)
    assert rows[0]["loss_weights"] == [2.5, 2.5, 2.5, 1.0, 1.0]
    packed = packed_collate(rows + [{k: v for k, v in rows[0].items() if k != "loss_weights"}], pad_id=0)
    assert packed["loss_weights"].tolist() == [[2.5, 2.5, 2.5, 1.0, 1.0], [1.0] * 5]
