"""Images through the CLI on a tiny vision model: `sftlab quickstart --vision --fast`,
`sftlab generate` with image rows, `sftlab chat --image`, `sftlab eval --tasks vqa=FILE`,
and the clear errors when images go to a text-only model."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from sftlab.cli import main
from sftlab.models.vision import save_tiny_vision


@pytest.fixture(scope="module")
def vision_dir(tmp_path_factory):
    return save_tiny_vision(tmp_path_factory.mktemp("vision") / "model")


@pytest.fixture(scope="module")
def png(tmp_path_factory):
    from sftlab.data.visual_tasks import draw_scene

    path = tmp_path_factory.mktemp("img") / "shape.png"
    draw_scene("square", "red", [2]).save(path)
    return path


def test_quickstart_vision_fast_writes_summary_and_report(tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "sftlab", "quickstart", "--vision", "--fast", "--model", "tiny", "-o", str(run_dir)],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "SFTLAB_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[0] == f"run directory: {run_dir.resolve()}"
    for name in ("summary.json", "report.html", "stage1.yaml", "stage2.yaml", "stage1/model/sftlab_vision.json",
                 "stage2/adapter/sftlab_vision.json", "stage2/adapter/adapter_config.json",
                 "data/tasks/heldout_image.vqa.jsonl", "eval/after/heldout_template/samples.jsonl"):
        assert (run_dir / name).exists(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["splits"]) == {"heldout_image", "heldout_template", "heldout_combination"}
    for row in list(summary["splits"].values()) + list(summary["question_types"].values()):
        for when in ("before", "after"):
            block = row[when]
            assert block["n"] > 0 and 0 <= block["low"] <= block["mean"] <= block["high"] <= 1
    assert summary["train"]["stage1"]["steps"] == summary["train"]["stage2"]["steps"] == 3
    assert set(summary["timings_s"]) == {"data", "before", "stage1", "stage2", "after", "report"}
    page = (run_dir / "report.html").read_text()
    assert page.count("class='scene' src='data:image/png;base64,") == 12  # 4 examples x 3 splits
    assert "heldout_combination" in page and "Training loss" in page
    # the held-out images are new pixels: none equals a training image
    images = run_dir / "data" / "tasks" / "images"
    train = {p.read_bytes() for p in images.glob("train-*.png")}
    assert not any(p.read_bytes() in train for p in images.glob("heldout_image-*.png"))


def _rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_generate_with_images_and_text_only_refusal(tmp_path, vision_dir, png, tiny_model_dir, capsys):
    prompts = _rows(tmp_path / "in.jsonl", [
        {"id": "a", "messages": [{"role": "user", "content": "<image>\nWhat shape?"}], "images": [str(png)]},
        {"id": "b", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png.as_uri()}},
                                                              {"type": "text", "text": "Colour?"}]}]},
        {"id": "c", "prompt": "text only"}])
    out = tmp_path / "out.jsonl"
    assert main(["generate", str(vision_dir), "-i", str(prompts), "-o", str(out), "--max-new-tokens", "4",
                 "--no-progress"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b", "c"] and rows[0]["images"] == [str(png)]
    assert rows[0]["prompt_tokens"] > 16 and all(r["completion_tokens"] > 0 for r in rows)
    capsys.readouterr()
    assert main(["generate", str(tiny_model_dir), "-i", str(prompts), "-o", str(tmp_path / "text.jsonl"),
                 "--max-new-tokens", "4", "--no-progress"]) == 2
    assert "is text-only: it cannot take the prompt's 1 image(s)" in capsys.readouterr().err


def test_generate_with_a_mismatched_placeholder_names_file_and_line(tmp_path, vision_dir, png, capsys):
    prompts = _rows(tmp_path / "in.jsonl", [
        {"id": "ok", "messages": [{"role": "user", "content": "<image>\nShape?"}], "images": [str(png)]},
        {"id": "bad", "messages": [{"role": "user", "content": "No placeholder"}], "images": [str(png)]}])
    assert main(["generate", str(vision_dir), "-i", str(prompts), "-o", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "in.jsonl:2: field 'images'" in err and "0 image placeholders but 1 images" in err


def test_chat_with_an_image(vision_dir, png, monkeypatch, capsys, tiny_model_dir):
    monkeypatch.setattr(sys, "stdin", io.StringIO("What shape is it?\n"))
    assert main(["chat", str(vision_dir), "--image", str(png), "--max-new-tokens", "4", "--temperature", "0"]) == 0
    assert "assistant> " in capsys.readouterr().out
    monkeypatch.setattr(sys, "stdin", io.StringIO("hi\n"))
    assert main(["chat", str(tiny_model_dir), "--image", str(png)]) == 2
    assert "text-only" in capsys.readouterr().err


def test_eval_vqa_on_a_vision_model(tmp_path, vision_dir, png):
    questions = _rows(tmp_path / "vqa.jsonl", [{"id": "q", "image": str(png), "question": "Shape?",
                                                 "answers": ["square", "square", "box"]}])
    out = tmp_path / "eval"
    assert main(["eval", str(vision_dir), "--tasks", f"vqa={questions}", "-o", str(out),
                 "--max-new-tokens", "4"]) == 0
    metrics = json.loads((out / "results.json").read_text())["tasks"]["vqa"]["metrics"]
    assert set(metrics) == {"exact_match", "vqa_accuracy"} and metrics["vqa_accuracy"]["n"] == 1
