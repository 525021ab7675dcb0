"""A ``Generator`` over an OpenAI-compatible HTTP endpoint, for evaluating served models.

Message prompts go to ``/chat/completions``; raw-string prompts go to ``/completions``
(the server applies no chat template to them), unless ``chat_only`` is set, in which case
a string becomes one user message. Requests run concurrently (``workers`` threads).

    gen = OpenAIGenerator("http://localhost:8000/v1", "my-model")
    gen.generate(["Q: 2+2?\\nA:"], SamplingConfig(max_new_tokens=16, stop=["\\n"]))
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from sftlab.eval.judge.client import OpenAIChat
from sftlab.infer.base import Generation, Prompt, SamplingConfig
from sftlab.types import Message


class OpenAIGenerator:
    def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY",
                 workers: int = 8, chat_only: bool = False) -> None:
        self.client = OpenAIChat(base_url, model, api_key_env=api_key_env)
        self.name = model
        self.workers = workers
        self.chat_only = chat_only

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig) -> list[Generation]:
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(lambda prompt: self._one(prompt, sampling), prompts))

    def _one(self, prompt: Prompt, sampling: SamplingConfig) -> Generation:
        params: dict[str, Any] = {"max_tokens": sampling.max_new_tokens,
                                  "temperature": sampling.temperature, "top_p": sampling.top_p,
                                  "seed": sampling.seed}
        if sampling.stop:
            params["stop"] = sampling.stop[:4]  # the OpenAI API accepts at most 4
        if isinstance(prompt, str) and not self.chat_only:
            body = self.client.post("/completions", {"model": self.name, "prompt": prompt, **params})
            text = body["choices"][0].get("text") or ""
        else:
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else \
                [m.to_dict() if isinstance(m, Message) else dict(m) for m in prompt]
            body = self.client.complete_full(messages, **params)
            text = body["choices"][0]["message"].get("content") or ""
        # servers that ignore "stop" (or take only 4) still get the rest cut here
        cuts = [text.find(s) for s in sampling.stop if s and s in text]
        text = text[:min(cuts)] if cuts else text
        usage = body.get("usage") or {}
        reason = body["choices"][0].get("finish_reason")
        return Generation(text, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)),
                          "length" if reason == "length" else "stop")
