"""Language identification with py3langid (a maintained fork of langid.py, Lui & Baldwin, 2012):
its naive-Bayes model (140 languages) ships inside the PyPI package, so nothing is downloaded.

Why py3langid (measured on the shipped NusaX validation sentences, 100 per language, on the shared
2-core machine, see docs/data.md): English 100%, Indonesian 97% (3% Malay), Javanese 100%, Acehnese
96%, at 0.2-0.3 ms per sentence. lingua-language-detector scored English 99%, Indonesian 92% and
knows neither Javanese nor Acehnese, at 3-10 ms per sentence. Neither knows Sundanese, Balinese,
Minangkabau, Banjarese, Madurese, Ngaju, Buginese or Toba Batak: those come out as Javanese or
Indonesian, so a filter for them cannot be built on either library.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from acculturate.data.example import Example
from acculturate.data.summary import PARTS, example_id, text_of


@functools.lru_cache(maxsize=1)
def _identifier():
    try:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier
    except ImportError as e:
        raise ImportError("language identification needs py3langid: pip install 'acculturate[data]'") from e
    # norm_probs: confidences are probabilities in [0, 1], so min_confidence has a meaning.
    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def supported_languages() -> list[str]:
    """ISO 639 codes the model knows (``en``, ``id``, ``jv``, ``ace``, ...)."""
    return sorted(_identifier().labels)


def detect_language(text: str) -> tuple[str, float]:
    """``(code, probability)`` of the most likely language; ``("und", 0.0)`` for text with no letters."""
    if not any(ch.isalpha() for ch in text):
        return "und", 0.0
    code, prob = _identifier().classify(text)
    return code, float(prob)


@dataclass
class LangIdConfig:
    """Which languages to keep."""

    languages: tuple[str, ...] = ("en",)
    """ISO 639 codes to keep (see :func:`supported_languages`)."""
    min_confidence: float = 0.0
    """Also drop rows whose top language has a lower probability than this (0 keeps all)."""
    part: str = "all"
    """What is classified: 'all' messages, the 'prompt' turns or the 'response'."""
    record: bool = True
    """Write the detected ``lang`` and ``lang_prob`` into each kept row's meta."""

    def __post_init__(self):
        if isinstance(self.languages, str):
            self.languages = (self.languages,)
        self.languages = tuple(self.languages)
        if not self.languages:
            raise ValueError("languages: expected at least one language code")
        unknown = sorted(set(self.languages) - set(supported_languages()))
        if unknown:
            raise ValueError(f"languages: unknown codes {unknown}; py3langid knows {supported_languages()}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence: expected a number in [0, 1], got {self.min_confidence!r}")
        if self.part not in PARTS:
            raise ValueError(f"part: expected one of {PARTS}, got {self.part!r}")


def langid_filter(examples: list[Example], config: LangIdConfig) -> tuple[list[Example], list[dict]]:
    """Keep examples detected as one of ``config.languages``. Returns ``(kept, removed)``; removed
    entries give the detected language and probability."""
    kept, removed = [], []
    for ex in examples:
        code, prob = detect_language(text_of(ex, config.part))
        if code in config.languages and prob >= config.min_confidence:
            if config.record:
                ex = Example(ex.messages, {**ex.meta, "lang": code, "lang_prob": round(prob, 4)})
            kept.append(ex)
        else:
            removed.append({"id": example_id(ex), "reason": f"language {code} ({prob:.2f})", "lang": code,
                            "lang_prob": round(prob, 4)})
    return kept, removed
