"""`acculturate export --format gguf` on Gemma 3 (`gemma3-270m`): the file carries the keys, tensor
types and vocabulary llama.cpp's gemma3 loader reads (as the shipped Gemma GGUF has them), loads back
with transformers' GGUF reader and answers as the merged model does (f16: the same greedy tokens;
q8_0: at least 85% of them), and its tokenizer gives the same ids and chat prompt. One test, so the
model, the export and each transformers load are paid once: 65 s on the project's shared 2-core CPU
with one torch thread, two thirds of it in the two transformers loads (each parses the 262k-token
vocabulary's three arrays element by element)."""

import numpy as np
import pytest
import torch

from acculturate.adapters import LoRAConfig, apply_lora, merge_lora, save_adapter
from acculturate.cli import main
from acculturate.models import load
from acculturate.models.gguf_export import check_architecture, write_gguf
from acculturate.models.gguf_vocab import BYTE, CONTROL, NORMAL, USER_DEFINED
from acculturate.models.loading import contiguous_head_input, embedded_gguf, gguf_read_once

PROMPTS = ["What do people in the UK eat for breakfast?", "¿Cuál es la capital de Francia?",
           "日本の首都はどこですか？"]
TEXTS = ["Hello  world\n\nfoo", "Grüß Gott, wie geht's?", "東京は日本の首都です。", "नमस्ते दुनिया 😀",
         "   leading spaces, <end_of_turn> and tabs\t\there"]


def _metadata(path, arrays=()):
    # transformers' struct-based reader: ~1 s for a 262k-token vocabulary, where gguf.GGUFReader takes 8-25 s
    from transformers.integrations.gguf.reader import read_gguf_metadata

    return read_gguf_metadata(str(path), arrays)


def _greedy(model, tokenizer, eos, n=10):
    """Greedy answers to PROMPTS in one left-padded batch, each cut after its first EOS."""
    tokenizer.padding_side = "left"
    batch = tokenizer.apply_chat_template([[{"role": "user", "content": p}] for p in PROMPTS],
                                          add_generation_prompt=True, padding=True, return_tensors="pt",
                                          return_dict=True)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=n, do_sample=False, eos_token_id=eos,
                             pad_token_id=tokenizer.pad_token_id)[:, batch["input_ids"].shape[1]:].tolist()
    return [row[:next((i + 1 for i, t in enumerate(row) if t in eos), len(row))] for row in out]


def _agreement(got, expected):
    """The share of answer positions with the same token (a missing token counts as different)."""
    same = sum(a == b for x, y in zip(got, expected) for a, b in zip(x, y))
    return same / sum(max(len(x), len(y)) for x, y in zip(got, expected))


def _check_vocabulary(path):
    """Tokens, token types and score order of the written SentencePiece vocabulary equal those of the
    shipped gemma-3-270m GGUF (written by llama.cpp's converter from Gemma's tokenizer.model), which
    llama.cpp tokenizes with: 2+ spaces as user-defined pieces in real spaces, `<0xNN>` as byte tokens,
    the added special tokens as control tokens."""
    ours, _ = _metadata(path, ("tokenizer.ggml.tokens",))
    shipped, _ = _metadata(embedded_gguf("gemma3-270m"), ("tokenizer.ggml.tokens",))
    assert ours["tokenizer.ggml.tokens"] == shipped["tokenizer.ggml.tokens"]
    assert ours["tokenizer.ggml.token_type"] == shipped["tokenizer.ggml.token_type"]
    types = np.array(ours["tokenizer.ggml.token_type"])
    assert {t: int((types == t).sum()) for t in (NORMAL, CONTROL, USER_DEFINED, BYTE)} == \
        {NORMAL: 255474, CONTROL: 6249, USER_DEFINED: 165, BYTE: 256}
    mine, theirs = np.array(ours["tokenizer.ggml.scores"]), np.array(shipped["tokenizer.ggml.scores"])
    normal = types == NORMAL
    # llama.cpp merges by score order among normal tokens; the values are the file's own up to the
    # single characters (id 236743), which the converter numbered 31 further down.
    assert np.array_equal(np.argsort(-mine[normal], kind="stable"), np.argsort(-theirs[normal], kind="stable"))
    assert np.array_equal(mine[:236743], theirs[:236743]) and np.array_equal(mine[~normal], theirs[~normal])


@pytest.mark.slow   # the real Gemma 3 270M, GGUF files of 278 and 518 MB, two transformers loads of them
def test_gemma_gguf_export_loads_in_transformers_and_answers_like_the_merged_model(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = load("gemma3-270m", device="cpu", dtype="fp32")
    eos = model.generation_config.eos_token_id   # <eos> and <end_of_turn>; a GGUF file names one EOS id
    base_answers = _greedy(model, tok, eos)
    torch.manual_seed(0)
    lora = LoRAConfig(r=4, alpha=8, targets=("q_proj", "k_proj", "v_proj", "o_proj"))
    apply_lora(model, lora)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)   # a trained-looking adapter (B is zero at init)
    save_adapter(model, tmp_path / "adapter", "gemma3-270m", lora)
    merge_lora(model)
    expected = _greedy(model, tok, eos)
    assert expected != base_answers   # the adapter changes the answers: the merge is visible

    # The documented command on the adapter (loads the base it records, merges, writes q8_0 + Modelfile);
    # f16 straight from the merged model in memory.
    out = tmp_path / "export"
    assert main(["export", "--format", "gguf", "--quant", "q8_0", "--adapter", f"uk={tmp_path / 'adapter'}",
                 "--output", str(out)]) == 0
    assert "uk-q8_0.gguf" in capsys.readouterr().out
    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./uk-q8_0.gguf\n") and 'PARAMETER stop "<end_of_turn>"' in modelfile
    write_gguf(model, tok, out / "uk-f16.gguf", quant="f16", name="uk")
    _check_vocabulary(out / "uk-q8_0.gguf")

    results = {}
    for quant in ("f16", "q8_0"):
        path = out / f"uk-{quant}.gguf"
        meta, tensors = _metadata(path)
        # The gemma3 keys and values of the shipped gemma-3-270m GGUF (read with gguf.GGUFReader).
        assert meta["general.architecture"] == "gemma3" and meta["tokenizer.ggml.model"] == "llama"
        assert {k: meta[k] for k in meta if k.startswith("gemma3.")} == {
            "gemma3.context_length": 32768, "gemma3.embedding_length": 640, "gemma3.block_count": 18,
            "gemma3.feed_forward_length": 2048, "gemma3.attention.head_count": 4,
            "gemma3.attention.layer_norm_rms_epsilon": pytest.approx(1e-6), "gemma3.attention.key_length": 256,
            "gemma3.attention.value_length": 256, "gemma3.rope.freq_base": 1e6,
            "gemma3.attention.sliding_window": 512, "gemma3.attention.head_count_kv": 1}
        assert [meta[f"tokenizer.ggml.{k}"] for k in ("bos_token_id", "eos_token_id", "unknown_token_id",
                                                        "padding_token_id", "add_bos_token", "add_eos_token")] == \
            [2, 1, 3, 0, True, False]
        assert meta["tokenizer.chat_template"] == tok.chat_template and "<start_of_turn>" in tok.chat_template
        assert len(tensors) == 236 and "output.weight" not in tensors   # 18 x 13 + embedding + final norm; tied

        with gguf_read_once():   # transformers' loaders, sharing one parse of the file's metadata
            loaded = AutoModelForCausalLM.from_pretrained(str(out), gguf_file=path.name, dtype=torch.float32)
            gguf_tok = AutoTokenizer.from_pretrained(str(out), gguf_file=path.name) if quant == "f16" else None
        contiguous_head_input(loaded)   # else the 262k-row head is slow on CPU (see loading.py)
        if quant == "f16":
            # Norms went out as 1 + w and came back as w (transformers subtracts the 1): exactly.
            for name in ("model.layers.0.input_layernorm.weight", "model.layers.0.self_attn.q_norm.weight",
                         "model.layers.17.post_feedforward_layernorm.weight", "model.norm.weight"):
                assert torch.equal(loaded.state_dict()[name], model.state_dict()[name]), name
            for text in TEXTS:
                assert gguf_tok(text)["input_ids"] == tok(text)["input_ids"], text
            chat = [{"role": "user", "content": PROMPTS[1]}]
            assert gguf_tok.apply_chat_template(chat, add_generation_prompt=True) == \
                tok.apply_chat_template(chat, add_generation_prompt=True)
            ids = tok(PROMPTS[0], return_tensors="pt")["input_ids"]
            with torch.no_grad():
                results["f16 max logit diff"] = (loaded(ids).logits - model(ids).logits).abs().max().item()
        got = _greedy(loaded, tok, eos)
        results[quant] = _agreement(got, expected)
        results[quant + " vs base"] = _agreement(got, base_answers)
        if quant == "f16":
            assert got == expected, (got, expected)
        del loaded
    print(results)
    assert results["f16 max logit diff"] < 0.1, results   # weights rounded to f16 only (measured 0.016)
    assert results["q8_0"] >= 0.85 and results["q8_0"] > results["q8_0 vs base"], results


def test_check_architecture_refuses_what_the_writer_cannot_write():
    from transformers import Gemma3TextConfig, LlamaConfig, Qwen2Config

    assert check_architecture(LlamaConfig()).name == "llama"
    assert check_architecture(Gemma3TextConfig()).name == "gemma3"
    with pytest.raises(ValueError, match=r"writes Llama-architecture models .* and Gemma 3 .* not 'qwen' "
                                         r"\(model_type 'qwen2'\).*convert_hf_to_gguf"):
        check_architecture(Qwen2Config(), "qwen")
    # llama.cpp's gemma3 graph fixes the local RoPE base and the sliding pattern: a config that differs
    # would run differently there, so it is refused rather than written.
    local = Gemma3TextConfig(rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                              "sliding_attention": {"rope_type": "default", "rope_theta": 2e4}})
    with pytest.raises(ValueError, match="sliding-layer RoPE base of 20000"):
        check_architecture(local)
    with pytest.raises(ValueError, match="not 5 sliding"):
        check_architecture(Gemma3TextConfig(num_hidden_layers=4, layer_types=["full_attention"] * 4))


@pytest.mark.slow
def test_llama_cpp_reads_the_gemma_file_as_transformers_does(tmp_path):
    """Where llama-cpp-python is installed (it builds llama.cpp from source: the `llamacpp` extra, not in
    `test`), llama.cpp itself loads the file, splits text into the same ids as the HF tokenizer (its
    SentencePiece merges follow the written scores) and answers greedily as transformers does."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from acculturate.jobs.export import export_gguf

    result = export_gguf("gemma3-270m", [], tmp_path / "gguf", quant="f16")
    model, tok = load("gemma3-270m", device="cpu", dtype="fp32")
    llm = llama_cpp.Llama(model_path=result["path"], n_ctx=512, verbose=False, seed=0)
    assert llm.metadata["tokenizer.chat_template"] == tok.chat_template
    for text in TEXTS:
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == tok(text)["input_ids"], text
    eos = model.generation_config.eos_token_id
    expected = _greedy(model, tok, eos)
    got = []
    for prompt in PROMPTS:
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      return_dict=True)["input_ids"]
        answer = []
        for token in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
            answer.append(token)
            if token in eos or len(answer) == 10:
                break
        got.append(answer)
    # llama.cpp sums in another order than torch: allow one of the three answers to drift late
    assert sum(a == b or a[:5] == b[:5] for a, b in zip(got, expected)) >= 2, (got, expected)
    assert _agreement(got, expected) >= 0.8, (got, expected)
