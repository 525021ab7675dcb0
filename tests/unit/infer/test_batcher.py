"""The batcher and the generator hooks the server relies on: per-row seeds (seeded requests
share a batch), cancellation, token-id prompts and the fast context check."""
from __future__ import annotations

import concurrent.futures
import threading
import time
from dataclasses import replace

import pytest

from sftlab.infer.base import Generation, SamplingConfig
from sftlab.infer.batcher import Batcher, Job
from sftlab.infer.hf import HFGenerator, PromptTooLong, prompt_to_ids
from sftlab.types import Message

SAMPLE = SamplingConfig(max_new_tokens=10, temperature=1.0, seed=3)


@pytest.fixture()
def generator(tiny_model, tiny_tokenizer):
    return HFGenerator(tiny_model, tiny_tokenizer, batch_size=8, name="tiny")


def test_row_seeds_make_a_row_independent_of_its_batch(generator):
    alone = generator.generate(["The a of"], SAMPLE, seeds=[11])[0].text
    batched = generator.generate(["count", "The a of", "x"], SAMPLE, seeds=[5, 11, 7])
    assert batched[1].text == alone
    assert generator.generate(["The a of"], SAMPLE, seeds=[12])[0].text != alone


def test_seeded_jobs_share_one_call_and_keep_their_text(generator):
    batcher = Batcher(generator, window_ms=100)
    try:
        alone = [batcher.submit(Job(["The a of"] * 2, replace(SAMPLE, seed=s))).result()
                 for s in (1, 2)]
        before = len(batcher.batch_sizes)
        jobs = [Job(["The a of"] * 2, replace(SAMPLE, seed=s)) for s in (1, 2)]
        for job in jobs:
            batcher.submit(job)
        together = [job.future.result(timeout=60) for job in jobs]
    finally:
        batcher.close()
    assert batcher.batch_sizes[before:] == [4]
    assert [[g.text for g in r] for r in together] == [[g.text for g in r] for r in alone]


def test_cancel_ends_rows_and_drops_queued_jobs(generator):
    batcher = Batcher(generator, window_ms=1)
    long = Job(["count"], SamplingConfig(max_new_tokens=900))
    started = threading.Event()
    long.on_text = lambda k, delta: started.set()
    queued = Job(["x"], SamplingConfig(max_new_tokens=2, temperature=0.5))
    try:
        batcher.submit(long)
        assert started.wait(timeout=30) and batcher.in_flight == 1
        batcher.submit(queued)
        queued.cancel.set()
        long.cancel.set()
        assert batcher.in_flight == 0
        result = long.future.result(timeout=10)[0]
        assert result.completion_tokens < 900
        concurrent.futures.wait([queued.future], timeout=10)
        assert queued.future.cancelled()
    finally:
        batcher.close()


def test_encode_gives_ids_that_generate_accepts(generator, tiny_tokenizer):
    prompt = [Message("user", "Sort these numbers")]
    ids = generator.encode(prompt, max_new_tokens=8)
    assert ids == prompt_to_ids(tiny_tokenizer, prompt)
    greedy = SamplingConfig(max_new_tokens=8)
    assert generator.generate([ids], greedy)[0].text == generator.generate([prompt], greedy)[0].text


def test_encode_refuses_a_text_no_tokenisation_can_fit(generator):
    start = time.perf_counter()
    with pytest.raises(PromptTooLong, match="characters"):
        generator.encode("count " * 500_000, max_new_tokens=8)
    assert time.perf_counter() - start < 1.0  # refused from its length, not tokenised
    with pytest.raises(PromptTooLong, match="1103 tokens"):
        generator.encode("count " * 1100 + "x", max_new_tokens=8)


def test_a_generator_without_hooks_still_batches():
    class Echo:
        name = "echo"

        def generate(self, prompts, sampling):
            return [Generation(p, 1, 1, "stop") for p in prompts]

    batcher = Batcher(Echo(), window_ms=50)
    jobs = [Job([f"p{s}"], SamplingConfig(temperature=1.0, seed=s)) for s in (1, 2)]
    for job in jobs:
        batcher.submit(job)
    assert [job.future.result(timeout=10)[0].text for job in jobs] == ["p1", "p2"]
    batcher.close()
    assert batcher.batch_sizes == [1, 1]  # without per-row seeds, different seeds do not share a call
