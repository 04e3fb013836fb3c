"""The chunked vocabulary projection + cross-entropy gives the same loss and gradients as full logits."""

import pytest
import torch

from acculturate.adapters import LoRAConfig, prepare_model
from acculturate.data.batching import pad_collate
from acculturate.train.loss import chunked_cross_entropy, loss_sum


def test_chunked_cross_entropy_equals_full_logits():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=True)
    hidden = torch.randn(37, 16, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    full = torch.nn.functional.cross_entropy(head(hidden), targets, reduction="sum")
    g_full = torch.autograd.grad(full, [hidden, head.weight, head.bias])
    chunked = chunked_cross_entropy(hidden, head, targets, chunk=8)
    g_chunk = torch.autograd.grad(chunked, [hidden, head.weight, head.bias])
    assert torch.allclose(full, chunked, atol=1e-4)
    for a, b in zip(g_full, g_chunk):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.slow
def test_loss_sum_chunked_path_matches_on_the_real_model(fresh_model):
    model, tok = fresh_model
    prepare_model(model, "lora", lora=LoRAConfig(r=4, alpha=8, dropout=0.0))
    feats = []
    for text, answer in [("The capital of France is", " Paris."), ("Two plus two is", " four, of course.")]:
        p, a = tok(text).input_ids, tok(answer).input_ids
        feats.append({"input_ids": p + a, "labels": [-100] * len(p) + a})
    batch = pad_collate(feats, tok.pad_token_id)
    results = []
    for threshold in (2 ** 62, 0):   # full logits, then the chunked path
        model.zero_grad()
        s, n = loss_sum(model, batch, torch.device("cpu"), chunked_above=threshold)
        s.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        results.append((s.detach(), n, grads))
    (s1, n1, g1), (s2, n2, g2) = results
    assert n1 == n2 > 0
    assert torch.allclose(s1, s2, rtol=1e-5)
    worst = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) for a, b in zip(g1, g2))
    assert worst < 1e-3, worst   # fp32 sums in another order through 30 layers (measured 2.3e-4)


@pytest.mark.gpu
def test_fused_linear_cross_entropy_matches_full_logits_on_gpu():
    """Liger's fused linear + CE (the CUDA path of chunked_cross_entropy) against fp32 full logits."""
    from acculturate.train.loss import fused_linear_ce_available
    if not fused_linear_ce_available():
        pytest.skip("liger-kernel is not installed")
    torch.manual_seed(0)
    head = torch.nn.Linear(256, 5000, bias=False, device="cuda", dtype=torch.bfloat16).requires_grad_(False)
    hidden = torch.randn(300, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(0, 5000, (300,), device="cuda")
    targets[::7] = -100
    fused = chunked_cross_entropy(hidden, head, targets)
    (g_fused,) = torch.autograd.grad(fused, [hidden])
    h32 = hidden.detach().float().requires_grad_(True)
    ref = torch.nn.functional.cross_entropy(h32 @ head.weight.float().t(), targets, reduction="sum")
    (g_ref,) = torch.autograd.grad(ref, [h32])
    assert abs(float(fused) - float(ref)) / abs(float(ref)) < 1e-2
    assert float((g_fused.float() - g_ref).norm() / g_ref.norm()) < 2e-2


def test_loss_weights_scale_each_examples_token_losses_on_every_path():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    feats = [{"input_ids": [3, 4, 5, 6], "labels": [-100, 4, 5, 6]},
             {"input_ids": [7, 8, 9], "labels": [-100, -100, 9]}]
    plain = [loss_sum(model, pad_collate([f], 0), torch.device("cpu"))[0] for f in feats]
    weighted = pad_collate([dict(feats[0], weight=0.5), dict(feats[1], weight=3.0)], 0)
    for threshold in (2 ** 62, 0):   # full logits, then the chunked path (one sum per distinct weight)
        total, n = loss_sum(model, weighted, torch.device("cpu"), chunked_above=threshold)
        assert n == 4   # the plain count: weights scale losses, not the normaliser
        torch.testing.assert_close(total, 0.5 * plain[0] + 3.0 * plain[1])
