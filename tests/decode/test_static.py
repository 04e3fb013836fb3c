"""The static-KV-cache decoder (CUDA-graph path on GPUs) against our generate() on the real default
model: same tokens greedy and seeded, left-padded batches, k samples from one prefill."""

import pytest
import torch

from acculturate.decode import GenerationConfig, eos_token_ids, generate
from acculturate.decode.generate import encode_prompts, row_generator
from acculturate.decode.static import StaticDecoder, generate_static

# Two prompts of different lengths (so one row is left-padded), few tokens: each generate() call on
# the shared 2-core machine is the slow part of these tests.
QUESTIONS = ["What is the capital of Indonesia?", "Name a dish."]


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                          add_generation_prompt=True) for q in QUESTIONS]


def test_rejects_unsupported_and_oversized():
    from transformers import GPT2Config, GPT2LMHeadModel
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32))
    with pytest.raises(ValueError, match="model types"):
        StaticDecoder(gpt2, 1, 8)


@pytest.mark.slow
def test_greedy_and_seeded_sampling_equal_generate(default_model, prompts):
    model, tok = default_model
    ids = encode_prompts(tok, prompts)
    eos = eos_token_ids(model, tok)
    greedy = generate(model, tok, prompts, GenerationConfig(max_new_tokens=6, batch_size=2))
    decoder = StaticDecoder(model, batch_size=2, max_length=max(map(len, ids)) + 6)
    assert decoder.generate(ids, 6, eos_ids=eos) == [c.token_ids for c in greedy]
    with pytest.raises(ValueError, match="max_length"):
        decoder.generate(ids, 7)

    config = GenerationConfig(max_new_tokens=6, temperature=0.9, top_p=0.9, top_k=50, seed=7, batch_size=2)
    sampled = generate(model, tok, prompts, config)
    decoder = StaticDecoder(model, batch_size=3, max_length=max(map(len, ids)) + 6,
                            temperature=0.9, top_k=50, top_p=0.9, check_every=4)
    gens = [row_generator(config, i) for i in range(2)]
    assert decoder.generate(ids, 6, generators=gens, eos_ids=eos) == [c.token_ids for c in sampled]
    # The text-level wrapper gives generate()'s completions, text and finish reason included.
    assert generate_static(model, tok, prompts, config) == sampled


@pytest.mark.slow
def test_samples_share_one_prefill(default_model, prompts):
    model, tok = default_model
    ids = encode_prompts(tok, prompts[:1])
    config = GenerationConfig(max_new_tokens=5, temperature=1.0, seed=3, batch_size=3)
    separate = generate(model, tok, prompts[:1] * 3, config)   # the prompt prefilled 3 times
    decoder = StaticDecoder(model, batch_size=3, max_length=len(ids[0]) + 5, temperature=1.0)
    gens = [row_generator(config, i) for i in range(3)]
    shared = decoder.generate(ids, 5, num_samples=3, generators=gens, eos_ids=eos_token_ids(model, tok))
    assert shared == [c.token_ids for c in separate]
    assert len({tuple(s) for s in shared}) > 1
    assert generate_static(model, tok, prompts[:1], config, num_samples=3) == separate
    with pytest.raises(ValueError, match="repetition"):
        generate_static(model, tok, prompts[:1], GenerationConfig(repetition_penalty=1.2))


@pytest.mark.gpu
def test_cuda_graph_path_equals_eager_path_on_gpu():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256)
    model = LlamaForCausalLM(config).cuda().to(torch.bfloat16).eval()
    prompt = [[5, 6, 7, 8, 9], [1, 2, 3]]
    outs = []
    for graph in (False, True):
        decoder = StaticDecoder(model, batch_size=2, max_length=40, cuda_graph=graph)
        outs.append(decoder.generate(prompt, 30))
        assert (decoder.graph is not None) == graph
    assert outs[0] == outs[1]
    with torch.no_grad():   # and the greedy tokens follow the model's own forward
        row = torch.tensor([prompt[0] + outs[0][0][:-1]], device="cuda")
        assert model(row).logits[0, len(prompt[0]) - 1:].argmax(-1).tolist()[:10] == outs[0][0][:10]


@pytest.mark.gpu
def test_compiled_step_equals_eager_step_on_gpu():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256)
    model = LlamaForCausalLM(config).cuda().eval()   # fp32
    with torch.no_grad():
        model.lm_head.weight.mul_(50)   # sharp logits: argmax is not decided by rounding
    prompt = [[5, 6, 7, 8, 9], [1, 2, 3]]
    eager = StaticDecoder(model, batch_size=2, max_length=40).generate(prompt, 30)
    compiled = StaticDecoder(model, batch_size=2, max_length=40, compile=True).generate(prompt, 30)
    assert [row[:10] for row in compiled] == [row[:10] for row in eager]


@pytest.mark.gpu
def test_compiled_whole_step_at_batch_one_equals_eager_step_on_gpu():
    """compile=True at batch 1 compiles the whole step (layers, head, top-p sampling) with
    coordinate-descent tuning: greedy and seeded top-p tokens follow the eager step."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256)
    model = LlamaForCausalLM(config).cuda().eval()   # fp32
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
    prompt = [[5, 6, 7, 8, 9]]
    for kw in (dict(), dict(temperature=0.7, top_p=0.9)):
        outs = []
        for compile in (False, True):
            decoder = StaticDecoder(model, batch_size=1, max_length=40, compile=compile, **kw)
            gens = [torch.Generator().manual_seed(3)]
            outs.append(decoder.generate(prompt, 30, generators=gens))
        assert outs[1][0][:10] == outs[0][0][:10]


@pytest.mark.gpu
def test_generate_on_cuda_decodes_through_graphs_with_the_eager_tokens(cuda_llama):
    """generate() on a CUDA Llama-style model takes the static CUDA-graph decoder (one decoder per
    batch shape, reused across chunks) and returns the eager loop's completions, greedy and seeded."""
    from acculturate.decode.generate import uses_static_decoder

    model, tok = cuda_llama
    questions = QUESTIONS + ["Say hello in French.", "Count to five."]
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                       add_generation_prompt=True) for q in questions]
    for config in (GenerationConfig(max_new_tokens=24, batch_size=3),
                   GenerationConfig(max_new_tokens=24, batch_size=3, temperature=0.8, top_p=0.9, seed=11)):
        assert uses_static_decoder(model, config)
        eager = GenerationConfig(**{**config.__dict__, "cuda_graphs": False})
        assert not uses_static_decoder(model, eager)
        assert generate(model, tok, prompts, config) == generate(model, tok, prompts, eager)
        # n=2: the same samples; cached_tokens may differ, as the two paths batch a prompt's copies differently.
        same = lambda outs: [(c.text, c.token_ids, c.finish_reason) for c in outs]  # noqa: E731
        assert same(generate(model, tok, prompts[:2], config, n=2)) == same(generate(model, tok, prompts[:2], eager, n=2))
    assert not uses_static_decoder(model, GenerationConfig(repetition_penalty=1.2))
