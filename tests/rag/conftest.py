"""A bag-of-words stand-in for the sentence embedder, for testing index mechanics fast (which files
are re-embedded, filters, persistence). Retrieval quality is tested with the real all-MiniLM-L6-v2
in test_real_model.py."""

from __future__ import annotations

import hashlib
import re

import pytest
import torch


class WordHashEmbedder:
    """Unit vectors of hashed word counts (64-d); ``calls`` records every text embedded."""

    dim = 64

    def __init__(self):
        self.calls: list[str] = []

    def get_embedding_dimension(self) -> int:
        return self.dim

    def encode(self, texts, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False, batch_size=64):
        self.calls.extend(texts)
        out = torch.zeros(len(texts), self.dim)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1.0
        return torch.nn.functional.normalize(out + 1e-6, dim=1)


@pytest.fixture
def fake_embedder():
    return WordHashEmbedder()


@pytest.fixture
def docs(tmp_path):
    """Three small Markdown documents about two regions, in tmp_path/docs."""
    d = tmp_path / "docs"
    d.mkdir()
    (d / "uk.md").write_text("---\nregion: UK\n---\n# Customs in the UK\n\n## Bonfire Night\n\n"
                             "Bonfire Night on the 5th of November has fireworks and bonfires.\n\n"
                             "## Food\n\nFish and chips is a takeaway dish eaten on Fridays.\n", encoding="utf-8")
    (d / "spain.md").write_text("---\nregion: Spain\n---\n# Customs in Spain\n\n## Food\n\n"
                                "Dinner is eaten late, after nine in the evening. Paella comes from Valencia.\n\n"
                                "## Festivals\n\nLa Tomatina is a tomato fight in Bunol in August.\n", encoding="utf-8")
    (d / "notes.txt").write_text("Tea is drunk with milk in the UK.\n\nSiesta is a short nap after lunch in Spain.\n",
                                 encoding="utf-8")
    return d
