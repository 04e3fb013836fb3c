"""tree_of_thought: breadth-first search over reasoning steps with the model as its own evaluator
(Yao et al., 2023, "Tree of Thoughts", BFS with a value prompt).

At each depth every kept state proposes ``breadth`` next steps (sampled, one line each, all states
in one batch); each new step is scored by the model with a value prompt ("sure / likely /
impossible" -> 20 / 1 / 0.001, the paper's mapping, summed over ``n_evaluate`` evaluations); the
``beam`` best states are kept. The search stops as soon as a kept state states a final answer
("The answer is X"), else after ``depth`` steps, when the best state is asked for its answer.
``extra["tree"]`` holds every node (thought, value, kept or pruned, parent) to show the tree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from acculturate.data import Example
from acculturate.decode import GenerationConfig
from acculturate.prompting.prompts import region_of, render, system_prompt
from acculturate.prompting.tasks import Task
from acculturate.prompting.trace import StrategyResult, Trace

THOUGHT = ("Question: {question}\n\nSolve it one step at a time. Steps so far:\n{steps}\n\n"
           "Write only the next step, in one sentence. If the steps so far give the answer, "
           "write \"The answer is ...\".")
VALUE = ("Question: {question}\n\nPartial solution:\n{steps}\n\n"
         "Is this partial solution correct and on track to answer the question? "
         "Reply with one word: sure, likely or impossible.")
FINAL = "Question: {question}\n\nSteps:\n{steps}\n\nGive the final answer."
# Yao et al.'s value mapping; synonyms a small model writes instead. "not sure" is checked first.
VALUE_WORDS = [("not sure", 1.0), ("impossible", 0.001), ("incorrect", 0.001), ("wrong", 0.001), ("no", 0.001),
               ("sure", 20.0), ("yes", 20.0), ("correct", 20.0), ("likely", 1.0), ("maybe", 1.0),
               ("possibly", 1.0), ("probably", 1.0)]
_VALUE_RE = re.compile(r"\b(" + "|".join(re.escape(w) for w, _ in VALUE_WORDS) + r")\b", re.IGNORECASE)
UNPARSED_VALUE = 1.0  # an evaluation without a verdict counts as "likely": it neither keeps nor kills


@dataclass
class TreeOfThoughtConfig:
    """Beam search over thoughts."""

    breadth: int = 3
    """Candidate next steps proposed per kept state."""
    beam: int = 2
    """States kept per depth."""
    depth: int = 3
    """Most steps before the best state must answer."""
    thought_tokens: int = 40
    """Tokens per step (a step is one line)."""
    temperature: float = 0.8
    """Proposals are sampled so that siblings differ."""
    top_p: float = 0.95
    seed: int | None = 0
    n_evaluate: int = 1
    """Value prompts per step (1: greedy; more: sampled, summed)."""
    value_tokens: int = 6
    final_tokens: int = 24
    persona: str | None = None
    region: str | None = None
    template: str = "chat"

    def __post_init__(self):
        for name in ("breadth", "beam", "depth", "thought_tokens", "n_evaluate", "value_tokens", "final_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"temperature: expected > 0 (siblings are sampled), got {self.temperature}")


@dataclass
class Node:
    """One state of the search: the steps from the root to here."""

    id: int
    parent: int | None
    depth: int
    thought: str
    steps: list[str] = field(default_factory=list)
    value: float | None = None
    evaluations: list[str] = field(default_factory=list)
    kept: bool = False
    solution: str | None = None

    def to_dict(self) -> dict:
        return {"id": self.id, "parent": self.parent, "depth": self.depth, "thought": self.thought,
                "value": self.value, "evaluations": self.evaluations, "kept": self.kept, "solution": self.solution}


def parse_value(text: str) -> float:
    """The value of one evaluation: the first verdict word in ``text`` (see ``VALUE_WORDS``)."""
    m = _VALUE_RE.search(text)
    if not m:
        return UNPARSED_VALUE
    word = m.group(1).lower()
    return next(v for w, v in VALUE_WORDS if w == word)


def _steps_text(steps: list[str]) -> str:
    return "\n".join(f"Step {i}: {s}" for i, s in enumerate(steps, 1)) or "(none yet)"


def run(model, tokenizer, task: Task, example: Example,
        config: TreeOfThoughtConfig | None = None) -> StrategyResult:
    """Search for a solution of ``example``.

    Returns:
        StrategyResult; ``extra["tree"]`` lists every node, ``extra["path"]`` the chosen steps,
        ``extra["stopped"]`` is ``"solution"`` or ``"depth"``.
    """
    config = config or TreeOfThoughtConfig()
    trace = Trace()
    question = example.meta["question"]
    system = system_prompt(config.persona, region_of(example, config.region))

    def prompt(template: str, steps: list[str], prefill: str = "") -> str:
        return render(tokenizer, [{"role": "user", "content": template.format(question=question,
                                                                             steps=_steps_text(steps))}],
                      system, config.template, prefill)

    root = Node(0, None, 0, "", kept=True)
    nodes, frontier = [root], [root]
    answer, stopped, best = None, "depth", root
    for depth in range(1, config.depth + 1):
        # Propose: every kept state x breadth samples, one batch.
        proposals = [(state, prompt(THOUGHT, state.steps, f"Step {depth}: "))
                     for state in frontier for _ in range(config.breadth)]
        seed = None if config.seed is None else config.seed * 1000 + depth  # a fresh stream per depth
        outs = trace.generate(model, tokenizer, [p for _, p in proposals],
                              GenerationConfig(max_new_tokens=config.thought_tokens, temperature=config.temperature,
                                               top_p=config.top_p, seed=seed, stop=("\n",),
                                               batch_size=len(proposals)), "thought")
        candidates, seen = [], set()
        for (state, _), out in zip(proposals, outs):
            thought = out.text.strip()
            if not thought or (state.id, thought) in seen:  # identical siblings would be scored twice
                continue
            seen.add((state.id, thought))
            node = Node(len(nodes), state.id, depth, thought, state.steps + [thought])
            answer_here = task.extract(thought, strict=True)
            node.solution = task.display(answer_here)
            nodes.append(node)
            candidates.append((node, answer_here))
        if not candidates:
            break
        # Evaluate: value prompt per candidate (x n_evaluate), one batch.
        value_config = GenerationConfig(max_new_tokens=config.value_tokens, stop=("\n",),
                                        batch_size=len(candidates) * config.n_evaluate,
                                        **({} if config.n_evaluate == 1 else
                                           {"temperature": config.temperature, "seed": seed}))
        value_prompts = [prompt(VALUE, node.steps) for node, _ in candidates for _ in range(config.n_evaluate)]
        evaluations = trace.generate(model, tokenizer, value_prompts, value_config, "value")
        for i, (node, _) in enumerate(candidates):
            node.evaluations = [e.text for e in evaluations[i * config.n_evaluate:(i + 1) * config.n_evaluate]]
            node.value = sum(parse_value(e) for e in node.evaluations)
        # Prune: keep the beam best (ties: the earlier proposal).
        ranked = sorted(candidates, key=lambda c: -c[0].value)[:config.beam]
        for node, _ in ranked:
            node.kept = True
        frontier = [node for node, _ in ranked]
        best = frontier[0]
        solved = [(node, a) for node, a in ranked if a is not None]
        if solved:
            best, answer = solved[0]
            stopped = "solution"
            break
    if answer is None:
        final_prefill = "The answer is"
        out = trace.generate(model, tokenizer, [prompt(FINAL, best.steps, final_prefill)],
                             GenerationConfig(max_new_tokens=config.final_tokens), "final")[0]
        answer = task.extract(final_prefill + out.text, fallback="first")
    path, node = [], best
    while node.parent is not None:
        path.append(node.thought)
        node = nodes[node.parent]
    return StrategyResult(answer, trace.finish(), {"tree": [n.to_dict() for n in nodes], "path": path[::-1],
                                                  "stopped": stopped, "answer_node": best.id})
