"""Output filters in the server (:mod:`acculturate.decode.postprocess`), enabled by config:

    output_filters:
      "*":       {blocklist: [default]}                          # every request
      Indonesia: {blocklist: [indonesia], languages: [id, en], best_of: 4, reward: mean_logprob}

A request's ``metadata.region`` picks its entry (else ``"*"``; no entry: no filtering). A filtered
request generates ``best_of`` candidates per choice in the batcher, then the worker picks one per
choice; a stream then gets each chosen answer as one delta (the text cannot be streamed before it
has passed the filters). A rejected answer is ``fallback`` with finish_reason ``content_filter``.
"""

from __future__ import annotations

from acculturate.decode.postprocess import REWARDS, OutputFilterConfig, candidate_config, select
from acculturate.serve.batching import Job

DEFAULT_REGION = "*"


def filters_for(output_filters: dict[str, OutputFilterConfig], region: str | None) -> OutputFilterConfig | None:
    """The filters of ``region`` (case-insensitive), else the ``"*"`` entry; None when nothing applies."""
    by_name = {k.lower(): v for k, v in output_filters.items()}
    filters = by_name.get((region or "").lower()) or by_name.get(DEFAULT_REGION)
    return filters if filters is not None and filters.active else None


def submit_filtered(batcher, job: Job, filters: OutputFilterConfig) -> None:
    """Queue ``job`` so that its future gets the filtered, re-ranked completions.

    Raises:
        Overloaded: from the batcher, as for an unfiltered job.
    """
    n = filters.best_of
    inner = Job(job.served, [p for p in job.prompts for _ in range(n)], candidate_config(job.config, filters),
                None, cancelled=job.cancelled)
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
            if job.on_text is not None:
                for i, c in enumerate(chosen):
                    if c.text:
                        job.on_text(i, c.text)
            job.future.set_result(chosen)
        except Exception as e:  # reported to the client like a failed batch
            job.future.set_exception(e)

    inner.future.add_done_callback(finish)
    batcher.submit(inner)
