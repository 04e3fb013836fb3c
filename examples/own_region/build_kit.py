"""Build a user's own-region kit the way a user would, from one shipped country's BLEnD annotations
(CC BY-SA 4.0): documents in prose of our own wording (not the preset's "Most common answer" layout),
and half of the country's questions as the user's question file.

    python examples/own_region/build_kit.py --country Mexico --out runs/kit-mexico
    acculturate adapt examples/own_region/config.yaml --set region="Mexico (own kit)" \
        --set questions=runs/kit-mexico/questions.jsonl --set documents=[runs/kit-mexico/docs]

The documents cover every question of the country (a knowledge base knows more than is asked);
the question file holds a seeded half of them, which the job splits again into train and held-apart.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from acculturate.data import load_blend
from acculturate.jobs.rag_eval import question_without_country

# Several phrasings, so no one template is what the model learns to read.
OPENINGS = ["Ask around about this: {q} Most people will tell you {a}.",
            "{q} Locals usually say {a}.",
            "When it comes to the question \"{q}\", the usual answer here is {a}.",
            "A common reply to \"{q}\" is {a}."]
OTHERS = [" Some also mention {o}.", " You may also hear {o}.", " Others name {o}."]


def paragraph(question: str, answers: list[str], country: str, rng: random.Random) -> str:
    q = question_without_country(question, country.replace("_", " "))
    text = rng.choice(OPENINGS).format(q=q, a=answers[0])
    others = list(dict.fromkeys(a for a in answers[1:4] if a != answers[0]))
    return text + (rng.choice(OTHERS).format(o=", ".join(others)) if others else "")


def build(country: str, out: Path, seed: int = 0) -> dict:
    rng = random.Random(seed)
    rows = load_blend(countries=[country])
    by_topic: dict[str, list[str]] = {}
    for ex in rows:
        by_topic.setdefault(ex.meta["topic"], []).append(paragraph(ex.meta["question"], ex.meta["answers"], country, rng))
    docs = out / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    name = country.replace("_", " ")
    for topic, paragraphs in by_topic.items():
        slug = "".join(c if c.isalnum() else "-" for c in topic.lower()).strip("-")
        (docs / f"{slug}.md").write_text(f"# {topic} in {name}\n\n" + "\n\n".join(paragraphs) + "\n", encoding="utf-8")
    chosen = sorted(rng.sample(range(len(rows)), len(rows) // 2))
    with open(out / "questions.jsonl", "w", encoding="utf-8") as f:
        for i in chosen:
            ex = rows[i]
            f.write(json.dumps({"id": ex.meta["id"], "question": ex.meta["question"], "answers": ex.meta["answers"],
                                "topic": ex.meta["topic"]}) + "\n")
    return {"documents": len(by_topic), "paragraphs": len(rows), "questions": len(chosen)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--country", default="Mexico")
    parser.add_argument("--out", default="runs/kit-mexico")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(build(args.country, Path(args.out), args.seed))
