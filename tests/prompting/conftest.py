"""A scripted stand-in for the model, for testing the strategies' mechanics without a network.

``ScriptedLM`` runs inside the real :func:`acculturate.decode.generate` loop (batching, KV-cache
protocol, stop strings): at prefill it decodes each row's prompt and asks ``respond(prompt, n)``
for the reply, ``n`` counting how often that exact prompt was seen before (so k samples of one
prompt can differ); then it emits the reply's tokens one per step, and EOS. ``CharTokenizer`` is a
byte-level tokenizer with a ChatML template, so these tests need no model files.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch

SPECIALS = ["<|im_start|>", "<|im_end|>"]
_SPECIAL_RE = re.compile("(" + "|".join(re.escape(s) for s in SPECIALS) + ")")


class CharTokenizer:
    """Bytes are tokens 0-255; <|im_start|> is 256, <|im_end|> (EOS, also padding) is 257."""

    chat_template = "chatml"
    bos_token = None
    bos_token_id = None
    eos_token = "<|im_end|>"
    eos_token_id = 257
    pad_token_id = 257
    all_special_tokens = SPECIALS

    def __len__(self):
        return 258

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece in _SPECIAL_RE.split(text):
            if piece in SPECIALS:
                ids.append(256 + SPECIALS.index(piece))
            else:
                ids.extend(piece.encode("utf-8"))
        return ids

    def __call__(self, texts, add_special_tokens=True):
        if isinstance(texts, str):
            return {"input_ids": self.encode(texts)}
        return {"input_ids": [self.encode(t) for t in texts]}

    def decode(self, ids, skip_special_tokens=False, clean_up_tokenization_spaces=False):
        out, buf = [], bytearray()
        for i in ids:
            if i < 256:
                buf.append(i)
                continue
            out.append(buf.decode("utf-8", "replace"))
            buf = bytearray()
            if not skip_special_tokens:
                out.append(SPECIALS[i - 256])
        out.append(buf.decode("utf-8", "replace"))
        return "".join(out)

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


class _Cache:
    """The scripted model's "KV cache": each row's scripted reply and how far it has got.

    ``generate`` copies a shared prefill to the rows that repeat a prompt with a repeated index;
    a real model's copies then diverge as each row samples its own tokens, so here each further
    copy of a row takes the prompt's next scripted reply (``respond(prompt, n)`` for the next n).
    Its first token comes from the prefill's logits, which the copies share (one-hot here, where a
    real model gives a distribution to sample from): so the scripted samples of one prompt must
    start with the same character (tests give them a leading space, as chat models often write)."""

    def __init__(self, rows, model):
        self.rows, self.model = rows, model

    def batch_select_indices(self, index):
        rows, taken = [], set()
        for i in index.tolist():
            if i in taken:
                row = self.model.new_row(self.rows[i]["prompt"])
                first = self.rows[i]["reply"][0]
                assert row["reply"][0] == first, (
                    f"scripted samples of one prompt must start with the same character (the shared "
                    f"prefill picks it): {self.model.tok.decode(row['reply'])!r} vs one starting with "
                    f"{self.model.tok.decode([first])!r}")
                rows.append(row)
            else:
                taken.add(i)
                rows.append(self.rows[i])
        self.rows = rows


class ScriptedLM(torch.nn.Module):
    """Replies ``respond(prompt_text, n)`` to the n-th sample of a prompt; records every sampled
    prompt (``prompts``) and the batch size of each prefill (``prefills``)."""

    def __init__(self, respond, tokenizer):
        super().__init__()
        self.respond = respond
        self.tok = tokenizer
        self.weight = torch.nn.Parameter(torch.zeros(1))  # generate() reads the device from here
        self.config = SimpleNamespace(max_position_embeddings=100_000)
        self.generation_config = SimpleNamespace(eos_token_id=[tokenizer.eos_token_id])
        self.prompts: list[str] = []
        self.prefills: list[int] = []
        self._seen: dict[str, int] = {}

    def new_row(self, prompt: str) -> dict:
        """The decoding state of one more sample of ``prompt`` (its next scripted reply)."""
        n = self._seen.get(prompt, 0)
        self._seen[prompt] = n + 1
        self.prompts.append(prompt)
        reply = self.tok.encode(self.respond(prompt, n)) + [self.tok.eos_token_id]
        return {"prompt": prompt, "reply": reply, "step": 0}

    def forward(self, input_ids, attention_mask, position_ids, cache=None, use_cache=True, logits_to_keep=0):
        if cache is None:
            rows = [self.new_row(self.tok.decode(ids[mask.index(1):]))
                    for ids, mask in zip(input_ids.tolist(), attention_mask.tolist())]
            self.prefills.append(len(rows))
            cache = _Cache(rows, self)
        else:
            for row in cache.rows:
                row["step"] += 1
        logits = torch.full((len(cache.rows), 1, len(self.tok)), -1e4)
        for b, row in enumerate(cache.rows):
            logits[b, 0, row["reply"][min(row["step"], len(row["reply"]) - 1)]] = 0.0
        return SimpleNamespace(logits=logits, cache=cache)


@pytest.fixture
def char_tokenizer():
    return CharTokenizer()


@pytest.fixture
def scripted(char_tokenizer):
    """``scripted(respond)`` -> a ScriptedLM using the char tokenizer."""
    return lambda respond: ScriptedLM(respond, char_tokenizer)


def user_turn(prompt: str) -> str:
    """The last user message of a ChatML prompt (what a respond function usually looks at)."""
    return prompt.rsplit("<|im_start|>user\n", 1)[-1].split("<|im_end|>", 1)[0]


@pytest.fixture
def last_user():
    """:func:`user_turn` as a fixture (test modules cannot import conftest under importlib mode)."""
    return user_turn
