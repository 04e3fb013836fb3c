"""A regional assistant as one thing a user can run: a model (with its adapter), a knowledge-base
index, a persona, and the retrieval and prompt settings that go with them.

``acculturate adapt`` builds one under ``runs/<name>/`` and writes its settings to ``assistant.json``;
``acculturate ask --run`` and ``acculturate serve --run`` load it back. The job's own evaluation
answers through :func:`answer_questions` too, so what the report measured is what ``ask`` and
``serve`` answer: the same prompt (persona + the instruction to cite, then the numbered passages and
the question), the same passages, the same decoding.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from acculturate.data.blend import BLEND_PROMPT
from acculturate.rag.pipeline import SYSTEM, cited, passages_turn
from acculturate.rag.retrieve import Hit, RetrieveConfig, retrieve

SPEC_FILE = "assistant.json"


def default_persona(region: str) -> str:
    return f"You are a helpful assistant who knows everyday life in {region} well."


@dataclass
class AssistantSpec:
    """What ``assistant.json`` holds; paths are relative to the run folder."""

    region: str
    model: str                          # the base model: embedded name, HF directory or .gguf file
    persona: str                        # the system message of every conversation
    dtype: str | None = None            # the weights' dtype the evaluation ran in (None: the loader's default)
    adapter: str | None = "adapter"     # the LoRA adapter (None: the base model alone)
    index: str = "index"                # the knowledge-base index
    template: str = "chat"
    retrieve: dict = field(default_factory=lambda: {"k": 3, "mode": "hybrid"})
    max_passage_chars: int = 600        # a longer passage is cut in the prompt
    max_new_tokens: int = 24            # short answers

    @property
    def retrieval_system(self) -> str:
        """The system message with retrieval: the persona, then the instruction to cite (exactly what
        the server sends when a request carries the persona and a ``retrieval`` option)."""
        return f"{self.persona}\n\n{SYSTEM}"

    def retrieve_config(self) -> RetrieveConfig:
        k = int(self.retrieve.get("k", 3))
        return RetrieveConfig(k=k, mode=self.retrieve.get("mode", "hybrid"),
                              candidates=max(50, k, int(self.retrieve.get("candidates", 50))))

    def save(self, run_dir: str | Path) -> Path:
        from acculturate.io import write_json

        path = Path(run_dir) / SPEC_FILE
        write_json(path, asdict(self))
        return path

    @classmethod
    def read(cls, run_dir: str | Path) -> "AssistantSpec":
        path = Path(run_dir) / SPEC_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{run_dir}: no {SPEC_FILE} here; run `acculturate adapt` first (it writes "
                                    "the regional assistant under runs/<name>/)")
        data = json.loads(path.read_text(encoding="utf-8"))
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def closed_book_turn(question: str) -> str:
    """The user turn without retrieval (the wording training and evaluation share)."""
    return BLEND_PROMPT.format(question=question)


def retrieve_many(index, questions: list[str], config: RetrieveConfig, embedder=None) -> list[list[Hit]]:
    """``retrieve`` for many questions, embedding them in one batch."""
    from acculturate.models.embedding import embed, load_embedder

    if not questions:
        return []
    model = embedder or load_embedder(index.manifest["settings"]["embedder"])
    vectors = embed(questions, model, progress=False).numpy() if config.mode != "bm25" else [None] * len(questions)
    return [retrieve(index, q, config, model, query_vector=v) for q, v in zip(questions, vectors)]


def assistant_prompts(tokenizer, spec: AssistantSpec, questions: list[str], hits: list[list[Hit]] | None = None,
                      shots: list[dict] | None = None) -> list[str]:
    """The rendered prompt of each question: the system message (the persona; with retrieval, also the
    instruction to cite), then ``shots``, then the question (after its passages with retrieval)."""
    from acculturate.data import render_prompt

    prompts = []
    for i, q in enumerate(questions):
        if hits is None:
            system, turn = spec.persona, closed_book_turn(q)
        else:
            system, turn = spec.retrieval_system, passages_turn(q, hits[i], spec.max_passage_chars)
        messages = [{"role": "system", "content": system}, *(shots or []), {"role": "user", "content": turn}]
        prompts.append(render_prompt(messages, tokenizer, spec.template))
    return prompts


def answer_questions(model, tokenizer, spec: AssistantSpec, questions: list[str],
                     hits: list[list[Hit]] | None = None, *, batch_size: int = 16, seed: int | None = None,
                     temperature: float = 0.0, on_batch=None, shots: list[dict] | None = None) -> list[dict]:
    """Answer ``questions`` as the assistant does.

    Args:
        hits: the passages shown for each question (from :func:`retrieve_many`); None: closed-book
            (the persona alone, the question asked in the closed-book wording).
        on_batch: called with each batch's rows as they are done (to save them: resumable runs).
        shots: solved user/assistant turns placed before each question (:mod:`acculturate.rag.shots`;
            the adapt job's base systems of a pre-trained model).
    Returns:
        One dict per question: ``question``, ``answer``, ``citations`` (the cited passages, each with
        ``number``, ``id``, ``source``, ``heading``, ``text`` and ``how``) and ``passages`` (every
        passage shown), in order.
    """
    from acculturate.decode import GenerationConfig, generate

    prompts = assistant_prompts(tokenizer, spec, questions, hits, shots)
    config = GenerationConfig(max_new_tokens=spec.max_new_tokens, batch_size=batch_size, stop=("\n",),
                              temperature=temperature, seed=seed)
    keep = ("number", "id", "source", "title", "heading", "text", "how")

    def row(i: int, text: str) -> dict:
        text = text.strip()
        cites, shown = cited(text, hits[i], questions[i]) if hits is not None else ([], [])
        return {"question": questions[i], "answer": text,
                "citations": [{k: c[k] for k in keep if k in c} for c in cites],
                "passages": [{k: c[k] for k in keep if k in c} for c in shown]}

    if on_batch is None:
        # One call: generate() batches prompts of similar length together (18% fewer prefill tokens
        # than batches in question order on the UK evaluation's retrieval prompts).
        return [row(i, out.text) for i, out in enumerate(generate(model, tokenizer, prompts, config))]
    rows = []
    for start in range(0, len(prompts), batch_size):   # in order, so the caller can save each batch
        outs = generate(model, tokenizer, prompts[start:start + batch_size], config)
        batch = [row(start + j, out.text) for j, out in enumerate(outs)]
        rows += batch
        on_batch(batch)
    return rows


@dataclass
class Assistant:
    """A loaded assistant: the model with its adapter, the tokenizer, the index and its embedder."""

    spec: AssistantSpec
    model: object
    tokenizer: object
    index: object
    embedder: object
    run_dir: Path

    def ask(self, questions: list[str], *, retrieval: bool = True, batch_size: int = 16,
            seed: int | None = None, temperature: float = 0.0, on_batch=None) -> list[dict]:
        hits = (retrieve_many(self.index, questions, self.spec.retrieve_config(), self.embedder)
                if retrieval else None)
        return answer_questions(self.model, self.tokenizer, self.spec, questions, hits, batch_size=batch_size,
                                seed=seed, temperature=temperature, on_batch=on_batch)


def load_assistant(run_dir: str | Path, device: str | None = None, dtype: str | None = None) -> Assistant:
    """Load what ``acculturate adapt`` built in ``run_dir``: base model + adapter, index, persona;
    the weights in the dtype the job evaluated in unless ``dtype`` says otherwise."""
    from acculturate.adapters import load_adapter
    from acculturate.models import load
    from acculturate.models.embedding import load_embedder
    from acculturate.rag.index import open_index

    run_dir = Path(run_dir)
    spec = AssistantSpec.read(run_dir)
    loaded = load(spec.model, device=device, dtype=dtype or spec.dtype)
    if spec.adapter:
        load_adapter(loaded.model, run_dir / spec.adapter)
    loaded.model.eval()
    index = open_index(run_dir / spec.index)
    embedder = load_embedder(index.manifest["settings"]["embedder"])
    return Assistant(spec, loaded.model, loaded.tokenizer, index, embedder, run_dir)
