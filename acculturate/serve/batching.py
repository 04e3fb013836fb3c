"""Continuous batching: one worker thread decodes the requests of many clients in one running batch.

Requests queue as :class:`Job` s. The worker keeps one :class:`acculturate.decode.engine.DecodeBatch`
running: between two tokens it admits every waiting job that fits (``max_batch_size`` rows) and
runs on the same weights, prefilling the new prompts and appending them to the batch, and each row
leaves the batch the moment it finishes. So a request that arrives while others run starts at the
next token instead of waiting for the whole batch, and the batch stays full under load. When the
worker is idle it waits ``window_s`` (10 ms by default) after a first job for others to arrive, so
simultaneous requests share one prefill.

Rows carry their own sampling settings (temperature, top-p, top-k, stop strings, max tokens, seed),
so jobs with different settings share a batch. Jobs share a batch only when they run on the same
weights: the same model, adapter and adapter version (:func:`batch_key`). While a batch runs it
holds its adapter active (``served.active()``); when the oldest waiting job needs other weights,
or :meth:`Batcher.drain` was called (an adapter is about to be replaced or removed), the batch
admits no one new, finishes its rows and lets the next one start.

A seeded job's row ``i`` draws from a generator seeded from ``(seed, i)`` as in ``generate``, so its
sample does not depend on what else is in the batch (up to floating-point rounding of batched
arithmetic).

A job whose client has gone is marked ``cancelled``: its rows leave the batch before the next token,
and it is skipped if it has not started.

On a CUDA GPU, Llama-style models decode on fixed slots (:class:`acculturate.decode.slots.SlotBatch`):
a static KV cache of ``max_batch_size`` rows, each step one CUDA-graph replay, rows joining and
leaving between replays. The slot batch (cache and captured graphs) is kept while the same weights
run, so later batches reuse it. With ``warm_prompt_tokens`` > 0 the worker builds the slot batch of the
model given to :meth:`Batcher.start` before it takes its first job and runs every bucketed prefill
shape and decoding graph once (:meth:`acculturate.decode.slots.SlotBatch.warm`), so the first
requests pay no kernel compilation or graph capture; requests that come meanwhile wait in the queue.
Elsewhere (the CPU, other model types, prompt tuning, a job with more
rows than ``max_batch_size``) the batch is a :class:`acculturate.decode.engine.DecodeBatch`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from contextlib import ExitStack
from dataclasses import dataclass, field
from itertools import count
from typing import Callable

from acculturate.decode import Completion, GenerationConfig
from acculturate.decode.engine import DecodeBatch, make_row
from acculturate.decode.generate import encode_prompts, static_decoding_supported
from acculturate.decode.slots import SlotBatch

log = logging.getLogger(__name__)

_ids = count()


@dataclass(eq=False)
class Job:
    """Prompts of one request, all for one model and one config.

    ``on_text(i, delta)`` receives the text of prompt ``i`` as it is generated (in the worker
    thread); ``future`` gets the list of :class:`Completion` in prompt order, or the exception.
    """

    served: object                 # a ServedModel: model, tokenizer, adapter, version and active()
    prompts: list[str]
    config: GenerationConfig
    on_text: Callable[[int, str], None] | None = None
    future: Future = field(default_factory=Future)
    cancelled: threading.Event = field(default_factory=threading.Event)
    id: int = field(default_factory=lambda: next(_ids))
    results: dict[int, Completion] = field(default_factory=dict, repr=False)


class Cancelled(Exception):
    """The job's client went away before its result was ready."""


class Overloaded(Exception):
    """Too many prompts are waiting; the caller should answer 429."""


def batch_key(job: Job) -> tuple:
    """Jobs with equal keys run on the same weights and can share a batch."""
    return weights_key(job.served)


def weights_key(served) -> tuple:
    """Which weights a served model runs on: the model object, the adapter and its version."""
    return (id(served.model), served.adapter, served.version)


@dataclass
class BatchStats:
    batches: int = 0     # batches started (a batch runs until its last row leaves)
    prompts: int = 0     # rows admitted
    largest: int = 0     # most rows decoding at once
    joined: int = 0      # rows admitted into a batch that was already decoding
    steps: int = 0       # decoding steps (one token for every row of the batch)
    cancelled: int = 0   # jobs dropped because their client went away
    prefills: int = 0    # admissions: one prefill forward each, however many rows it admits
    prefill_s: float = 0.0   # worker time spent admitting rows (tokenizing, prefill, first tokens)
    step_s: float = 0.0      # worker time spent in steps (launching, reading and streaming tokens)
    warming: bool = False    # the worker is warming the slot batch up (Batcher.start) and takes no job yet
    warmup_s: float = 0.0    # how long that warm-up took (0: none ran)


class Batcher:
    """The worker that runs queued jobs in one continuously refilled batch.

    Args:
        max_batch_size: most rows decoding at once (a single job with more still runs, alone).
        window_s: how long an idle worker waits for more jobs after the first.
        max_pending: most prompts queued or running; :meth:`submit` raises :class:`Overloaded` beyond it.
        cuda_graphs: decode on fixed slots with graph replays where the model allows.
        warm_prompt_tokens: at :meth:`start`, warm the slot batch up for prompts of up to this many
            tokens (0: no warm-up); ``warm_new_tokens`` more columns of cache are allocated with it.
    """

    def __init__(self, max_batch_size: int = 16, window_s: float = 0.01, max_pending: int = 256,
                 cuda_graphs: bool = True, warm_prompt_tokens: int = 0, warm_new_tokens: int = 0):
        self.max_batch_size = max_batch_size
        self.cuda_graphs = cuda_graphs
        self.warm_prompt_tokens, self.warm_new_tokens = warm_prompt_tokens, warm_new_tokens
        self.window_s = window_s
        self.max_pending = max_pending
        self.stats = BatchStats()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._pending = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._drain = threading.Event()

    def start(self, warm=None) -> None:
        """Start the worker; with ``warm`` (a served model) and ``warm_prompt_tokens`` > 0 it first
        warms a slot batch for ``warm``'s weights up (where they decode on slots)."""
        self._thread = threading.Thread(target=self._loop, args=(warm,), name="acculturate-batcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Finish the running batch, fail the waiting jobs, end the thread."""
        self._stopping = True
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def drain(self) -> None:
        """Let the running batch admit no new rows, so it ends soon and releases its adapter (called
        before an adapter is replaced or removed; the next batch admits again)."""
        self._drain.set()

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

    def _loop(self, warm=None) -> None:
        backlog: list[Job] = []
        running = _Running(self.max_batch_size if self.cuda_graphs else 0)
        try:
            if warm is not None and self.warm_prompt_tokens > 0:
                self._warm(running, warm)
            while True:
                if not running.rows and not backlog:
                    running.close()
                    first = self._queue.get()
                    if first is None:
                        break
                    backlog.append(first)
                    if not self._collect(backlog, time.monotonic() + self.window_s):
                        break
                if not self._collect(backlog, None):  # whatever queued meanwhile
                    break
                backlog = [j for j in backlog if not self._drop_if_cancelled(j)]
                self._drop_cancelled_rows(running)
                if not running.rows:
                    running.close()
                    self._drain.clear()
                backlog = self._admit(running, backlog)
                if running.rows:
                    self._step(running)
        finally:
            running.close()
            for job in running.jobs() + backlog:
                self._finish(job, error=Cancelled("the server stopped before this request finished"))
            while True:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    self._finish(job, error=Cancelled("the server stopped before this request ran"))

    def _warm(self, running: "_Running", served) -> None:
        self.stats.warming = True
        try:
            done = running.warm(served, self.warm_prompt_tokens, self.warm_new_tokens)
        except Exception:   # a failed warm-up costs the first requests time, never the server
            log.exception("warming the slot batch up failed; shapes will compile on first use")
            running.forget()   # its state may be half-written: the first batch builds a fresh one
            done = None
        finally:
            self.stats.warming = False
        if done is not None:
            self.stats.warmup_s = done["seconds"]
            log.info("warmed up in %.2f s: %d prefill shapes (prompts up to %d tokens, up to %d rows), %d decoding "
                     "graphs", done["seconds"], done["prefill_shapes"], self.warm_prompt_tokens,
                     self.max_batch_size, done["graphs"])

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

    def _admit(self, running: "_Running", backlog: list[Job]) -> list[Job]:
        """Start or refill the batch from the oldest waiting jobs; returns the jobs still waiting.

        Jobs are taken in arrival order while they share the batch's weights and fit; the first one
        that needs other weights stops admission, so the batch drains and that job goes next."""
        if not backlog or (running.rows and (self._drain.is_set() or not running.batch.can_join)):
            return backlog
        if not running.rows:
            running.open(backlog[0].served, len(backlog[0].prompts))
            self.stats.batches += 1
        taken, size = [], len(running.rows)
        for job in backlog:
            if batch_key(job) != running.key:
                break
            if size and size + len(job.prompts) > self.max_batch_size:
                break
            taken.append(job)
            size += len(job.prompts)
        if not taken:
            return backlog
        started = time.perf_counter()
        rows = []
        for job in taken:
            try:
                ids = encode_prompts(job.served.tokenizer, job.prompts)
                rows += [make_row(job.served.tokenizer, p, job.config, i, _streamer(job, i), (job, i))
                         for i, p in enumerate(ids)]
            except Exception as e:  # a prompt the tokenizer or config refuses fails that job only
                self._finish(job, error=e)
        joined = len(running.rows) > 0
        try:
            running.batch.add(rows)
        except Exception as e:
            log.exception("prefill of %d prompts failed", len(rows))
            for job in {id(r.tag[0]): r.tag[0] for r in rows}.values():
                self._finish(job, error=e)
        else:
            self.stats.prompts += len(rows)
            self.stats.joined += len(rows) if joined else 0
            self.stats.largest = max(self.stats.largest, len(running.rows))
            self.stats.prefills += 1
        self.stats.prefill_s += time.perf_counter() - started
        return [j for j in backlog if j not in taken]

    def _step(self, running: "_Running") -> None:
        started = time.perf_counter()
        try:
            finished = running.batch.step()
        except Exception as e:  # reported to every client of the batch; the worker lives on
            log.exception("decoding step of a batch of %d rows failed", len(running.rows))
            for job in running.jobs():
                self._finish(job, error=e)
            running.close(failed=True)
            return
        self.stats.steps += 1
        self.stats.step_s += time.perf_counter() - started
        for row in finished:
            job, i = row.tag
            job.results[i] = Completion(text=row.stream.text, token_ids=list(row.stream.token_ids),
                                        finish_reason=row.finish_reason, prompt_tokens=len(row.prompt_ids),
                                        completion_tokens=len(row.stream.token_ids),
                                        cached_tokens=row.cached_tokens)
            if len(job.results) == len(job.prompts):
                self._finish(job, result=[job.results[k] for k in range(len(job.prompts))])

    def _drop_cancelled_rows(self, running: "_Running") -> None:
        if not running.rows:
            return
        for job in {id(r.tag[0]): r.tag[0] for r in running.batch.cancel(lambda r: r.tag[0].cancelled.is_set())}.values():
            self.stats.cancelled += 1
            self._finish(job, error=Cancelled("the client disconnected"))

    def _drop_if_cancelled(self, job: Job) -> bool:
        if job.cancelled.is_set():
            self.stats.cancelled += 1
            self._finish(job, error=Cancelled("the client disconnected"))
            return True
        return False

    def _finish(self, job: Job, result=None, error: BaseException | None = None) -> None:
        if job.future.done():
            return
        with self._lock:
            self._pending -= len(job.prompts)
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)


class _Running:
    """The running batch, the weights it runs on and the adapter context it holds.

    ``slots`` > 0: fixed-slot graph decoding where the model supports it, with that many slots; the
    slot batch is kept after the batch ends and reused while the next batch runs the same weights."""

    def __init__(self, slots: int = 0):
        self.batch: DecodeBatch | SlotBatch | None = None
        self.key: tuple | None = None
        self._context: ExitStack | None = None
        self.slots = slots
        self._kept: tuple[tuple, SlotBatch] | None = None

    @property
    def rows(self) -> list:
        return self.batch.rows if self.batch is not None else []

    def jobs(self) -> list[Job]:
        return list({id(r.tag[0]): r.tag[0] for r in self.rows}.values())

    def open(self, served, rows: int = 1) -> None:
        self.close()
        self._context = ExitStack()
        self._context.enter_context(served.active())  # this adapter (or the bare base) until the batch ends
        self.key = weights_key(served)
        if 0 < rows <= self.slots and static_decoding_supported(served.model):
            if self._kept is None or self._kept[0] != self.key:
                self._kept = None   # other weights: free the old cache and graphs first
                self._kept = (self.key, SlotBatch(served.model, served.tokenizer, self.slots))
            self.batch = self._kept[1]
        else:
            self.batch = DecodeBatch(served.model, served.tokenizer)

    def warm(self, served, prompt_tokens: int, new_tokens: int) -> dict | None:
        """Make the kept slot batch for ``served``'s weights and warm it up
        (:meth:`SlotBatch.warm`); None where those weights do not decode on slots."""
        if not self.slots or not static_decoding_supported(served.model):
            return None
        with served.active():
            self._kept = (weights_key(served), SlotBatch(served.model, served.tokenizer, self.slots))
            return self._kept[1].warm(prompt_tokens, new_tokens)

    def forget(self) -> None:
        """Drop the kept slot batch (its cache and graphs)."""
        self._kept = None

    def close(self, failed: bool = False) -> None:
        if isinstance(self.batch, SlotBatch):
            self.batch.reset()
            if failed:
                self._kept = None   # its state may be half-written: start the next batch afresh
        if self._context is not None:
            self._context.close()
        self._context, self.batch, self.key = None, None, None


def _streamer(job: Job, index: int) -> Callable[[str], None] | None:
    if job.on_text is None:
        return None

    def on_text(delta: str) -> None:
        if job.cancelled.is_set():
            return
        try:
            job.on_text(index, delta)
        except Exception:  # a broken listener must not fail the other jobs of the batch
            log.exception("streaming callback of job %s failed; cancelling it", job.id)
            job.cancelled.set()
    return on_text
