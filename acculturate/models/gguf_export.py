"""Write a Hugging Face Llama-architecture model (SmolLM2, Llama, Mistral-style) as a GGUF file that
llama.cpp, Ollama and LM Studio run, with its tokenizer and chat template inside.

Names and layout follow llama.cpp's ``convert_hf_to_gguf.py`` (``LlamaModel``): tensor names from
gguf-py's ``TensorNameMap``, the q/k projection rows permuted from HF's rotate-half RoPE layout to
GGUF's interleaved one, metadata under ``llama.*``, a byte-level BPE tokenizer as
``tokenizer.ggml.model = gpt2`` (tokens, token types, merges, special ids). Quantization uses gguf-py's
numpy reference quantizers (the same bit layout as llama.cpp's ``llama-quantize``):

- ``f16``: every matrix in float16, norms in float32.
- ``q8_0``: matrices in 8-bit blocks of 32 (one f16 scale each; 8.5 bits/weight).
- ``q4_0`` / ``q4_1``: matrices in 4-bit blocks of 32 (scale, and for q4_1 a minimum; 4.5 / 5
  bits/weight); the token embedding (also the output head when tied) stays Q8_0, as in the shipped
  SmolLM2 GGUF, whose 4-bit file does the same.

A matrix whose rows are not a multiple of 32 values stays f16 (block formats need whole blocks).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

QUANTS = ("f16", "q8_0", "q4_0", "q4_1")
_ARCH = "llama"
# llama.cpp's token types (gguf.TokenType): NORMAL 1, CONTROL 3, USER_DEFINED 4, UNUSED 5.
_NORMAL, _CONTROL, _USER_DEFINED, _UNUSED = 1, 3, 4, 5


def _qtype(quant: str):
    import gguf

    return {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0,
            "q4_0": gguf.GGMLQuantizationType.Q4_0, "q4_1": gguf.GGMLQuantizationType.Q4_1}[quant]


def _file_type(quant: str):
    import gguf

    return {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
            "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1}[quant]


def permute_rope(weights: np.ndarray, n_head: int) -> np.ndarray:
    """HF's q/k rows (per head: first half then second half of the rotary pairs) -> GGUF's interleaved
    pairs; ``convert_hf_to_gguf.LlamaModel.permute``. ``weights``: (n_head * head_dim, hidden)."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _check_model(config) -> None:
    if getattr(config, "model_type", None) not in ("llama", "mistral"):
        raise ValueError(f"GGUF export supports Llama-architecture models (llama, mistral), got "
                         f"model_type {getattr(config, 'model_type', None)!r}")
    rope = getattr(config, "rope_scaling", None) or getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ValueError(f"GGUF export: RoPE scaling {rope!r} is not written yet (plain RoPE only)")


def tokenizer_fields(tokenizer, vocab_size: int) -> dict:
    """The GGUF tokenizer fields of a byte-level BPE (gpt2-style) HF tokenizer, padded to
    ``vocab_size`` rows (``[PAD<i>]`` unused tokens, as convert_hf_to_gguf does).

    Returns:
        ``{"tokens", "token_types", "merges", "bos", "eos", "unk", "pad", "add_bos", "chat_template"}``.
    """
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    model = state.get("model", {})
    if model.get("type") != "BPE" or state.get("pre_tokenizer") is None or "ByteLevel" not in json.dumps(
            state.get("pre_tokenizer")):
        raise ValueError("GGUF export writes byte-level BPE tokenizers (gpt2-style, as SmolLM2's); this "
                         f"tokenizer's model is {model.get('type')!r}")
    n = len(tokenizer)
    if n > vocab_size:
        raise ValueError(f"the tokenizer has {n} tokens but the model only {vocab_size} embedding rows")
    tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
    added = {t.content: t for t in tokenizer.added_tokens_decoder.values()}
    types = []
    for tok in tokens:
        info = added.get(tok)
        types.append(_NORMAL if info is None else (_CONTROL if info.special else _USER_DEFINED))
    tokens += [f"[PAD{i}]" for i in range(n, vocab_size)]
    types += [_UNUSED] * (vocab_size - n)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    first = tokenizer("a", add_special_tokens=True)["input_ids"]
    return {"tokens": tokens, "token_types": types, "merges": merges,
            "bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "unk": tokenizer.unk_token_id,
            "pad": tokenizer.pad_token_id,
            "add_bos": bool(first and tokenizer.bos_token_id is not None and first[0] == tokenizer.bos_token_id),
            "chat_template": tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None}


def _tensor(data: np.ndarray, quant: str, embedding: bool):
    """``(array, raw_dtype)`` for ``GGUFWriter.add_tensor``: 1-D in f32, matrices as ``quant``."""
    from gguf import quants

    if data.ndim < 2:
        return data.astype(np.float32), None
    if quant == "f16" or data.shape[-1] % 32:
        return data.astype(np.float16), None
    qtype = _qtype("q8_0" if embedding and quant in ("q4_0", "q4_1") else quant)
    return quants.quantize(data.astype(np.float32), qtype), qtype


def write_gguf(model, tokenizer, path: str | Path, *, quant: str = "f16", name: str = "model",
               pre: str = "default") -> Path:
    """Write ``model`` (an HF Llama-architecture causal LM with no adapter layers left: merge first)
    and ``tokenizer`` as one GGUF file at ``path`` (written to a temporary name, then renamed).

    Args:
        quant: ``f16``, ``q8_0``, ``q4_0`` or ``q4_1`` (see the module docstring).
        name: ``general.name``.
        pre: ``tokenizer.ggml.pre``, llama.cpp's pre-tokenizer name (``smollm`` for SmolLM2; taken
            from the base GGUF when the model came from one).
    Returns:
        ``path``.
    """
    import gguf

    if quant not in QUANTS:
        raise ValueError(f"quant: expected one of {QUANTS}, got {quant!r}")
    config = model.config
    _check_model(config)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    state = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    vocab_size = state["model.embed_tokens.weight"].shape[0]
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    tied = bool(getattr(config, "tie_word_embeddings", False))

    writer = gguf.GGUFWriter(str(tmp), _ARCH)
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    writer.add_rope_freq_base(float(getattr(config, "rope_theta", None) or rope.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(vocab_size)
    writer.add_rope_dimension_count(head_dim)
    writer.add_file_type(_file_type(quant))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    tok = tokenizer_fields(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tok["tokens"])
    writer.add_token_types(tok["token_types"])
    writer.add_token_merges(tok["merges"])
    for key, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                     ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        if tok[key] is not None:
            add(tok[key])
    writer.add_add_bos_token(tok["add_bos"])
    writer.add_add_space_prefix(False)
    if tok["chat_template"]:
        writer.add_chat_template(tok["chat_template"])

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for hf_name, data in state.items():
        if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
            continue
        if hf_name.endswith("q_proj.weight"):
            data = permute_rope(data, n_head)
        elif hf_name.endswith("k_proj.weight"):
            data = permute_rope(data, n_kv)
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ValueError(f"GGUF export: no GGUF name for tensor {hf_name!r}")
        array, raw = _tensor(data, quant, embedding=gguf_name.startswith("token_embd"))
        writer.add_tensor(gguf_name, array, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(path)
    return path


def base_pre_tokenizer(model_name: str) -> str | None:
    """``tokenizer.ggml.pre`` of the GGUF file ``model_name`` resolves to (the default model's), else None."""
    import gguf

    from acculturate.models.loading import resolve

    try:
        kind, source = resolve(model_name)
    except Exception:
        return None
    if kind != "gguf":
        return None
    field = gguf.GGUFReader(str(source)).fields.get("tokenizer.ggml.pre")
    return field.contents() if field is not None else None
