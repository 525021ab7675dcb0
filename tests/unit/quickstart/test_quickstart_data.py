import json
import subprocess
import sys

from sftlab.quickstart import data as qdata
from sftlab.quickstart.tasks import TASKS, UNSEEN_TASKS, exact_match


def test_build_is_deterministic():
    a, b = qdata.build(seed=3), qdata.build(seed=3)
    assert [c.to_dict() for c in a.train] == [c.to_dict() for c in b.train]
    assert a.eval == b.eval
    assert qdata.build(seed=4).eval != a.eval
    # more training data leaves the evaluation items unchanged
    assert qdata.build(seed=3, train_per_task=96).eval == a.eval


def test_train_and_eval_share_no_instance_and_no_held_out_template():
    built = qdata.build(seed=0, train_per_task=64, eval_per_task=16)
    train_prompts = {c.messages[0].content for c in built.train}
    assert not train_prompts & {item.prompt for item in built.eval}
    # instance identity: the same fields rendered through any template
    for item in built.eval:
        task = TASKS[item.task]
        for conversation in built.train:
            if conversation.meta["task"] == item.task:
                assert conversation.messages[0].content not in {
                    task.render(t, _fields_of(item, task)) for t in range(len(task.templates))}
    # held-out templates and unseen tasks never appear in training
    for conversation in built.train:
        task = TASKS[conversation.meta["task"]]
        assert conversation.meta["task"] not in UNSEEN_TASKS
        assert conversation.meta["template"] in task.train_templates()
    groups = {item.group for item in built.eval}
    assert groups == set(qdata.GROUPS)
    assert len(built.train) == 64 * (len(TASKS) - len(UNSEEN_TASKS))


def _fields_of(item, task):
    # recover the fields by matching the prompt against the template that produced it
    import re
    template = task.templates[item.template]
    pattern = re.escape(template)
    names = re.findall(r"\\\{(\w+)\\\}", pattern)
    for name in dict.fromkeys(names):
        pattern = pattern.replace(r"\{" + name + r"\}", f"(?P<{name}>.+?)", 1)
        pattern = pattern.replace(r"\{" + name + r"\}", f"(?P={name})")
    match = re.fullmatch(pattern, item.prompt, flags=re.S)
    assert match, (template, item.prompt)
    return match.groupdict()


def test_answers_are_correct_for_every_task():
    import random

    rng = random.Random(0)
    for name, task in TASKS.items():
        for _ in range(20):
            fields, answer = task.make(rng)
            prompt = task.render(0, fields)
            assert prompt and answer, name
    assert exact_match(" 6,7, 49. ", "6, 7, 49")
    assert not exact_match("The answer is 6", "6")


def test_save_load_roundtrip(tmp_path):
    built = qdata.build(seed=1, train_per_task=4, eval_per_task=2)
    qdata.save(built, tmp_path)
    again = qdata.load(tmp_path)
    assert again.eval == built.eval
    assert [c.to_dict() for c in again.train] == [c.to_dict() for c in built.train]
    assert json.loads((tmp_path / "eval.jsonl").read_text().splitlines()[0])["answer"]


def test_quickstart_config_imports_no_torch():
    """``sftlab --help`` builds the quickstart options from QuickstartConfig: it must stay light."""
    code = "import sys, sftlab.quickstart.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
