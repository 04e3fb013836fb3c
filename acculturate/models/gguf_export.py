"""Write a Hugging Face model as a GGUF file that llama.cpp, Ollama and LM Studio run, with its
tokenizer and chat template inside: Llama-architecture models (SmolLM2, Llama, Mistral-style) and
Gemma 3 (``gemma3-270m``).

Names and layout follow llama.cpp's ``convert_hf_to_gguf.py`` (``LlamaModel``, ``Gemma3Model``); what
differs between the two is one :class:`Architecture` entry each in :data:`ARCHITECTURES`:

- **llama**: metadata under ``llama.*``; the q/k projection rows permuted from HF's rotate-half RoPE
  layout to GGUF's interleaved one; a byte-level BPE tokenizer as ``tokenizer.ggml.model = gpt2``
  (tokens, token types, merges, special ids).
- **gemma3**: metadata under ``gemma3.*`` (head size, sliding window, the global layers' RoPE base;
  llama.cpp fixes the local layers' base at 10000 and the pattern at 5 sliding + 1 global layer, so a
  config that differs is refused); q/k rows as they are (llama.cpp runs Gemma's RoPE NeoX-style, as HF
  does); every RMSNorm weight, q/k norms included, stored as ``1 + w`` (HF's Gemma norm multiplies by
  ``1 + w``, llama.cpp's by the stored weight; transformers' GGUF reader subtracts the 1 again); a
  SentencePiece vocabulary as ``tokenizer.ggml.model = llama`` (tokens, scores, token types, no merges).
  The token embedding is written as it is: both scale it by sqrt(hidden) inside the model.

Quantization uses gguf-py's numpy reference quantizers (the same bit layout as llama.cpp's
``llama-quantize``):

- ``f16``: every matrix in float16, norms in float32.
- ``q8_0``: matrices in 8-bit blocks of 32 (one f16 scale each; 8.5 bits/weight).
- ``q4_0`` / ``q4_1``: matrices in 4-bit blocks of 32 (scale, and for q4_1 a minimum; 4.5 / 5
  bits/weight); the token embedding (also the output head when tied) stays Q8_0, as in the shipped
  SmolLM2 GGUF, whose 4-bit file does the same.

A matrix whose rows are not a multiple of 32 values stays f16 (block formats need whole blocks).

**Rounding** (``rounding``): llama.cpp's quantizers round to the nearest 4-bit level. That erases an
adapter merged into a base that is itself already on that 4-bit grid, as the embedded default is (a
Q4_1 file): a LoRA delta is mostly smaller than half a step, so nearest rounding puts ~93% of it back
on the base's own values (measured on the default UK adapter: 7% of the delta kept). The q4_1 export
then answered as the *base* model does (token agreement 0.78 with the base, 0.08 with the merged
model). ``rounding="stochastic"`` rounds each weight up with probability equal to its distance
from the level below (seeded per tensor, so the file is reproducible): unbiased, so the delta
survives on average (98-100% kept, noise ~7x the delta's size per weight, averaging out over a dot
product); bench/gguf_export.py's q4_1 row went from 0.015 token agreement with the merged model
(0 of 12 answers identical) to 0.595 (8 of 12, as q4_0). Same bytes layout, llama.cpp reads it as any
Q4 file. :func:`acculturate.jobs.export.export_gguf` picks it when it merges an adapter into a base
already on the target grid (:func:`on_grid`).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from acculturate.models.gguf_vocab import byte_level_fields, sentencepiece_fields

log = logging.getLogger(__name__)

QUANTS = ("f16", "q8_0", "q4_0", "q4_1")
ROUNDINGS = ("nearest", "stochastic")


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


def _rope(config) -> dict:
    return getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _check_llama(config) -> None:
    rope = _rope(config)
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ValueError(f"GGUF export: RoPE scaling {rope!r} is not written yet (plain RoPE only)")


def _llama_metadata(writer, config, n_vocab: int) -> None:
    n_head = config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(config.num_key_value_heads or n_head)
    writer.add_rope_freq_base(float(getattr(config, "rope_theta", None) or _rope(config).get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(n_vocab)
    writer.add_rope_dimension_count(_head_dim(config))


# llama.cpp's gemma3 graph (llama-model.cpp, LLM_ARCH_GEMMA3) fixes what the file does not say: every
# 6th layer global, the rest sliding; the sliding layers' RoPE base 10000; attention scaled by
# 1/sqrt(head_dim) (27B excepted); GELU (tanh) in the MLP.
_GEMMA3_SWA_PATTERN, _GEMMA3_LOCAL_BASE = 6, 10000.0


def _check_gemma3(config) -> None:
    def refuse(what):
        raise ValueError(f"GGUF export: this Gemma 3 config has {what}; the gemma3 file this writer produces "
                         "cannot say so, and llama.cpp would run it as the 270M-1B layout (5 sliding + 1 global "
                         "layers, local RoPE base 10000, plain RoPE, 1/sqrt(head_dim) attention scale)")

    rope = _rope(config)
    for layer_type in ("full_attention", "sliding_attention"):
        params = rope.get(layer_type, {})
        if params.get("rope_type", "default") != "default":
            refuse(f"RoPE scaling {params!r} on its {layer_type} layers")
    local_base = rope.get("sliding_attention", {}).get("rope_theta", _GEMMA3_LOCAL_BASE)
    if float(local_base) != _GEMMA3_LOCAL_BASE:
        refuse(f"a sliding-layer RoPE base of {local_base} (not {_GEMMA3_LOCAL_BASE:g})")
    expected = ["full_attention" if (i + 1) % _GEMMA3_SWA_PATTERN == 0 else "sliding_attention"
                for i in range(config.num_hidden_layers)]
    if list(getattr(config, "layer_types", expected)) != expected:
        refuse(f"layer types {config.layer_types} (not 5 sliding + 1 global)")
    if getattr(config, "query_pre_attn_scalar", _head_dim(config)) != _head_dim(config):
        refuse(f"query_pre_attn_scalar {config.query_pre_attn_scalar} != head_dim {_head_dim(config)}")
    if getattr(config, "attn_logit_softcapping", None) is not None:
        refuse(f"attention logit softcapping {config.attn_logit_softcapping}")
    if getattr(config, "hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        refuse(f"activation {config.hidden_activation!r}")
    if getattr(config, "use_bidirectional_attention", False):
        refuse("bidirectional attention")


def _gemma3_metadata(writer, config, n_vocab: int) -> None:
    # The keys and order of the shipped gemma-3-270m GGUF (convert_hf_to_gguf.Gemma3Model).
    head_dim = _head_dim(config)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(float(_rope(config).get("full_attention", {}).get("rope_theta", 1_000_000.0)))
    writer.add_sliding_window(config.sliding_window)
    writer.add_head_count_kv(config.num_key_value_heads)
    if getattr(config, "final_logit_softcapping", None):
        writer.add_final_logit_softcapping(float(config.final_logit_softcapping))


@dataclass(frozen=True)
class Architecture:
    """What the writer does differently for one GGUF architecture."""

    name: str                  # general.architecture, the prefix of its metadata keys, gguf.MODEL_ARCH by name
    model_types: tuple[str, ...]   # the HF ``config.model_type`` values written as it
    tokenizer: str             # tokenizer.ggml.model: "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    rope_permute: bool         # q/k rows from HF's rotate-half layout to GGUF's interleaved pairs
    norm_shift: float          # added to every ``*norm.weight`` (Gemma: llama.cpp multiplies by w, HF by 1 + w)
    spaces_user_defined: bool  # runs of spaces are user-defined pieces (Gemma's SentencePiece model)
    check: Callable            # (config) -> None; ValueError for what llama.cpp's graph would run otherwise
    metadata: Callable         # (writer, config, n_vocab) -> None; the ``{name}.*`` hyperparameters


ARCHITECTURES = {
    "llama": Architecture("llama", ("llama", "mistral"), tokenizer="gpt2", rope_permute=True, norm_shift=0.0,
                          spaces_user_defined=False, check=_check_llama, metadata=_llama_metadata),
    "gemma3": Architecture("gemma3", ("gemma3_text",), tokenizer="llama", rope_permute=False, norm_shift=1.0,
                           spaces_user_defined=True, check=_check_gemma3, metadata=_gemma3_metadata),
}


def check_architecture(config, model_name: str | None = None) -> Architecture:
    """The :class:`Architecture` ``config`` is written as; before any work, a ValueError naming the
    model, its ``model_type`` and what to do instead for one this writer cannot write."""
    model_type = getattr(config, "model_type", None)
    arch = next((a for a in ARCHITECTURES.values() if model_type in a.model_types), None)
    if arch is None:
        named = f"{model_name!r} (model_type {model_type!r})" if model_name else f"model_type {model_type!r}"
        raise ValueError(
            "GGUF export writes Llama-architecture models (llama, mistral; e.g. smollm2-135m) and Gemma 3 "
            f"(gemma3_text; gemma3-270m), not {named}. Write a merged Hugging Face model with "
            "`acculturate export --format vllm --merge` (or `acculturate merge`) and convert it with llama.cpp's "
            "convert_hf_to_gguf.py, which supports it")
    arch.check(config)
    return arch


def tokenizer_fields(tokenizer, vocab_size: int, arch: Architecture = ARCHITECTURES["llama"]) -> dict:
    """The GGUF tokenizer fields of ``tokenizer`` in the form ``arch`` writes (:mod:`gguf_vocab`)."""
    if arch.tokenizer == "gpt2":
        return byte_level_fields(tokenizer, vocab_size)
    return sentencepiece_fields(tokenizer, vocab_size, spaces_user_defined=arch.spaces_user_defined)


def quantize_q4_stochastic(data: np.ndarray, quant: str, seed: int = 0) -> np.ndarray:
    """``data`` (rows a multiple of 32 values) as ``q4_0`` or ``q4_1`` blocks, bytes laid out as
    llama.cpp's ``block_q4_0`` / ``block_q4_1`` (and gguf-py's ``quants.Q4_0/Q4_1``): an f16 scale
    ``d`` (q4_1: then an f16 minimum ``m``), then 16 bytes whose low nibbles hold values 0-15 of the
    block and high nibbles values 16-31. Scale and minimum are llama.cpp's (q4_0: ``d = max / -8``
    with ``max`` the value of largest magnitude; q4_1: ``d = (max - min) / 15``); only the rounding
    differs: ``floor(v + u)``, ``u`` uniform in [0, 1), instead of ``floor(v + 0.5)``.

    Returns:
        uint8 array of shape ``(*data.shape[:-1], data.shape[-1] // 32 * bytes_per_block)``.
    """
    if quant not in ("q4_0", "q4_1"):
        raise ValueError(f"stochastic rounding is for q4_0 and q4_1, got {quant!r}")
    blocks = data.astype(np.float32).reshape(-1, 32)                          # (n_blocks, 32)
    u = np.random.default_rng(seed).random(blocks.shape, dtype=np.float32)
    if quant == "q4_0":
        top = np.take_along_axis(blocks, np.abs(blocks).argmax(-1, keepdims=True), -1)
        d = top / -8
        low, offset = None, np.float32(8)
    else:
        low = blocks.min(-1, keepdims=True)
        d = (blocks.max(-1, keepdims=True) - low) / 15
        offset = np.float32(0)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, 0, 1 / d).astype(np.float32)
    levels = (blocks - (0 if low is None else low)) * inv + offset           # (n_blocks, 32) in [0, 15]
    qs = np.floor(levels + u).clip(0, 15).astype(np.uint8).reshape(-1, 2, 16)
    qs = qs[:, 0, :] | (qs[:, 1, :] << np.uint8(4))                           # (n_blocks, 16)
    parts = [d.astype(np.float16).view(np.uint8)]
    if low is not None:
        parts.append(low.astype(np.float16).view(np.uint8))
    return np.concatenate(parts + [qs], axis=-1).reshape(*data.shape[:-1], -1)


def on_grid(weight: np.ndarray, quant: str) -> bool:
    """Whether ``weight`` already holds ``quant``'s levels (nearest rounding gives it back unchanged
    to within f16 precision), as every matrix of a model loaded from a file of that type does."""
    from gguf import quants

    if quant not in ("q4_0", "q4_1") or weight.ndim < 2 or weight.shape[-1] % 32:
        return False
    weight = weight.astype(np.float32)
    back = quants.dequantize(quants.quantize(weight, _qtype(quant)), _qtype(quant))
    return bool(np.allclose(back, weight, rtol=0, atol=1e-3 * float(np.abs(weight).max())))


def _tensor(data: np.ndarray, quant: str, embedding: bool, rounding: str = "nearest", seed: int = 0):
    """``(array, raw_dtype)`` for ``GGUFWriter.add_tensor``: 1-D in f32, matrices as ``quant``."""
    from gguf import quants

    if data.ndim < 2:
        return data.astype(np.float32), None
    if quant == "f16" or data.shape[-1] % 32:
        return data.astype(np.float16), None
    if embedding and quant in ("q4_0", "q4_1"):
        quant = "q8_0"
    if rounding == "stochastic" and quant in ("q4_0", "q4_1"):
        return quantize_q4_stochastic(data, quant, seed), _qtype(quant)
    return quants.quantize(data.astype(np.float32), _qtype(quant)), _qtype(quant)


def write_gguf(model, tokenizer, path: str | Path, *, quant: str = "f16", name: str = "model",
               pre: str | None = None, rounding: str = "nearest") -> Path:
    """Write ``model`` (an HF causal LM of an architecture in :data:`ARCHITECTURES`, with no adapter
    layers left: merge first) and ``tokenizer`` as one GGUF file at ``path`` (written to a temporary
    name, then renamed).

    Args:
        quant: ``f16``, ``q8_0``, ``q4_0`` or ``q4_1`` (see the module docstring).
        name: ``general.name``.
        pre: ``tokenizer.ggml.pre``, llama.cpp's pre-tokenizer name (``smollm`` for SmolLM2; taken
            from the base GGUF when the model came from one); None: ``default``.
        rounding: ``nearest`` (llama.cpp's) or ``stochastic`` (q4_0/q4_1 matrices; see the module
            docstring), seeded by each tensor's position in the file.
    Returns:
        ``path``.
    """
    import gguf

    if quant not in QUANTS:
        raise ValueError(f"quant: expected one of {QUANTS}, got {quant!r}")
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding: expected one of {ROUNDINGS}, got {rounding!r}")
    config = model.config
    arch = check_architecture(config)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    state = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    n_vocab = state["model.embed_tokens.weight"].shape[0]
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    tied = bool(getattr(config, "tie_word_embeddings", False))

    writer = gguf.GGUFWriter(str(tmp), arch.name)
    writer.add_name(name)
    arch.metadata(writer, config, n_vocab)
    writer.add_file_type(_file_type(quant))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    tok = tokenizer_fields(tokenizer, n_vocab, arch)
    writer.add_tokenizer_model(tok["model"])
    writer.add_tokenizer_pre(pre or "default")
    writer.add_token_list(tok["tokens"])
    if "scores" in tok:
        writer.add_token_scores(tok["scores"])
    writer.add_token_types(tok["token_types"])
    if "merges" in tok:
        writer.add_token_merges(tok["merges"])
    for key, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                     ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        if tok[key] is not None:
            add(tok[key])
    writer.add_add_bos_token(tok["add_bos"])
    writer.add_add_eos_token(tok["add_eos"])
    writer.add_add_space_prefix(False)
    if tok["chat_template"]:
        writer.add_chat_template(tok["chat_template"])

    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.name.upper()), config.num_hidden_layers)
    for index, (hf_name, data) in enumerate(state.items()):
        if "rotary_emb." in hf_name or (tied and hf_name == "lm_head.weight"):
            continue
        if arch.rope_permute and hf_name.endswith("q_proj.weight"):
            data = permute_rope(data, n_head)
        elif arch.rope_permute and hf_name.endswith("k_proj.weight"):
            data = permute_rope(data, n_kv)
        if arch.norm_shift and hf_name.endswith("norm.weight"):
            data = data + np.float32(arch.norm_shift)
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ValueError(f"GGUF export: no GGUF name for tensor {hf_name!r}")
        array, raw = _tensor(data, quant, embedding=gguf_name.startswith("token_embd"), rounding=rounding,
                             seed=index)
        writer.add_tensor(gguf_name, array, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(path)
    return path


def base_pre_tokenizer(model_name: str) -> str | None:
    """``tokenizer.ggml.pre`` of the GGUF file ``model_name`` resolves to (the default model's), else None."""
    from acculturate.models.loading import resolve

    try:
        kind, source = resolve(model_name)
    except Exception:
        return None
    if kind != "gguf":
        return None
    stat = source.stat()
    return _pre_tokenizer_field(str(source.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _pre_tokenizer_field(path: str, size: int, mtime_ns: int) -> str | None:
    """One parse per file version (a parse reads every metadata field: ~10 s for SmolLM2's GGUF)."""
    import gguf

    field = gguf.GGUFReader(path).fields.get("tokenizer.ggml.pre")
    return field.contents() if field is not None else None
