"""Turn a growing list of generated token ids into text, safely for streaming and stop strings.

Byte-level BPE (SmolLM2, Llama 3, GPT-2...) splits a multi-byte character such as an emoji into
several tokens; decoding a prefix that ends inside one yields U+FFFD. Streaming would then print
a broken character that the next token silently repairs. ``TextStream`` only hands out text that
can no longer change: it holds back trailing U+FFFD and any tail that could still grow into a stop
string, so the streamed deltas always concatenate to the final, stop-cut text. A completion that
ends inside a character (cut by ``max_tokens``) drops the incomplete character.

Each token decodes only a short window, not the whole completion (whose cost grows with its length:
~50-80 us at 128 tokens, per row and per step of a server's batch): the text up to an anchor token
is kept, and the tokens from the anchor before it on are decoded, their shared start cut off by the
text of the tokens between the two anchors (as vLLM and TGI detokenize incrementally). The start
of a window is always a whole token (joins such as a SentencePiece leading space come out the same)
and an anchor moves only where the text so far ends in a whole character; a window that does not
start with the expected text falls back to decoding everything.
"""

from __future__ import annotations

REPLACEMENT_CHAR = "\ufffd"
ANCHOR_EVERY = 8   # tokens between two anchors of the incremental decode (see the module docstring)


class TextStream:
    """Incremental detokenizer with stop strings for one completion.

    Args:
        tokenizer: an HF tokenizer (``decode`` is used).
        stop: strings that end the completion; the text is cut before the first one found.

    Attributes:
        token_ids: ids added so far.
        stopped: True once a stop string appeared; ``text`` then ends right before it.
    """

    def __init__(self, tokenizer, stop: tuple[str, ...] | list[str] = ()):
        if any(not isinstance(s, str) or not s for s in stop):
            raise ValueError(f"stop strings must be non-empty strings, got {list(stop)!r}")
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self._max_stop = max((len(s) for s in self.stop), default=0)
        self.token_ids: list[int] = []
        self.stopped = False
        self._text = ""
        self._emitted = 0       # characters of _text already handed out
        self._search_from = 0   # stop strings cannot start before this character any more
        # Incremental decoding: the text of token_ids[:_anchor] is _head; windows start at _start
        # (the anchor before), and token_ids[_start:_anchor] decode to _overlap.
        self._start = self._anchor = 0
        self._head = self._overlap = ""

    @property
    def text(self) -> str:
        """The text so far (cut before the stop string once ``stopped``)."""
        return self._text

    def add(self, token_id: int) -> str:
        """Append one generated token; return the new text that is safe to show (maybe "")."""
        if self.stopped:
            raise RuntimeError("TextStream.add after a stop string ended the completion")
        self.token_ids.append(int(token_id))
        text = self._decode_incrementally()
        stable = len(text.rstrip(REPLACEMENT_CHAR))  # characters later tokens cannot change
        if self.stop:
            cut = self._find_stop(text)
            if cut is not None:
                self._text = text[:cut]
                self.stopped = True
                return self.flush()
            # A stop string completed later must start within its length of the stable end.
            self._search_from = max(0, stable - self._max_stop + 1)
        self._text = text
        safe = stable - self._stop_prefix_len(text[:stable])
        return self._emit(safe)

    def extend(self, token_ids: list[int]) -> str:
        """Append several tokens with one decode (``add`` decodes once per token: for 64 rows of 256
        tokens that was ~1 s of host time per ``generate --file`` call on a 2-core machine). Only
        without stop strings, which must be found at the token that completes them."""
        if self.stop:
            raise RuntimeError("TextStream.extend finds no stop strings; add tokens one by one with add()")
        self.token_ids.extend(int(t) for t in token_ids)
        self._text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True,
                                           clean_up_tokenization_spaces=False)
        return self._emit(len(self._text.rstrip(REPLACEMENT_CHAR)))

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _decode_incrementally(self) -> str:
        """The text of all of ``token_ids``, decoding only the tokens from the anchor before last."""
        ids = self.token_ids
        window = self._decode(ids[self._start:])
        if window.startswith(self._overlap):
            text = self._head + window[len(self._overlap):]
        else:   # a tokenizer whose text of a token depends on more than the one before: all of it
            text = self._decode(ids)
        if len(ids) - self._anchor >= ANCHOR_EVERY and not text.endswith(REPLACEMENT_CHAR):
            self._start, self._anchor, self._head = self._anchor, len(ids), text
            self._overlap = self._decode(ids[self._start:self._anchor])
        return text

    def flush(self) -> str:
        """Hand out everything not yet shown (call when the completion ends for any reason).

        A completion cut inside a multi-byte character (``max_tokens`` reached after the first of
        its tokens) decodes to a trailing U+FFFD; that incomplete character is dropped from the
        text rather than shown as a broken one."""
        self._text = self._text.rstrip(REPLACEMENT_CHAR)
        return self._emit(len(self._text))

    def _emit(self, upto: int) -> str:
        if upto <= self._emitted:
            return ""
        delta = self._text[self._emitted:upto]
        self._emitted = upto
        return delta

    def _find_stop(self, text: str) -> int | None:
        hits = [i for i in (text.find(s, self._search_from) for s in self.stop) if i >= 0]
        return min(hits) if hits else None

    def _stop_prefix_len(self, text: str) -> int:
        """Length of the longest tail of ``text`` that is the start of a stop string."""
        for n in range(min(len(text), self._max_stop - 1), 0, -1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self.stop):
                return n
        return 0
