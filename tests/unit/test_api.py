"""The public API: every exported name resolves to its stage's object, ``import sftlab``
does not load torch, and a training run from Python is one import and one call."""
from __future__ import annotations

import subprocess
import sys

import sftlab


def test_every_exported_name_resolves():
    import sftlab.eval.runner
    import sftlab.train.sft

    for name in sftlab.__all__:
        assert getattr(sftlab, name) is not None, name
    assert sftlab.finetune is sftlab.train.sft.train
    assert sftlab.evaluate is sftlab.eval.runner.evaluate


def test_unknown_name_is_an_attribute_error():
    try:
        sftlab.trian
    except AttributeError as exc:
        assert "trian" in str(exc)
    else:
        raise AssertionError("sftlab.trian resolved")


def test_import_is_light():
    code = "import sys, sftlab; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_train_in_one_call(tmp_path):
    config = sftlab.build_config(sftlab.TrainConfig, {"data": {"paths": []}},
                                 ["max_steps=2", f"output_dir={tmp_path}", "plot=false",
                                  "progress=false"])
    examples = sftlab.tokenize_conversations(
        [sftlab.Conversation([sftlab.Message("user", "hi"), sftlab.Message("assistant", "hello")])] * 4,
        sftlab.load_tokenizer("tiny"), max_length=64).examples
    result = sftlab.finetune(config, train_examples=examples)
    assert result.steps == 2 and result.final_loss is not None and result.final_loss > 0
