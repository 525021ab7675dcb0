"""``sftlab check``: passes where the paths agree, fails with a diff naming the path and the
first differing token where one was tampered with."""
from __future__ import annotations

import json

import pytest

from sftlab.cli import main
from sftlab.infer.conformance import check, check_tokenizers, probe_conversations
from sftlab.models.tiny import tiny_tokenizer


def saved_copy(tokenizer, path):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def test_tiny_passes_every_check():
    report = check("tiny")
    assert report.ok, report.text()
    checks = {(f.check, f.probe) for f in report.findings if f.ok}
    for probe, _ in probe_conversations():
        for name in ("saved template", "server prompt", "end of turn", "reply parsing"):
            assert (name, probe) in checks, (name, probe, report.text())
    assert ("stop tokens", "-") in checks


def test_tampered_saved_template_fails_naming_the_first_token(tmp_path):
    tokenizer = tiny_tokenizer()
    saved = saved_copy(tokenizer, tmp_path)
    saved.chat_template = saved.chat_template.replace("'<|im_start|>' + message['role']",
                                                      "'<|im_start|> ' + message['role']")
    assert saved.chat_template != tokenizer.chat_template  # the tamper took
    report = check_tokenizers(tokenizer, saved, stop_ids=[tokenizer.eos_token_id])
    assert not report.ok
    failure = next(f for f in report.failures if f.check == "saved template")
    assert failure.detail.startswith("token ") and "training" in failure.detail and "saved" in failure.detail


def test_missing_stop_token_fails():
    tokenizer = tiny_tokenizer()
    report = check_tokenizers(tokenizer, tokenizer, stop_ids=[0])
    [failure] = [f for f in report.failures]
    assert failure.check == "stop tokens" and "generation_config.json" in failure.detail


def test_run_directory_template_changed_after_training_fails(tmp_path):
    """A run records the template it trained with; editing the saved one afterwards is caught."""
    from sftlab.data.chat import serving_template
    from sftlab.models.tiny import tiny_model

    tokenizer = tiny_tokenizer()
    serving_template(tokenizer)  # as training installs it before saving
    tiny_model().save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "run.json").write_text(json.dumps({"chat_template": tokenizer.chat_template}))
    assert check(tmp_path / "model").ok
    config = tmp_path / "model" / "tokenizer_config.json"
    template_file = tmp_path / "model" / "chat_template.jinja"
    if template_file.is_file():
        template_file.write_text(template_file.read_text().replace("<|im_start|>", "<|im_start|> "))
    else:
        data = json.loads(config.read_text())
        data["chat_template"] = data["chat_template"].replace("<|im_start|>", "<|im_start|> ")
        config.write_text(json.dumps(data))
    report = check(tmp_path / "model")
    assert not report.ok
    assert {f.check for f in report.failures} >= {"saved template"}


def test_cli_exit_status_and_json(tmp_path, capsys):
    out = tmp_path / "check.json"
    assert main(["check", "tiny", "--output", str(out)]) == 0
    assert "sftlab check tiny: passed" in capsys.readouterr().out
    assert json.loads(out.read_text())["ok"] is True


def test_cli_output_in_a_new_folder(tmp_path):
    out = tmp_path / "new" / "check.json"   # its folder is made, as other outputs' are
    assert main(["check", "tiny", "--output", str(out)]) == 0
    assert json.loads(out.read_text())["ok"] is True


def test_gguf_and_modelfile_are_checked(tmp_path):
    from sftlab.models.export import export_model
    from sftlab.models.tiny import save_tiny

    save_tiny(tmp_path / "m")
    exported = export_model(tmp_path / "m", tmp_path / "out", gguf_type="f32", ollama=True)
    report = check(exported)
    assert report.ok, report.text()
    assert {"gguf", "ollama"} <= {f.check for f in report.findings if f.ok}
    modelfile = next((exported / "gguf").glob("Modelfile"))
    modelfile.write_text(modelfile.read_text().replace("<|im_start|>assistant", "<|im_start|>bot"))
    report = check(exported)
    assert [f.check for f in report.failures] and all(f.check == "ollama" for f in report.failures)
    assert "expected" in report.failures[0].detail
