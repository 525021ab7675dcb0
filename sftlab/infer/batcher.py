"""Request batching for the server: many concurrent requests -> few ``generate`` calls.

Request handlers never call the model. Each puts a ``Job`` (its prompts, sampling settings
and an optional streaming callback) on the ``Batcher``'s queue and waits on the job's
future. One worker thread takes the first job, waits ``window_ms`` for others (up to
``max_prompts`` prompts), groups them by identical sampling settings and runs ONE
``generator.generate`` per group. Results are cut back into each job's slice, in order.

Decisions, stated once:

* Requests that differ only in their seed share a batch when greedy (``temperature == 0``
  ignores the seed), or when the generator samples each row from its own generator
  (``samples_per_row``, as ``HFGenerator`` does): the batcher passes every row's seed
  (``row_seeds(job seed, n)``), so a seeded request gives the same text alone or batched.
* Cancelling: ``job.cancel`` (a ``threading.Event``; set when the client hangs up) drops a
  queued job before it runs, and ends its rows at their next token when the generator
  accepts ``cancelled(row)``, freeing their batch slots. ``close(cancel=True)`` cancels
  every job (shutdown).
* A failing batch of several jobs is re-run job by job, so one bad request (a prompt too
  long for the context) fails only itself; a single failing job gets the exception on its
  future and the worker keeps serving.
* Streaming: when the generator's ``generate`` accepts ``on_text(row, delta)``, each row's
  new text goes to its own job's callback as it is decoded; a generator without it streams
  each finished text as one delta.

Example::

    >>> from sftlab.infer.base import Generation, SamplingConfig
    >>> class Echo:
    ...     name = "echo"
    ...     def generate(self, prompts, sampling):
    ...         return [Generation(p, 1, 1, "stop") for p in prompts]
    >>> batcher = Batcher(Echo(), window_ms=1)
    >>> batcher.submit(Job(["a", "b"], SamplingConfig())).result()[1].text
    'b'
    >>> batcher.close(); batcher.batch_sizes
    [2]
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import inspect
import json
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from sftlab.infer.base import Prompt, SamplingConfig
from sftlab.infer.hf import row_seeds


@dataclass
class Job:
    """One request: its prompts (n copies), settings, optional stream callback, result future."""

    prompts: list[Prompt]
    """What to complete: message lists (chat) or strings (completions), one per choice."""
    sampling: SamplingConfig
    """Generation settings; jobs with equal settings share one generate call."""
    on_text: Callable[[int, str], None] | None = None
    """``on_text(k, delta)``: new text of this job's prompt ``k`` (streaming requests)."""
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    """Set to this job's ``list[Generation]`` (in prompt order), or to the exception
    (``concurrent.futures.CancelledError`` when cancelled before it ran)."""
    cancel: threading.Event = field(default_factory=threading.Event)
    """Set when nobody waits for the result any more (the client hung up, the server stops)."""


class Batcher:
    """Collects jobs for ``window_ms`` and runs each group of equal settings as one generate call.

    ``batch_sizes`` records the number of prompts of every generate call; ``in_flight`` is
    the number of rows of the call running now that are not cancelled (0 when idle).
    """

    def __init__(self, generator, window_ms: float = 10.0, max_prompts: int = 64) -> None:
        self.generator, self.window, self.max_prompts = generator, window_ms / 1000.0, max_prompts
        self.batch_sizes: list[int] = []
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._running: list[Job] = []
        accepts = inspect.signature(generator.generate).parameters
        self._streams, self._cancels = "on_text" in accepts, "cancelled" in accepts
        self._seeds_per_row = "seeds" in accepts and getattr(generator, "samples_per_row", False)
        self._thread = threading.Thread(target=self._run, name="sftlab-batcher", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> concurrent.futures.Future:
        """Queue ``job``; returns its future (also ``job.future``)."""
        self._queue.put(job)
        return job.future

    @property
    def in_flight(self) -> int:
        return sum(len(job.prompts) for job in list(self._running) if not job.cancel.is_set())

    def close(self, cancel: bool = False) -> None:
        """Finish the batch in progress (``cancel``: cancel it and every queued job), then stop
        the worker thread."""
        if cancel:
            for job in list(self._running) + list(self._queue.queue):
                if job is not None:
                    job.cancel.set()
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs = [first]
            deadline = time.monotonic() + self.window
            while sum(len(j.prompts) for j in jobs) < self.max_prompts:
                try:
                    job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if job is None:
                    self._queue.put(None)  # finish this batch, then stop
                    break
                jobs.append(job)
            live = []
            for job in jobs:
                if job.cancel.is_set():
                    job.future.cancel()
                else:
                    live.append(job)
            for group in group_by_settings(live, seeds_per_row=self._seeds_per_row):
                self._run_group(group)

    def _run_group(self, jobs: list[Job]) -> None:
        prompts, owners = [], []  # owners[i] = (job, index of the prompt within its job)
        for job in jobs:
            for k, prompt in enumerate(job.prompts):
                prompts.append(prompt)
                owners.append((job, k))

        def route(i: int, delta: str) -> None:
            job, k = owners[i]
            if job.on_text is not None:
                job.on_text(k, delta)

        kwargs = {"on_text": route} if self._streams else {}
        if self._cancels:
            kwargs["cancelled"] = lambda i: owners[i][0].cancel.is_set()
        if self._seeds_per_row:
            kwargs["seeds"] = [seed for job in jobs for seed in row_seeds(job.sampling.seed, len(job.prompts))]
        self.batch_sizes.append(len(prompts))
        self._running = jobs
        try:
            results = self.generator.generate(prompts, jobs[0].sampling, **kwargs)
        except Exception as exc:
            if len(jobs) > 1:  # one bad request must not fail the others: run each alone
                for job in jobs:
                    self._run_group([job])
            else:  # answer the waiting request, keep serving
                jobs[0].future.set_exception(exc)
            return
        finally:
            self._running = []
        position = 0
        for job in jobs:
            mine = results[position:position + len(job.prompts)]
            position += len(job.prompts)
            if not self._streams and job.on_text is not None:
                for k, gen in enumerate(mine):
                    job.on_text(k, gen.text)
            job.future.set_result(mine)


def group_by_settings(jobs: list[Job], seeds_per_row: bool = False) -> list[list[Job]]:
    """Jobs grouped by equal sampling settings, in arrival order; the seed is ignored when
    greedy or when ``seeds_per_row`` (the batcher passes each row's seed)."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        key = dataclasses.asdict(job.sampling)
        if job.sampling.temperature == 0 or seeds_per_row:
            key["seed"] = None  # the seed does not decide the batch
        groups.setdefault(json.dumps(key, sort_keys=True), []).append(job)
    return list(groups.values())
