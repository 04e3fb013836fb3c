"""program: the model writes a Python program whose printed output is the answer; the program runs
in :mod:`.sandbox` (program-aided reasoning: Gao et al., 2023, PAL; Chen et al., 2023, PoT). A
program that fails is shown to the model with its error, up to ``retries`` times. Before asking the
model anything, the strategy checks that every OS layer of the sandbox works here (fail closed:
SandboxUnavailable names what is missing, unless ``sandbox.allow_weaker`` accepts it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from acculturate.data import Example
from acculturate.decode import GenerationConfig
from acculturate.prompting.prompts import SELECTIONS, region_of, render, select_exemplars, system_prompt
from acculturate.prompting.sandbox import SandboxLimits, check_layers, extract_code, run_program
from acculturate.prompting.tasks import Task
from acculturate.prompting.trace import StrategyResult, Trace

INSTRUCTION = ("Write a short Python program that computes the answer to this question and prints only "
               "the answer.\n\nQuestion: {question}")
RETRY = "The program did not work:\n{error}\nWrite a corrected program."


@dataclass
class ProgramConfig:
    """Program synthesis + sandboxed execution."""

    k: int = 2
    """Exemplar programs shown first."""
    selection: str = "static"
    """'static' or 'similar'."""
    seed: int = 0
    retries: int = 1
    """Repair attempts after a failing or missing program."""
    max_new_tokens: int = 128
    persona: str | None = None
    region: str | None = None
    template: str = "chat"
    sandbox: SandboxLimits = field(default_factory=lambda: SandboxLimits(cpu_seconds=2, wall_seconds=5,
                                                                         memory_mb=256))
    """Limits of each program run; sandbox.allow_weaker lists OS layers it may run without (default none)."""

    def __post_init__(self):
        if self.k < 0 or self.retries < 0:
            raise ValueError(f"k and retries: expected >= 0, got k={self.k}, retries={self.retries}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection: expected one of {SELECTIONS}, got {self.selection!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: expected >= 1, got {self.max_new_tokens}")


def _fenced(code: str) -> str:
    return f"```python\n{code.strip()}\n```"


def run(model, tokenizer, task: Task, example: Example, config: ProgramConfig | None = None) -> StrategyResult:
    """Ask for a program, run it, read the answer from the last line it prints.

    Returns:
        StrategyResult; ``extra["attempts"]`` holds each attempt's code, stdout, stderr and why it
        stopped (``killed_reason``); ``extra["sandbox_layers"]`` the OS layers that held; the
        answer is None when no attempt printed one.

    Raises:
        SandboxUnavailable: an OS layer of the sandbox is missing here and not in
            ``config.sandbox.allow_weaker``; nothing was generated or run.
    """
    config = config or ProgramConfig()
    layers = check_layers(config.sandbox)
    trace = Trace()
    exemplars = [e for e in select_exemplars(task, example, config.k, config.selection, config.seed)
                 if e.meta.get("program")]
    messages = []
    for ex in exemplars:
        messages += [{"role": "user", "content": INSTRUCTION.format(question=ex.meta["question"])},
                     {"role": "assistant", "content": _fenced(ex.meta["program"])}]
    messages.append({"role": "user", "content": INSTRUCTION.format(question=example.meta["question"])})
    system = system_prompt(config.persona, region_of(example, config.region))
    attempts, answer = [], None
    for _ in range(config.retries + 1):
        prompt = render(tokenizer, messages, system, config.template)
        text = trace.generate(model, tokenizer, [prompt], GenerationConfig(max_new_tokens=config.max_new_tokens),
                              "program")[0].text
        code = extract_code(text)
        if code is None:
            error = "No Python program found in the reply."
            attempts.append({"code": None, "error": error})
        else:
            result = run_program(code, config.sandbox)
            lines = [line for line in result.stdout.splitlines() if line.strip()]
            answer = task.extract(lines[-1], fallback="last") if (result.ok and lines) else None
            attempts.append({"code": code, "stdout": result.stdout, "stderr": result.stderr[-2000:],
                             "exit_code": result.exit_code, "killed_reason": result.killed_reason,
                             "seconds": round(result.seconds, 3)})
            trace.log("sandbox", exit_code=result.exit_code, killed_reason=result.killed_reason,
                      seconds=round(result.seconds, 3))
            if answer is not None:
                break
            error = (result.stderr.strip().splitlines() or ["(no output)"])[-1] if not result.ok \
                else "It printed nothing." if not lines else f"Its output {lines[-1]!r} is not an answer."
            if result.killed_reason:
                error = f"It was stopped ({result.killed_reason}). {error}"
        messages += [{"role": "assistant", "content": text}, {"role": "user", "content": RETRY.format(error=error)}]
    return StrategyResult(answer, trace.finish(), {"attempts": attempts, "sandbox_layers": layers,
                                                  "exemplars": [e.meta["id"] for e in exemplars]})
