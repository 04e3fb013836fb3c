import json

import pytest

from acculturate.data import DataError
from acculturate.rag.ingest import find_files, read_document


def test_text_paragraphs_and_front_matter(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("---\nregion: UK\ntitle: Notes\n---\nFirst line\ncontinues here.\n\nSecond paragraph.\n")
    [doc] = read_document(f)
    assert doc.title == "Notes"
    assert [b.text for b in doc.blocks] == ["First line continues here.", "Second paragraph."]
    assert doc.meta["region"] == "UK" and doc.meta["format"] == "text"


def test_markdown_sections_keep_their_headings_and_skip_fenced_hashes(tmp_path):
    f = tmp_path / "a.md"
    f.write_text("# Title\n\nIntro.\n\n## Food ##\n\nPaella.\n\n```\n# not a heading\n```\n\n## Drink\n\nHorchata.\n")
    [doc] = read_document(f, meta={"region": "Spain"})
    assert doc.title == "Title"
    assert [(b.heading, b.text) for b in doc.blocks] == [
        ("Title", "Intro."), ("Food", "Paella."), ("Food", "``` # not a heading ```"), ("Drink", "Horchata.")]
    assert doc.meta["region"] == "Spain"


def test_html_blocks_headings_meta_and_no_scripts(tmp_path):
    f = tmp_path / "a.html"
    f.write_text("<html><head><title>Spain guide</title><meta name='region' content='Spain'>"
                 "<style>p{color:red}</style></head><body><h1>Meals</h1><p>Dinner is <b>late</b>.</p>"
                 "<script>alert(1)</script><h2>Fiestas</h2><ul><li>La Tomatina</li><li>San Fermin</li></ul></body></html>")
    [doc] = read_document(f)
    assert doc.title == "Spain guide" and doc.meta["region"] == "Spain"
    assert [(b.heading, b.text) for b in doc.blocks] == [
        ("Meals", "Dinner is late."), ("Fiestas", "La Tomatina"), ("Fiestas", "San Fermin")]


def test_pdf_written_by_a_pdf_library_reads_back_per_page(tmp_path):
    fpdf = pytest.importorskip("fpdf")
    pdf = fpdf.FPDF()
    pdf.set_title("Guide")
    pdf.set_font("helvetica", size=12)
    for text in ("Bonfire Night is on the fifth of November.", "Pancake Day comes before Lent."):
        pdf.add_page()
        pdf.multi_cell(0, 10, text)
    f = tmp_path / "guide.pdf"
    pdf.output(str(f))
    [doc] = read_document(f)
    assert doc.title == "Guide" and doc.meta["pages"] == 2
    assert [(b.heading, b.text) for b in doc.blocks] == [
        ("page 1", "Bonfire Night is on the fifth of November."), ("page 2", "Pancake Day comes before Lent.")]


def test_broken_pdf_names_the_file(tmp_path):
    f = tmp_path / "bad.pdf"
    f.write_bytes(b"%PDF-1.4 this is not really a pdf")
    with pytest.raises(DataError, match="bad.pdf.*readable PDF"):
        read_document(f)


def test_jsonl_one_document_per_line_with_metadata(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text(json.dumps({"text": "Tea with milk.", "region": "UK", "tags": ["x"]}) + "\n\n"
                 + json.dumps({"body": "Siesta.", "title": "Nap"}) + "\n")
    with pytest.raises(DataError) as e:
        read_document(f)
    assert e.value.line == 3 and e.value.field == "text" and "missing" in str(e.value)
    f.write_text(json.dumps({"text": "Tea with milk.", "region": "UK", "tags": ["x"]}) + "\n")
    [doc] = read_document(f)
    assert doc.source.endswith("a.jsonl:1") and doc.meta["region"] == "UK" and "tags" not in doc.meta
    [nap] = read_document(tmp_path / "a.jsonl", text_field="text")
    assert nap.title == "a:1"


def test_jsonl_malformed_line_is_named(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text('{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"a.jsonl:2: expected one JSON object per line"):
        read_document(f)


def test_bad_front_matter_and_undecodable_text_are_named(tmp_path):
    f = tmp_path / "a.md"
    f.write_text("---\nregion: [UK, US]\n---\nText.\n")
    with pytest.raises(DataError, match="front matter.region"):
        read_document(f)
    g = tmp_path / "b.txt"
    g.write_bytes(b"fine\nstill fine\n\xff\xfe broken\n")
    with pytest.raises(DataError, match=r"b.txt:3: expected UTF-8"):
        read_document(g)


def test_find_files_recurses_skips_hidden_and_refuses_unknown_named_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".git").mkdir()
    for name in ("a.md", "sub/b.txt", "sub/c.pdf", ".git/d.md", "e.docx"):
        (tmp_path / name).write_text("x")
    assert [p.name for p in find_files([tmp_path])] == ["a.md", "b.txt", "c.pdf"]
    with pytest.raises(DataError, match="e.docx"):
        find_files([tmp_path / "e.docx"])
    with pytest.raises(FileNotFoundError):
        find_files([tmp_path / "missing"])
