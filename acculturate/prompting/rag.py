"""rag: retrieve passages for the question from an index, show them numbered before the question,
answer, and report the passages the answer cites (Lewis et al., 2020, "Retrieval-Augmented Generation").

The question's region (BLEnD: its country) filters the passages by their ``region`` metadata unless
``filter_region`` is off, so a question about Spain is answered from Spanish documents.
"""

from __future__ import annotations

from dataclasses import dataclass

from acculturate.data import Example
from acculturate.decode import GenerationConfig
from acculturate.prompting.prompts import region_of, render, system_prompt
from acculturate.prompting.tasks import Task
from acculturate.prompting.trace import StrategyResult, Trace


@dataclass
class RagConfig:
    """Answer from retrieved passages."""

    index: str | None = None
    """An index name or directory (`acculturate rag index ... --index NAME`)."""
    k: int = 3
    """Passages shown."""
    mode: str = "hybrid"
    """'hybrid', 'dense' or 'bm25'."""
    filter_region: bool = True
    """Only passages whose metadata region is the question's region."""
    rerank: str = "none"
    """'none', 'dense' or 'cross-encoder' (see acculturate.rag.retrieve)."""
    persona: str | None = None
    """As in zero_shot; appended to the instruction to use the passages."""
    region: str | None = None
    template: str = "chat"
    max_new_tokens: int = 48

    def __post_init__(self):
        from acculturate.rag.retrieve import RetrieveConfig

        RetrieveConfig(k=self.k, mode=self.mode, candidates=max(50, self.k), rerank=self.rerank)  # checks the fields
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: expected >= 1, got {self.max_new_tokens}")


def run(model, tokenizer, task: Task, example: Example, config: RagConfig | None = None) -> StrategyResult:
    """Answer ``example`` from the ``config.k`` passages that best match its question.

    Returns:
        StrategyResult; ``extra["passages"]`` lists the passages shown (number, id, source, score),
        ``extra["citations"]`` the numbers the answer cites.

    Raises:
        ValueError: no index configured.
    """
    from acculturate.rag.pipeline import SYSTEM, cited, passages_turn
    from acculturate.rag.index import open_cached
    from acculturate.rag.retrieve import RetrieveConfig, retrieve

    config = config or RagConfig()
    if not config.index:
        raise ValueError("rag: set the index to retrieve from (config 'index', CLI --set index=NAME)")
    trace = Trace()
    region = region_of(example, config.region)
    filters = {"region": region} if config.filter_region and region else {}
    hits = retrieve(open_cached(config.index), example.meta["question"],
                    RetrieveConfig(k=config.k, mode=config.mode, candidates=max(50, config.k),
                                   rerank=config.rerank, filters=filters))
    trace.log("retrieve", query=example.meta["question"], filters=filters, passages=[h.passage["id"] for h in hits])
    persona = system_prompt(config.persona, region)
    system = SYSTEM if persona is None else f"{persona} {SYSTEM}"
    messages = [{"role": "user", "content": passages_turn(example.meta["prompt"], hits)}]
    prompt = render(tokenizer, messages, system, config.template)
    out = trace.generate(model, tokenizer, [prompt], GenerationConfig(max_new_tokens=config.max_new_tokens), "answer")[0]
    cites, shown = cited(out.text, hits, example.meta["question"])
    # The citation markers are not part of the answer ("Paella [1]" -> "Paella").
    answer_text = _strip_citations(out.text)
    return StrategyResult(task.extract(answer_text, fallback="first"), trace.finish(),
                          {"citations": [c["number"] for c in cites],
                           "citations_how": cites[0]["how"] if cites else None, "system": system,
                           "passages": [{k: c[k] for k in ("number", "id", "source", "score")} for c in shown]})


def _strip_citations(text: str) -> str:
    from acculturate.rag.pipeline import CITATION

    return CITATION.sub("", text).replace(" .", ".").strip()
