"""Extend a model's vocabulary for a new language: learn tokens from a corpus, add them, resize and
initialise the embeddings.

1. A BPE is trained with the ``tokenizers`` library on the regional corpus, pre-tokenized as the base
   is: byte-level (GPT-2, Llama 3, SmolLM) or SentencePiece-style with "▁" marking word starts
   (Llama 2, Mistral, Gemma; see :func:`tokenizer_style`).
2. Its tokens that the base tokenizer splits into the most pieces (ties: the more frequent; or, with
   ``rank="saved"``, the ones saving the most tokens on the corpus) and that occur at least
   ``min_frequency`` times are kept, up to ``new_tokens`` of them.
3. Each kept token enters the base BPE as a chain of merges over the pieces the base produces for
   it (``p1 p2 -> p1p2``, ``p1p2 p3 -> p1p2p3``...), appended after every base merge, so the base's
   own merges still run first and text without the new words tokenizes as before. A chain over k
   pieces needs k - 2 intermediate tokens, which are added too (a BPE merges pairs only). Unlike
   ``tokenizer.add_tokens`` (literal strings matched before pre-tokenization, also inside other
   words), the new tokens are ordinary BPE tokens: they fire on whole pre-tokenized words and decode
   like any other token.
4. The embedding (and an untied output head) grows by one row per new token; each new row is the
   mean of the rows of the base pieces of its string (the initialisation of e.g. Gee et al. 2022,
   "Fast Vocabulary Transfer"), so a new token starts close to what the model saw for its pieces.
   A tied head stays tied: the new rows serve both.

The result is an ordinary Hugging Face model directory (``save_pretrained`` of model and tokenizer).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from acculturate.data.text import words

log = logging.getLogger(__name__)

RANKS = ("split", "saved")


@dataclass
class ExtendConfig:
    """How ``acculturate tokenizer extend`` picks new tokens."""

    new_tokens: int = 200
    """How many learned tokens to add (their intermediate merge tokens come on top, see the module doc)."""
    bpe_vocab_size: int = 2000
    """Vocabulary size of the BPE trained on the corpus (the candidates)."""
    min_frequency: int = 2
    """A candidate must occur at least this often in the corpus (as the BPE tokenizes it)."""
    rank: str = "split"
    """``"split"``: the tokens the base splits into the most pieces first (ties: more frequent);
    ``"saved"``: the tokens that save the most tokens on the corpus (frequency x (pieces - 1))."""

    def __post_init__(self):
        for name in ("new_tokens", "bpe_vocab_size", "min_frequency"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ExtendConfig.{name}: expected an integer >= 1, got {value!r}")
        if self.rank not in RANKS:
            raise ValueError(f"ExtendConfig.rank: expected one of {list(RANKS)}, got {self.rank!r}")


@dataclass
class Extension:
    """What :func:`extend_vocabulary` added."""

    tokens: list[str]
    """The learned tokens kept, in the base's spelling ('Ġngendikan', '▁ngendikan')."""
    intermediate: list[str]
    """Tokens added only to build the chains of merges."""
    new_ids: list[int]
    """Ids of every added token (tokens and intermediates), ascending."""
    pieces: dict[int, list[int]]
    """New id -> the base token ids its row was averaged from."""
    old_vocab_size: int
    new_vocab_size: int
    fertility: dict = field(default_factory=dict)
    """Filled by the job: before/after per corpus."""


def fertility(tokenizer, texts: Sequence[str]) -> dict:
    """Tokens per whitespace word over ``texts`` (no special tokens).

    Returns:
        ``{"tokens", "words", "fertility"}``; fertility is None when there are no words.
    """
    texts = list(texts)
    n_tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]) if texts else 0
    n_words = sum(words(t) for t in texts)
    return {"tokens": n_tokens, "words": n_words,
            "fertility": round(n_tokens / n_words, 4) if n_words else None}


SPACE = "\u2581"   # "▁", SentencePiece's word-start mark
_BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


def _backend_json(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"{type(tokenizer).__name__} has no fast (tokenizers) backend to extend")
    data = json.loads(backend.to_str())
    model = data.get("model", {})
    if model.get("type") != "BPE":
        raise ValueError(f"vocabulary extension needs a BPE tokenizer; this one is {model.get('type')!r}")
    tokenizer_style(data)   # raises for a kind it cannot extend
    return data


def tokenizer_style(data: dict) -> str:
    """``"byte_level"`` (GPT-2, Llama 3, SmolLM: a ByteLevel pre-tokenizer) or ``"metaspace"``
    (SentencePiece-style BPE as Llama 2, Mistral or Gemma ship it: a Metaspace pre-tokenizer, or a
    normalizer that replaces spaces by "▁"), from a ``tokenizer.json`` dict. Raises ValueError else."""
    def kinds(part):
        part = part or {}
        inner = part.get("pretokenizers") or part.get("normalizers") or []
        return [part.get("type")] + [k for p in inner for k in kinds(p)]

    pre = kinds(data.get("pre_tokenizer"))
    if "ByteLevel" in pre:
        return "byte_level"
    normalizer = json.dumps(data.get("normalizer") or {}, ensure_ascii=False)
    if "Metaspace" in pre or ("Replace" in normalizer and SPACE in normalizer):
        return "metaspace"
    raise ValueError("vocabulary extension supports byte-level BPE tokenizers (GPT-2, Llama 3, SmolLM) and "
                     f"SentencePiece-style BPE (Llama 2, Mistral, Gemma); this one pre-tokenizes with {pre}")


def train_bpe(texts: Sequence[str], vocab_size: int, min_frequency: int, style: str = "byte_level"):
    """A BPE trained on ``texts`` with the ``tokenizers`` library, pre-tokenized as the base is, so
    its tokens are strings the base can spell: GPT-2's byte-level pre-tokenizer (as SmolLM2's), or
    SentencePiece's word-start mark "▁" before every word (``style="metaspace"``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    if style == "metaspace":
        bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="always")
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False)
    else:
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(list(texts), trainer=trainer)
    return bpe


def candidate_tokens(texts: Sequence[str], tokenizer, config: ExtendConfig) -> list[tuple[str, list[str], int]]:
    """The learned tokens to add, best first: ``(token, base pieces, corpus count)``.

    A candidate occurs ``min_frequency`` times or more in the BPE's tokenization of the corpus, is
    not in the base vocabulary and is split by the base into at least two pieces.
    """
    style = tokenizer_style(_backend_json(tokenizer))
    bpe = train_bpe(texts, config.bpe_vocab_size, config.min_frequency, style)
    counts = Counter(tok for enc in bpe.encode_batch(list(texts)) for tok in enc.tokens)
    backend = tokenizer.backend_tokenizer
    vocab = backend.get_vocab()
    found = []
    for token, count in counts.items():
        if count < config.min_frequency or token in vocab:
            continue
        pieces = _base_pieces(backend, token)
        # A SentencePiece BPE spells characters it lacks as <0xNN> byte tokens; a merge chain over
        # those is not how it spells the word, so such candidates are skipped.
        if len(pieces) >= 2 and not any(_BYTE_TOKEN.match(p) for p in pieces) and all(p in vocab for p in pieces):
            found.append((token, pieces, count))
    if config.rank == "split":
        found.sort(key=lambda c: (-len(c[1]), -c[2], c[0]))
    else:
        found.sort(key=lambda c: (-c[2] * (len(c[1]) - 1), -len(c[1]), c[0]))
    return found[:config.new_tokens]


def _base_pieces(backend, token: str) -> list[str]:
    """The base BPE's pieces of one byte-level token string (no pre-tokenization: the string is
    already a pre-tokenized unit)."""
    return [t.value for t in backend.model.tokenize(token)]


def add_bpe_tokens(tokenizer, tokens: Sequence[str]) -> tuple[object, list[str], dict[str, list[str]]]:
    """A copy of ``tokenizer`` whose BPE also produces ``tokens``.

    Returns:
        ``(new tokenizer, intermediate tokens added, {added token: its base pieces})``.
    """
    from tokenizers import Tokenizer

    data = _backend_json(tokenizer)
    model = data["model"]
    vocab: dict[str, int] = model["vocab"]
    merges = model["merges"]
    as_pairs = bool(merges) and isinstance(merges[0], list)
    known = {tuple(m) if as_pairs else tuple(m.split(" ", 1)) for m in merges}
    next_id = max([*vocab.values(), *(t["id"] for t in data.get("added_tokens", []))]) + 1
    backend = tokenizer.backend_tokenizer
    pieces_of: dict[str, list[str]] = {}
    intermediate: list[str] = []
    for token in tokens:
        pieces = _base_pieces(backend, token)
        pieces_of[token] = pieces
        left = pieces[0]
        for right in pieces[1:]:
            joined = left + right
            if (left, right) not in known:
                merges.append([left, right] if as_pairs else f"{left} {right}")
                known.add((left, right))
            if joined not in vocab:
                vocab[joined] = next_id
                next_id += 1
                if joined != token:
                    intermediate.append(joined)
                    pieces_of[joined] = _base_pieces(backend, joined)
            left = joined
    chosen = set(tokens)
    intermediate = [t for t in intermediate if t not in chosen]   # a later token may be an earlier's link
    new = _with_backend(tokenizer, Tokenizer.from_str(json.dumps(data)))
    return new, intermediate, pieces_of


def _with_backend(tokenizer, backend):
    """A copy of the HF fast tokenizer ``tokenizer`` over another ``tokenizers.Tokenizer``."""
    import copy

    new = copy.deepcopy(tokenizer)
    new._tokenizer = backend
    return new


@torch.no_grad()
def resize_with_mean_init(model: torch.nn.Module, new_size: int, pieces: dict[int, list[int]]) -> None:
    """Grow the input embedding (and an untied output head) to ``new_size`` rows; row ``i`` of
    ``pieces`` becomes the mean of the old rows ``pieces[i]``. A tied head stays tied."""
    old_size = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(new_size, mean_resizing=False)
    embed = model.get_input_embeddings().weight                 # (V', d)
    head = model.get_output_embeddings()
    matrices = [embed] + ([head.weight] if head is not None and head.weight is not embed else [])
    for weight in matrices:
        for new_id, ids in pieces.items():
            if not old_size <= new_id < new_size:
                raise ValueError(f"new token id {new_id} is outside the added rows [{old_size}, {new_size})")
            if any(i >= old_size for i in ids):
                raise ValueError(f"token {new_id} averages rows {ids}, some of them new")
            weight[new_id] = weight[torch.tensor(ids, device=weight.device)].float().mean(0).to(weight.dtype)


def extend_vocabulary(model: torch.nn.Module, tokenizer, texts: Sequence[str],
                      config: ExtendConfig | None = None) -> tuple[object, Extension]:
    """Learn tokens from ``texts``, add them to the tokenizer and grow ``model``'s embeddings in place.

    Args:
        model: an HF causal LM (modified in place).
        tokenizer: its fast BPE tokenizer, byte-level or SentencePiece-style (not modified).
        texts: the regional corpus, one document per string.
        config: :class:`ExtendConfig`.
    Returns:
        ``(extended tokenizer, Extension)``.
    """
    config = config or ExtendConfig()
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("extend_vocabulary: the corpus has no text")
    chosen = [tok for tok, _, _ in candidate_tokens(texts, tokenizer, config)]
    if not chosen:
        raise ValueError(f"extend_vocabulary: no learned token occurs >= {config.min_frequency} times "
                         "and is split by the base tokenizer; lower min_frequency or give more text")
    new_tok, intermediate, pieces_of = add_bpe_tokens(tokenizer, chosen)
    base_vocab = tokenizer.backend_tokenizer.get_vocab()
    new_vocab = new_tok.backend_tokenizer.get_vocab()
    old_size = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > old_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the embedding only {old_size} rows")
    added = sorted(new_vocab[t] for t in pieces_of if t not in base_vocab)
    # ids are consecutive from max id + 1; rows between len(tokenizer) and old_size (padding rows of
    # some models) stay as they are.
    new_size = max(old_size, max(added) + 1)
    by_id = {new_vocab[t]: [base_vocab[p] for p in pieces_of[t]] for t in pieces_of if t not in base_vocab}
    resize_with_mean_init(model, new_size, by_id)
    return new_tok, Extension(tokens=chosen, intermediate=intermediate, new_ids=added, pieces=by_id,
                              old_vocab_size=old_size, new_vocab_size=new_size)


def save_extended(model: torch.nn.Module, tokenizer, extension: Extension, out_dir: str | Path) -> Path:
    """Write the extended model and tokenizer as an HF directory (atomically), with
    ``vocab_extension.json`` recording the new ids, their pieces and the fertility."""
    from acculturate.io import atomic_dir, write_json

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "vocab_extension.json", {
            "tokens": extension.tokens, "intermediate": extension.intermediate,
            "new_ids": extension.new_ids, "pieces": {str(k): v for k, v in extension.pieces.items()},
            "old_vocab_size": extension.old_vocab_size, "new_vocab_size": extension.new_vocab_size,
            "fertility": extension.fertility})
    return out_dir


def read_new_token_ids(model_dir: str | Path) -> list[int]:
    """The added token ids recorded in ``model_dir/vocab_extension.json`` ([] when there is none)."""
    path = Path(model_dir) / "vocab_extension.json"
    if not path.is_file():
        return []
    return list(json.loads(path.read_text(encoding="utf-8"))["new_ids"])
