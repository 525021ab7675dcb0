"""The OpenAI-compatible HTTP path end to end, against a test-only local server:
`sftlab judge alpaca-eval` with an API judge (both orders, cache, retries) and
`sftlab eval --base-url` (remote generation)."""
import json

import pytest

from sftlab.cli import main
from sftlab.eval.judge.client import OpenAIChat, RemoteError
from tests.fake_openai import Endpoint, serve


class Handler(Endpoint):
    """Chat: a judge that prefers the response containing "DETAILED". Completions: echoes
    "The answer is 18." Fails the first request with 503 to exercise the retry."""

    requests = []
    fail_next = True

    def do_POST(self):
        body = self.body()
        Handler.requests.append((self.path, body))
        if Handler.fail_next:
            Handler.fail_next = False
            self.send_json(None, status=503)
            return
        if self.path.endswith("/chat/completions"):
            prompt = body["messages"][-1]["content"]
            if "[Response A]" in prompt:
                a = prompt.split("[Response A]")[1].split("[Response B]")[0]
                text = "A is more detailed. [[A]]" if "DETAILED" in a else "B is better. [[B]]"
            else:
                text = "Hello from the server"
            payload = {"choices": [{"message": {"content": text}, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 5, "completion_tokens": 3}}
        else:
            payload = {"choices": [{"text": "Work. The answer is 18.\n\nQ: more", "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 5, "completion_tokens": 7}}
        self.send_json(payload)


@pytest.fixture()
def server():
    Handler.requests, Handler.fail_next = [], True
    with serve(Handler) as base_url:
        yield base_url


def test_alpaca_eval_with_api_judge(server, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda seconds: None)  # retry backoff
    baseline = [{"instruction": f"Task {i}", "output": "short", "generator": "base"} for i in range(3)]
    outputs = [{"instruction": f"Task {i}", "output": "DETAILED answer" if i < 2 else "meh", "generator": "mine"}
               for i in range(3)]
    (tmp_path / "baseline.json").write_text(json.dumps(baseline))
    (tmp_path / "outputs.json").write_text(json.dumps(outputs))
    args = ["judge", "alpaca-eval", "--outputs", str(tmp_path / "outputs.json"), "--baseline",
            str(tmp_path / "baseline.json"), "--judge", "judge-model", "--judge-base-url", server,
            "--cache-dir", str(tmp_path / "cache"), "-o", str(tmp_path / "out")]
    assert main(args) == 0
    results = json.loads((tmp_path / "out/results.json").read_text())["judge"]["alpaca_eval"]
    # items 0, 1: the model wins in both orders; item 2: neither DETAILED -> "B" both times -> tie
    assert results["win_rate"] == pytest.approx(100 * (1 + 1 + 0.5) / 3)
    assert results["cache_misses"] == 6
    annotations = json.loads((tmp_path / "out/annotations.json").read_text())
    assert annotations[0]["raw_completions"] == ["B is better. [[B]]", "A is more detailed. [[A]]"]
    calls = len(Handler.requests)
    assert main(args) == 0  # second run: answered from the cache, no HTTP call
    assert len(Handler.requests) == calls
    assert "win rate 83.33" in capsys.readouterr().out


def test_client_gives_up_with_a_clear_error(monkeypatch):
    monkeypatch.setattr("time.sleep", lambda seconds: None)
    client = OpenAIChat("http://127.0.0.1:9/v1", "m", retries=1, timeout=0.5)
    with pytest.raises(RemoteError, match="failed"):
        client.complete([{"role": "user", "content": "hi"}])


def test_eval_with_remote_generator(server, tmp_path, shared_data, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda seconds: None)
    assert main(["eval", "served", "--tasks", "gsm8k", "--limit", "2", "--data-dir", str(shared_data),
                 "--base-url", server, "--api-model", "served", "-o", str(tmp_path / "out")]) == 0
    samples = [json.loads(line) for line in (tmp_path / "out/samples.jsonl").read_text().splitlines()]
    assert samples[0]["output"] == "Work. The answer is 18.\n\n"  # cut at the stop string "Q:"
    assert samples[0]["scores"]["exact_match_strict"] == 1.0
    path, body = Handler.requests[-1]
    assert path == "/v1/completions" and body["stop"] == ["Q:", "</s>", "<|im_end|>"] and body["temperature"] == 0.0
