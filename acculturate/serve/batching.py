"""Dynamic batching: one worker thread runs the requests of many clients as one ``generate`` call.

Requests queue as :class:`Job` s. When the worker is idle it waits for a first job, then collects
whatever else arrives within ``window_s`` (10 ms by default: a small delay for one client, and
enough for concurrent clients' requests to meet); while a batch runs, new jobs pile up and the next
batch takes them all at once, so the batch grows with the load.

One ``generate`` call takes one model and one :class:`GenerationConfig`, so only jobs that agree on
both share a batch (:func:`batch_key`). A seeded sampling job runs alone: ``generate`` seeds prompt
``i`` from ``(seed, i)``, so the same request gives the same text only at the same positions.

A job whose client has gone is marked ``cancelled``: its text is no longer delivered, it is skipped
if it has not started, and a batch whose jobs are all cancelled is stopped at its next token.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from itertools import count
from typing import Callable

from acculturate.decode import Completion, GenerationConfig, generate

log = logging.getLogger(__name__)

_ids = count()


@dataclass(eq=False)
class Job:
    """Prompts of one request, all for one model and one config.

    ``on_text(i, delta)`` receives the text of prompt ``i`` as it is generated (in the worker
    thread); ``future`` gets the list of :class:`Completion` in prompt order, or the exception.
    """

    served: object                 # a ServedModel: model, tokenizer, adapter and active()
    prompts: list[str]
    config: GenerationConfig
    on_text: Callable[[int, str], None] | None = None
    future: Future = field(default_factory=Future)
    cancelled: threading.Event = field(default_factory=threading.Event)
    id: int = field(default_factory=lambda: next(_ids))


class Cancelled(Exception):
    """The job's client went away before its result was ready."""


class Overloaded(Exception):
    """Too many prompts are waiting; the caller should answer 429."""


class _AllCancelled(Exception):
    pass


def batch_key(job: Job) -> tuple:
    """Jobs with equal keys can run in one ``generate`` call."""
    c = job.config
    seeded = c.seed is not None and not c.greedy
    return (id(job.served.model), job.served.adapter, job.served.version, c.max_new_tokens, c.temperature if not c.greedy else 0.0,
            c.top_k, c.top_p, c.repetition_penalty, c.stop, ("alone", job.id) if seeded else None)


@dataclass
class BatchStats:
    batches: int = 0
    prompts: int = 0
    largest: int = 0
    cancelled: int = 0


class Batcher:
    """The worker that turns queued jobs into batched ``generate`` calls.

    Args:
        max_batch_size: most prompts in one batch (a single job with more still runs, alone).
        window_s: how long an idle worker waits for more jobs after the first.
        max_pending: most prompts waiting; :meth:`submit` raises :class:`Overloaded` beyond it.
    """

    def __init__(self, max_batch_size: int = 16, window_s: float = 0.01, max_pending: int = 256):
        self.max_batch_size = max_batch_size
        self.window_s = window_s
        self.max_pending = max_pending
        self.stats = BatchStats()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._pending = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="acculturate-batcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Finish the running batch, fail the waiting jobs, end the thread."""
        self._stopping = True
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, job: Job) -> Future:
        if self._stopping:
            raise Overloaded("the server is shutting down")
        with self._lock:
            if self._pending + len(job.prompts) > self.max_pending:
                raise Overloaded(f"{self._pending} prompts are waiting (limit {self.max_pending}); retry later")
            self._pending += len(job.prompts)
        self._queue.put(job)
        return job.future

    # --- the worker -------------------------------------------------------------------------------

    def _loop(self) -> None:
        backlog: list[Job] = []
        while True:
            if not backlog:
                first = self._queue.get()
                if first is None:
                    break
                backlog.append(first)
                if not self._collect(backlog, time.monotonic() + self.window_s):
                    break
            if not self._collect(backlog, None):  # whatever queued while the last batch ran
                break
            backlog = [j for j in backlog if not self._drop_if_cancelled(j)]
            if not backlog:
                continue
            batch, backlog = self._pick(backlog)
            self._run(batch)
        for job in backlog:
            self._finish(job, error=Cancelled("the server stopped before this request ran"))
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                self._finish(job, error=Cancelled("the server stopped before this request ran"))

    def _collect(self, backlog: list[Job], deadline: float | None) -> bool:
        """Move queued jobs into ``backlog``: until ``deadline`` or a full batch, or (deadline None)
        only those already waiting. Returns False when told to stop."""
        while deadline is None or sum(len(j.prompts) for j in backlog) < self.max_batch_size:
            try:
                if deadline is None:
                    job = self._queue.get_nowait()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    job = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if job is None:
                return False
            backlog.append(job)
        return True

    def _pick(self, backlog: list[Job]) -> tuple[list[Job], list[Job]]:
        """The oldest job and the next jobs that share its key, up to ``max_batch_size`` prompts."""
        key = batch_key(backlog[0])
        batch, rest, size = [], [], 0
        for job in backlog:
            if batch_key(job) == key and (not batch or size + len(job.prompts) <= self.max_batch_size):
                batch.append(job)
                size += len(job.prompts)
            else:
                rest.append(job)
        return batch, rest

    def _drop_if_cancelled(self, job: Job) -> bool:
        if job.cancelled.is_set():
            self.stats.cancelled += 1
            self._finish(job, error=Cancelled("the client disconnected"))
            return True
        return False

    def _run(self, batch: list[Job]) -> None:
        owners = [(job, i) for job in batch for i in range(len(job.prompts))]
        prompts = [p for job in batch for p in job.prompts]
        served = batch[0].served
        config = replace(batch[0].config, batch_size=len(prompts))  # one forward pass for all rows

        def on_text(index: int, delta: str) -> None:
            job, i = owners[index]
            if job.cancelled.is_set():
                if all(j.cancelled.is_set() for j in batch):
                    raise _AllCancelled  # nobody is listening: stop spending compute on this batch
                return
            if job.on_text is not None:
                try:
                    job.on_text(i, delta)
                except Exception:  # a broken listener must not fail the other jobs of the batch
                    log.exception("streaming callback of job %s failed; cancelling it", job.id)
                    job.cancelled.set()

        self.stats.batches += 1
        self.stats.prompts += len(prompts)
        self.stats.largest = max(self.stats.largest, len(prompts))
        try:
            with served.active():  # this adapter (or the bare base) for the whole batch
                completions = generate(served.model, served.tokenizer, prompts, config, on_text=on_text)
        except _AllCancelled:
            self.stats.cancelled += len(batch)
            for job in batch:
                self._finish(job, error=Cancelled("the client disconnected"))
            return
        except Exception as e:  # reported to every client of the batch; the worker lives on
            log.exception("batch of %d prompts failed", len(prompts))
            for job in batch:
                self._finish(job, error=e)
            return
        start = 0
        for job in batch:
            result: list[Completion] = completions[start:start + len(job.prompts)]
            start += len(job.prompts)
            if job.cancelled.is_set():
                self.stats.cancelled += 1
                self._finish(job, error=Cancelled("the client disconnected"))
            else:
                self._finish(job, result=result)

    def _finish(self, job: Job, result=None, error: BaseException | None = None) -> None:
        with self._lock:
            self._pending -= len(job.prompts)
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)
