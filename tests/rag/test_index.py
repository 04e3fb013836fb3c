import json
import os

import pytest

from acculturate.rag import ChunkConfig, IndexConfig, RagIndexError, RetrieveConfig, open_index, retrieve, update_index
from acculturate.rag.index import resolve_index


def build(docs, where, embedder, **kwargs):
    return update_index([docs], where, IndexConfig(), progress=False, embedder=embedder, **kwargs)


def test_build_then_reopen_from_disk(docs, tmp_path, fake_embedder):
    r = build(docs, tmp_path / "ix", fake_embedder)
    assert sorted(os.path.basename(f) for f in r.added) == ["notes.txt", "spain.md", "uk.md"]
    index = open_index(tmp_path / "ix")
    assert len(index) == r.passages == 5  # uk and spain: 2 sections each; notes: 1 passage
    assert index.vectors.ntotal == 5 and index.manifest["dim"] == 64
    assert sorted(p["heading"] for p in index.passages) == ["", "Bonfire Night", "Festivals", "Food", "Food"]
    assert {p["meta"]["region"] for p in index.passages if p["meta"].get("region")} == {"UK", "Spain"}


def test_reindex_embeds_only_changed_and_new_files_and_drops_deleted(docs, tmp_path, fake_embedder):
    build(docs, tmp_path / "ix", fake_embedder)
    before = {p["id"]: p for p in open_index(tmp_path / "ix").passages}
    fake_embedder.calls.clear()

    r = build(docs, tmp_path / "ix", fake_embedder)
    assert (r.added, r.updated, r.removed, r.unchanged, r.embedded) == ([], [], [], 3, 0)
    assert fake_embedder.calls == []

    (docs / "uk.md").write_text("---\nregion: UK\n---\n# Customs in the UK\n\n## Food\n\nScones with clotted cream.\n")
    (docs / "notes.txt").unlink()
    (docs / "new.txt").write_text("Flamenco is a dance from Andalusia.\n")
    r = build(docs, tmp_path / "ix", fake_embedder)
    assert [os.path.basename(f) for f in r.updated] == ["uk.md"]
    assert [os.path.basename(f) for f in r.added] == ["new.txt"]
    assert [os.path.basename(f) for f in r.removed] == ["notes.txt"]
    # Only the changed and the new file were embedded.
    assert sorted(fake_embedder.calls) == sorted(["Customs in the UK > Food\nScones with clotted cream.",
                                                  "new\nFlamenco is a dance from Andalusia."])
    index = open_index(tmp_path / "ix")
    texts = {p["text"] for p in index.passages}
    assert "Scones with clotted cream." in texts and "Flamenco is a dance from Andalusia." in texts
    assert not any("Tea is drunk" in t for t in texts) and not any("Bonfire" in t for t in texts)
    # Spain's passages were kept as they were, vectors included.
    spain = [p for p in index.passages if p["file"].endswith("spain.md")]
    assert spain and all(before[p["id"]] == p for p in spain)
    hit = retrieve(index, "tomato fight festival", RetrieveConfig(k=1, mode="dense"), fake_embedder)[0]
    assert "Tomatina" in hit.passage["text"]
    assert index.vectors.ntotal == len(index.passages)


def test_new_metadata_reindexes_the_file(docs, tmp_path, fake_embedder):
    build(docs, tmp_path / "ix", fake_embedder)
    r = update_index([docs / "notes.txt"], tmp_path / "ix", progress=False, embedder=fake_embedder,
                     meta={"region": "mixed"})
    assert len(r.updated) == 1 and r.unchanged == 0 and r.removed == []
    notes = [p for p in open_index(tmp_path / "ix").passages if p["file"].endswith("notes.txt")]
    assert notes and all(p["meta"]["region"] == "mixed" for p in notes)


def test_other_settings_are_refused_without_rebuild(docs, tmp_path, fake_embedder):
    build(docs, tmp_path / "ix", fake_embedder)
    other = IndexConfig(chunk=ChunkConfig(max_chars=300))
    with pytest.raises(RagIndexError, match="chunk.*--rebuild"):
        update_index([docs], tmp_path / "ix", other, progress=False, embedder=fake_embedder)
    r = update_index([docs], tmp_path / "ix", other, progress=False, embedder=fake_embedder, rebuild=True)
    assert len(r.added) == 3


def test_a_killed_update_leaves_the_old_index_whole(docs, tmp_path, fake_embedder, monkeypatch):
    build(docs, tmp_path / "ix", fake_embedder)
    manifest = (tmp_path / "ix" / "manifest.json").read_text()
    (docs / "uk.md").write_text("# Changed\n\nNew text.\n")
    import acculturate.rag.index as index_module

    def crash(*a, **k):
        raise KeyboardInterrupt  # as if killed while writing the new version
    monkeypatch.setattr(index_module, "bm25_tokens", crash)
    with pytest.raises(KeyboardInterrupt):
        build(docs, tmp_path / "ix", fake_embedder)
    assert (tmp_path / "ix" / "manifest.json").read_text() == manifest
    assert len(open_index(tmp_path / "ix")) == 5
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ix.") and p.name.endswith(".tmp")] == []


def test_interrupted_swap_is_recovered_on_open(docs, tmp_path, fake_embedder):
    build(docs, tmp_path / "ix", fake_embedder)
    os.replace(tmp_path / "ix", tmp_path / ".ix.old")  # crash between atomic_dir's two renames
    assert len(open_index(tmp_path / "ix")) == 5


def test_commits_every_n_passages_so_a_rerun_continues(docs, tmp_path, fake_embedder, monkeypatch):
    import acculturate.rag.index as index_module

    real_write, writes = index_module._write, []

    def counting_write(path, manifest, passages, vectors):
        writes.append(len(passages))
        real_write(path, manifest, passages, vectors)
    monkeypatch.setattr(index_module, "_write", counting_write)
    update_index([docs], tmp_path / "ix", IndexConfig(commit_every=1), progress=False, embedder=fake_embedder)
    # notes.txt (1 passage), spain.md (2), uk.md (2): a commit after each file, then the final one.
    assert writes == [1, 3, 5, 5]


def test_missing_index_and_names(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCULTURATE_RAG_HOME", str(tmp_path / "home"))
    assert resolve_index("docs") == tmp_path / "home" / "docs"
    assert resolve_index("./docs").name == "docs" and resolve_index("a/b").name == "b"
    with pytest.raises(RagIndexError, match="acculturate rag index"):
        open_index("nothing-here")


def test_list_indexes_reads_each_manifest_and_skips_what_is_not_an_index(docs, tmp_path, fake_embedder, capsys):
    from acculturate.cli import main
    from acculturate.rag import list_indexes

    home = tmp_path / "home"
    assert list_indexes(home) == []   # no folder yet
    build(docs, "uk", fake_embedder, home=home)
    build(docs / "uk.md", "b-uk-only", fake_embedder, home=home)
    (home / "notes").mkdir()                                 # a folder without a manifest
    (home / "broken").mkdir()
    (home / "broken" / "manifest.json").write_text("{not json")
    (home / "old").mkdir()
    (home / "old" / "manifest.json").write_text('{"format": 0}')
    found = list_indexes(home)
    assert [i["name"] for i in found] == ["b-uk-only", "uk"]
    assert [(i["passages"], i["files"]) for i in found] == [(2, 1), (5, 3)]
    assert all(i["updated"] for i in found)

    assert main(["rag", "list", "--home", str(home), "--json"]) == 0
    assert [i["name"] for i in json.loads(capsys.readouterr().out)] == ["b-uk-only", "uk"]
    assert main(["rag", "list", "--home", str(tmp_path / "empty")]) == 0
    assert "no index under" in capsys.readouterr().out
