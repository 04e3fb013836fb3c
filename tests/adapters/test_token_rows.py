"""Trainable rows of the embedding (new vocabulary) beside LoRA, with a tied or untied head."""

import pytest
import torch

from acculturate.adapters.token_rows import (TiedTokenRowsHead, apply_token_rows, remove_token_rows,
                                             token_rows_config, token_rows_disabled, token_rows_state_dict)


@pytest.mark.parametrize("tie", [True, False])
def test_rows_replace_the_embedding_rows_and_only_they_train(make_llama, tie):
    model, reference = make_llama(tie=tie), make_llama(tie=tie)
    for p in model.parameters():
        p.requires_grad_(False)
    layer = apply_token_rows(model, [60, 61, 63])
    assert isinstance(model.get_output_embeddings(), TiedTokenRowsHead) == tie
    values = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        layer.rows.copy_(values)
        reference.get_input_embeddings().weight[[60, 61, 63]] = values   # tied: the head follows
    ids = torch.tensor([[1, 60, 5, 63, 61, 2]])
    torch.testing.assert_close(model(ids).logits, reference(ids).logits)
    model(ids).logits.sum().backward()
    assert [n for n, p in model.named_parameters() if p.grad is not None] == \
        ["model.embed_tokens.token_adapter.trainable_tokens_delta"]
    with token_rows_disabled(model):
        torch.testing.assert_close(model(ids).logits, make_llama(tie=tie)(ids).logits)
    assert token_rows_config(model) == {"embed_tokens": [60, 61, 63]}
    assert set(token_rows_state_dict(model, "base_model.model.")) == \
        {"base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"}
    remove_token_rows(model, merge=True)
    assert isinstance(model.get_input_embeddings(), torch.nn.Embedding)
    torch.testing.assert_close(model(ids).logits, reference(ids).logits)


def test_bad_indices_and_double_apply(tiny_llama):
    with pytest.raises(ValueError, match=r"token indices must be in \[0, 64\)"):
        apply_token_rows(tiny_llama, [64])
    apply_token_rows(tiny_llama, [3])
    with pytest.raises(ValueError, match="already has trainable token rows"):
        apply_token_rows(tiny_llama, [4])
