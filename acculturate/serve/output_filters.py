"""Output filters in the server (:mod:`acculturate.decode.postprocess`), enabled by config:

    output_filters:
      "*":       {blocklist: [default]}                          # every request
      Indonesia: {blocklist: [indonesia], languages: [id, en], best_of: 4, reward: mean_logprob}

The ``"*"`` entry applies to every request; a request's ``metadata.region`` adds its region's entry
on top (:func:`combine`: both blocklists and patterns, only languages both allow, the larger
``best_of``), so a client naming a region can make filtering stricter, never turn a filter off. A filtered
request generates ``best_of`` candidates per choice in the batcher, then the worker picks one per
choice. A rejected answer is ``fallback`` with finish_reason ``content_filter``.

Streaming: with blocklist/pattern filters only (``best_of`` 1, no ``languages``) a stream gets the
answer as it is written, less its last ``stream_holdback`` characters, which are sent once the text
after them shows they start no blocked phrase (:class:`HeldBackStream`). When a blocked phrase
appears, the stream stops there with finish_reason ``content_filter``: the client has the clean
text before it (or the ``fallback`` if nothing was sent yet), and that is what the feedback store
records. Filters that judge the whole answer (languages, best-of-n) send it as one piece at the end.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from acculturate.decode.postprocess import FILTERED, REWARDS, OutputFilterConfig, candidate_config, select
from acculturate.serve.batching import Job

DEFAULT_REGION = "*"


def combine(base: OutputFilterConfig, region: OutputFilterConfig) -> OutputFilterConfig:
    """``region``'s filters added to ``base``'s (the ``"*"`` entry): an answer must pass both.

    Blocklists and patterns are joined; languages are those both allow (when both set some);
    ``best_of``, ``judge_threshold`` and ``stream_holdback`` take the stricter value; the region's
    ``reward``, ``temperature`` and ``fallback`` win where it sets them.
    """
    if base.languages and region.languages:
        languages = tuple(code for code in region.languages if code in base.languages)
        if not languages:
            raise ValueError(f"output_filters: the region allows languages {list(region.languages)}, none of "
                             f"which the '*' entry allows ({list(base.languages)}): nothing could pass")
    else:
        languages = base.languages or region.languages
    holdbacks = [base.stream_holdback, region.stream_holdback]
    return OutputFilterConfig(
        blocklist=tuple(dict.fromkeys(base.blocklist + region.blocklist)),
        patterns=tuple(dict.fromkeys(base.patterns + region.patterns)), languages=languages,
        best_of=max(base.best_of, region.best_of), reward=region.reward or base.reward,
        temperature=region.temperature, judge_threshold=max(base.judge_threshold, region.judge_threshold),
        fallback=region.fallback, stream_holdback=None if None in holdbacks else max(holdbacks))


# (base, region) -> their combination, built once so its blocklist compiles once, not per request. The
# entry keeps both objects alive, so their ids cannot be reused by other configs while it exists.
_combined: dict[tuple[int, int], tuple[OutputFilterConfig, OutputFilterConfig, OutputFilterConfig]] = {}


def filters_for(output_filters: dict[str, OutputFilterConfig], region: str | None) -> OutputFilterConfig | None:
    """The ``"*"`` entry with ``region``'s (case-insensitive) added; None when nothing applies."""
    by_name = {k.lower(): v for k, v in output_filters.items()}
    base = by_name.get(DEFAULT_REGION)
    own = by_name.get((region or "").lower()) if (region or "").lower() != DEFAULT_REGION else None
    if base is not None and own is not None:
        key = (id(base), id(own))
        if key not in _combined:
            _combined[key] = (base, own, combine(base, own))
        filters = _combined[key][2]
    else:
        filters = own or base
    return filters if filters is not None and filters.active else None


class HeldBackStream:
    """One streamed answer under a blocklist: ``add`` the generated text as it comes; everything but
    its last ``holdback`` characters goes to ``emit`` as long as no blocked phrase has appeared.

    A phrase is caught before any of it is sent when it is at most ``holdback`` characters long:
    it is flagged as soon as one character follows it (:meth:`Blocklist.find_settled`), and by then
    at most ``len(text) - 1 - holdback`` characters were sent before that character arrived.
    """

    def __init__(self, filters: OutputFilterConfig, emit: Callable[[str], None]):
        self.blocklist = filters.compiled_blocklist()
        self.holdback = filters.stream_holdback
        self.emit = emit
        self.text = ""
        self.sent = 0
        self.blocked = False

    def add(self, delta: str) -> None:
        if self.blocked:
            return
        self.text += delta
        # A phrase that settles now starts after what was sent (see the class docstring), so only
        # the unsent tail is scanned: each token costs O(holdback), not O(answer).
        if self.blocklist.find_settled(self.text, max(0, self.sent - self.holdback)):
            self.blocked = True
            return
        safe = len(self.text) - self.holdback
        if safe > self.sent:
            self.emit(self.text[self.sent:safe])
            self.sent = safe

    def finish(self, chosen, fallback: str):
        """Send what is left of the checked answer ``chosen`` (a Completion); returns the Completion
        as the client got it (cut at the blocked phrase when one appeared after text was sent)."""
        blocked = self.blocked or chosen.finish_reason == FILTERED
        if not blocked:
            if chosen.text.startswith(self.text[:self.sent]):
                rest = chosen.text[self.sent:]
            else:   # the final text was cut (a stop string) before what was sent: nothing more to send
                rest = ""
            if rest:
                self.emit(rest)
            return chosen
        if self.sent == 0:   # nothing shown yet: the client gets the fallback, as without streaming
            self.emit(fallback)
            return replace(chosen, text=fallback, finish_reason=FILTERED) if chosen.finish_reason != FILTERED else chosen
        return replace(chosen, text=self.text[:self.sent], finish_reason=FILTERED)


def submit_filtered(batcher, job: Job, filters: OutputFilterConfig) -> None:
    """Queue ``job`` so that its future gets the filtered, re-ranked completions.

    Raises:
        Overloaded: from the batcher, as for an unfiltered job.
    """
    n = filters.best_of
    streams = None
    if job.on_text is not None and filters.streams_incrementally:   # n is 1: one candidate per choice
        streams = [HeldBackStream(filters, lambda delta, i=i: job.on_text(i, delta)) for i in range(len(job.prompts))]
    inner = Job(job.served, [p for p in job.prompts for _ in range(n)], candidate_config(job.config, filters),
                (lambda i, delta: streams[i].add(delta)) if streams is not None else None, cancelled=job.cancelled)
    reward_fn = REWARDS[filters.reward](job.served.model, job.served.tokenizer) if filters.reward else None

    def finish(future) -> None:  # in the batcher's worker thread
        if future.exception() is not None:
            job.future.set_exception(future.exception())
            return
        try:
            completions = future.result()
            grouped = [completions[i * n:(i + 1) * n] for i in range(len(job.prompts))]
            with job.served.active():  # the reward may run the model: as the same adapter
                chosen = select(job.prompts, grouped, filters, reward_fn)
            if streams is not None:
                chosen = [s.finish(c, filters.fallback) for s, c in zip(streams, chosen)]
            elif job.on_text is not None:
                for i, c in enumerate(chosen):
                    if c.text:
                        job.on_text(i, c.text)
            job.future.set_result(chosen)
        except Exception as e:  # reported to the client like a failed batch
            job.future.set_exception(e)

    inner.future.add_done_callback(finish)
    batcher.submit(inner)
