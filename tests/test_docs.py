"""The written map matches the code: every `acculturate/...` path the README and docs/ name exists,
and every verb the README's commands use is a verb of the CLI."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PATH = re.compile(r"(?<![\w/.-])(acculturate/[A-Za-z0-9_./-]*[A-Za-z0-9_])")


@pytest.mark.parametrize("doc", DOCS, ids=[d.relative_to(ROOT).as_posix() for d in DOCS])
def test_every_named_package_path_exists(doc):
    missing = sorted({p for p in PATH.findall(doc.read_text(encoding="utf-8")) if not (ROOT / p).exists()})
    assert not missing, f"{doc.name} names paths that do not exist: {missing}"


def test_every_verb_the_readme_uses_exists():
    from acculturate.cli import build_parser

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    code = "\n".join(re.findall(r"```.*?```", text, flags=re.S) + re.findall(r"`([^`\n]+)`", text))
    used = set(re.findall(r"(?:^|[\s(|&;])acculturate ([a-z][a-z-]*)", code, flags=re.M))
    verbs = set(next(a for a in build_parser()._actions if a.dest == "verb").choices)
    assert used and not used - verbs, f"README uses verbs the CLI does not have: {sorted(used - verbs)}"
