"""Request batching for the server: many concurrent requests -> few ``generate`` calls.

Request handlers never call the model. Each puts a ``Job`` (its prompts, sampling settings
and an optional streaming callback) on the ``Batcher``'s queue and waits on the job's
future. One worker thread takes the first job, waits ``window_ms`` for others (up to
``max_prompts`` prompts), groups them by identical sampling settings and runs ONE
``generator.generate`` per group. Results are cut back into each job's slice, in order.

Decisions, stated once:

* Greedy requests (``temperature == 0``) that differ only in their seed share a batch:
  greedy decoding ignores the seed.
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
    """Set to this job's ``list[Generation]`` (in prompt order), or to the exception."""


class Batcher:
    """Collects jobs for ``window_ms`` and runs each group of equal settings as one generate call.

    ``batch_sizes`` records the number of prompts of every generate call.
    """

    def __init__(self, generator, window_ms: float = 10.0, max_prompts: int = 64) -> None:
        self.generator, self.window, self.max_prompts = generator, window_ms / 1000.0, max_prompts
        self.batch_sizes: list[int] = []
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._streams = "on_text" in inspect.signature(generator.generate).parameters
        self._thread = threading.Thread(target=self._run, name="sftlab-batcher", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> concurrent.futures.Future:
        """Queue ``job``; returns its future (also ``job.future``)."""
        self._queue.put(job)
        return job.future

    def close(self) -> None:
        """Finish the batch in progress, then stop the worker thread."""
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
            for group in group_by_settings(jobs):
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

        self.batch_sizes.append(len(prompts))
        try:
            kwargs = {"on_text": route} if self._streams else {}
            results = self.generator.generate(prompts, jobs[0].sampling, **kwargs)
        except Exception as exc:
            if len(jobs) > 1:  # one bad request must not fail the others: run each alone
                for job in jobs:
                    self._run_group([job])
            else:  # answer the waiting request, keep serving
                jobs[0].future.set_exception(exc)
            return
        position = 0
        for job in jobs:
            mine = results[position:position + len(job.prompts)]
            position += len(job.prompts)
            if not self._streams and job.on_text is not None:
                for k, gen in enumerate(mine):
                    job.on_text(k, gen.text)
            job.future.set_result(mine)


def group_by_settings(jobs: list[Job]) -> list[list[Job]]:
    """Jobs grouped by equal sampling settings (the seed ignored when greedy), in arrival order."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        key = dataclasses.asdict(job.sampling)
        if job.sampling.temperature == 0:
            key["seed"] = None  # greedy ignores the seed: do not split batches over it
        groups.setdefault(json.dumps(key, sort_keys=True), []).append(job)
    return list(groups.values())
