"""A Hugging Face tokenizer as GGUF tokenizer fields, in the two forms llama.cpp reads:

- ``gpt2``: byte-level BPE (SmolLM2): tokens, token types and merges (:func:`byte_level_fields`).
- ``llama``: SentencePiece (Gemma 3): tokens, scores and token types, no merges; llama.cpp merges
  the adjacent pair whose joined token scores highest (:func:`sentencepiece_fields`).

Both pad the vocabulary to the model's embedding rows and carry the special ids, whether BOS/EOS are
added, and the chat template.
"""

from __future__ import annotations

import json
import re

# llama.cpp's token types (gguf.TokenType): NORMAL 1, CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6.
NORMAL, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 3, 4, 5, 6
# The score llama.cpp's converter gives control and user-defined pieces (matched whole, never merged).
_UNMERGED_SCORE = -1000.0
_BYTE_TOKEN = re.compile(r"^<0x[0-9A-F]{2}>$")


def _state(tokenizer) -> dict:
    return json.loads(tokenizer.backend_tokenizer.to_str())


def _common(tokenizer, vocab_size: int) -> dict:
    """Special ids, added BOS/EOS and the chat template; raises if the vocabulary outgrows the model."""
    if len(tokenizer) > vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the model only {vocab_size} embedding rows")
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return {"bos": bos, "eos": eos, "unk": tokenizer.unk_token_id, "pad": tokenizer.pad_token_id,
            "add_bos": bool(ids and bos is not None and ids[0] == bos),
            "add_eos": bool(ids and eos is not None and ids[-1] == eos),
            "chat_template": tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None}


def _added_type(tokenizer) -> dict[str, int]:
    """Added tokens: special ones are CONTROL, the others USER_DEFINED (both matched whole in text)."""
    return {t.content: CONTROL if t.special else USER_DEFINED for t in tokenizer.added_tokens_decoder.values()}


def byte_level_fields(tokenizer, vocab_size: int) -> dict:
    """The GGUF fields of a byte-level BPE (gpt2-style) HF tokenizer, padded to ``vocab_size`` rows
    (``[PAD<i>]`` unused tokens, as convert_hf_to_gguf does).

    Returns:
        ``{"model": "gpt2", "tokens", "token_types", "merges", "bos", "eos", "unk", "pad", "add_bos",
        "add_eos", "chat_template"}``.
    """
    state = _state(tokenizer)
    model = state.get("model", {})
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(state.get("pre_tokenizer")):
        raise ValueError("expected a byte-level BPE tokenizer (gpt2-style, as SmolLM2's); this tokenizer's "
                         f"model is {model.get('type')!r}")
    fields = _common(tokenizer, vocab_size)
    n = len(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
    added = _added_type(tokenizer)
    types = [added.get(tok, NORMAL) for tok in tokens]
    tokens += [f"[PAD{i}]" for i in range(n, vocab_size)]
    types += [UNUSED] * (vocab_size - n)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {"model": "gpt2", "tokens": tokens, "token_types": types, "merges": merges, **fields}


def sentencepiece_fields(tokenizer, vocab_size: int, *, spaces_user_defined: bool = False) -> dict:
    """The GGUF fields of a SentencePiece-style HF tokenizer (BPE over ``▁``-joined pieces with byte
    fallback, as Gemma's), padded to ``vocab_size`` rows, spelled as llama.cpp's converter spells the
    SentencePiece model (checked against the shipped Gemma 3 GGUF: the same tokens and token types).

    Scores: llama.cpp's SentencePiece tokenizer merges the adjacent pair whose joined token scores
    highest, so only their order matters; a Hugging Face tokenizer keeps the order as token ids
    (transformers rebuilds a GGUF Gemma vocabulary's merges from file order, and the shipped file's
    scores fall strictly with the id). Normal tokens score minus their rank among normal tokens (the
    shipped file's own values up to id 236742, and the same order after), byte tokens ``<0xNN>`` 0,
    control and user-defined tokens -1000, as the converter writes them.

    Args:
        spaces_user_defined: runs of 2+ spaces are user-defined pieces spelled with real spaces, as in
            Gemma's SentencePiece model; the HF tokenizer spells them ``▁▁``... (transformers respells
            them back when it reads the file).
    Returns:
        ``{"model": "llama", "tokens", "scores", "token_types", "bos", "eos", "unk", "pad", "add_bos",
        "add_eos", "chat_template"}``.
    """
    state = _state(tokenizer)
    model = state.get("model", {})
    if model.get("type") != "BPE" or not model.get("byte_fallback") or "\u2581" not in json.dumps(
            [state.get("normalizer"), state.get("pre_tokenizer")], ensure_ascii=False):
        raise ValueError("expected a SentencePiece-style tokenizer (BPE over \u2581-joined pieces with byte "
                         f"fallback, as Gemma's); this tokenizer's model is {model.get('type')!r}")
    fields = _common(tokenizer, vocab_size)
    n = len(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
    added = _added_type(tokenizer)
    types, scores, rank = [], [], 0
    for i, tok in enumerate(tokens):
        kind = added.get(tok)
        if kind is None and spaces_user_defined and len(tok) > 1 and set(tok) == {"\u2581"}:
            tokens[i], kind = " " * len(tok), USER_DEFINED
        if kind is None:
            kind = BYTE if _BYTE_TOKEN.match(tok) else NORMAL
        types.append(kind)
        if kind == NORMAL:
            scores.append(-float(rank))
            rank += 1
        else:
            scores.append(0.0 if kind == BYTE else _UNMERGED_SCORE)
    tokens += [f"[PAD{i}]" for i in range(n, vocab_size)]
    types += [UNUSED] * (vocab_size - n)
    scores += [_UNMERGED_SCORE] * (vocab_size - n)
    return {"model": "llama", "tokens": tokens, "scores": scores, "token_types": types, **fields}
