"""Optional vLLM backend behind the same ``Generator`` protocol (GPU machines with vllm).

    from sftlab.infer.vllm import VLLMGenerator
    gen = VLLMGenerator("runs/full1/model", adapter=None, gpu_memory_utilization=0.8)
    gen.generate([[Message("user", "Hi")]], SamplingConfig(max_new_tokens=64))

vllm is imported only when a VLLMGenerator is built; without it the error says how to
install it. Messages go through the model's own chat template (as in HFGenerator), raw
strings are used as is, so the two backends see the same prompt text. vLLM schedules
its own continuous batching, so there is no ``batch_size`` here.

Not exercised by the test suite (vllm is not installed in the CPU environment); the
import guard is.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from sftlab.errors import SftlabError
from sftlab.infer.base import Generation, Prompt, SamplingConfig
from sftlab.infer.hf import prompt_text
from sftlab.models import resolve_adapter, resolve_model

INSTALL_HINT = "pip install vllm (needs a CUDA GPU); or use the default HF backend (HFGenerator)"


def _import_vllm():
    try:
        import vllm  # lazy: optional, GPU-only and heavy; sftlab runs without it
    except ImportError as exc:
        raise SftlabError(f"the vLLM backend needs the 'vllm' package, which is not importable "
                          f"({exc}): {INSTALL_HINT}") from None
    return vllm


class VLLMGenerator:
    """``Generator`` over a ``vllm.LLM``; ``engine_kwargs`` go to ``vllm.LLM`` unchanged."""

    def __init__(self, name_or_path: str, *, adapter: str | Path | None = None, dtype: str = "auto",
                 trust_remote_code: bool = False, **engine_kwargs) -> None:
        vllm = _import_vllm()
        self.name = str(name_or_path)
        self._lora = None
        if adapter is not None:
            from vllm.lora.request import LoRARequest  # lazy: part of the optional vllm

            engine_kwargs.setdefault("enable_lora", True)
            self._lora = LoRARequest("adapter", 1, str(resolve_adapter(adapter)))
        self.llm = vllm.LLM(model=resolve_model(name_or_path), dtype=dtype,
                            trust_remote_code=trust_remote_code, **engine_kwargs)
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig | None = None) -> list[Generation]:
        vllm = _import_vllm()
        sampling = sampling or SamplingConfig()
        params = vllm.SamplingParams(
            n=1, max_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
            top_p=sampling.top_p, top_k=sampling.top_k if sampling.top_k > 0 else -1,
            seed=sampling.seed if sampling.temperature > 0 else None, stop=list(sampling.stop) or None)
        texts = [self._render(p) for p in prompts]
        outputs = self.llm.generate(texts, params, lora_request=self._lora, use_tqdm=False)
        results = []
        for out in outputs:
            best = out.outputs[0]
            results.append(Generation(
                text=best.text, prompt_tokens=len(out.prompt_token_ids),
                completion_tokens=len(best.token_ids),
                finish_reason="length" if best.finish_reason == "length" else "stop",
                token_ids=list(best.token_ids)))
        return results

    def _render(self, prompt: Prompt) -> str:
        return prompt_text(self.tokenizer, prompt)  # the one prompt renderer (sftlab.infer.hf)
