"""Instruction back-translation on the tiny model: the mechanics, not the (gibberish) quality."""
from __future__ import annotations

import json

import pytest

from sftlab.config import build_config
from sftlab.synth import back_translate as bt
from sftlab.errors import ConfigError
from sftlab.types import Conversation, Message

TRAIN = ["backward.steps=3", "backward.batch_size=4", "backward.max_length=128", "backward.lr=0.001",
         "forward.steps=3", "forward.batch_size=4", "forward.max_length=128", "forward.lr=0.001"]


@pytest.fixture()
def texts(tmp_path, shared_data):
    """10 real answers (alpaca_en_demo outputs, cut to 300 chars), one empty, one too long."""
    rows = json.loads((shared_data / "formats" / "alpaca_en_demo.json").read_text())
    path = tmp_path / "texts.jsonl"
    lines = [{"id": f"t{i}", "text": row["output"][:300]} for i, row in enumerate(rows[200:210])]
    lines += [{"id": "empty", "text": "   "}, {"id": "long", "text": "word " * 400}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def _config(tmp_path, shared_data, texts, *extra):
    return build_config(bt.BackTranslateConfig, {}, [
        "model=tiny", f"seeds={shared_data / 'formats' / 'alpaca_en_demo.json'}", "seed_limit=12",
        f"unlabelled={texts}", f"output={tmp_path / 'out.jsonl'}", "max_text_chars=1000",
        "instruction_max_tokens=12", "rating_max_tokens=8", "progress=false", *TRAIN, *extra])


def _jsonl(path):
    return [json.loads(line) for line in open(path)]


def test_parse_score():
    assert bt.parse_score("The answer is on topic.\nScore: 4") == 4
    assert bt.parse_score("Score: 2 at first, but on reflection\nScore: 5") == 5  # the last one
    assert bt.parse_score("**Score:** 3") == 3 and bt.parse_score("score = 1") == 1
    assert bt.parse_score("5") == 5 and bt.parse_score(" 4/5 ") == 4
    for text in ("Score: 7", "Score: 10", "Score: 4.5", "great answer", "", "3 out of 10 people"):
        assert bt.parse_score(text) is None, text


def test_reverse_pair_and_config_checks():
    pair = Conversation([Message("user", "Name a colour."), Message("assistant", "Blue.")], id="a")
    reversed_ = bt.reverse_pair(pair)
    assert [(m.role, m.content) for m in reversed_.messages] == [("user", "Blue."), ("assistant", "Name a colour.")]
    assert reversed_.id == "a"
    with pytest.raises(ConfigError, match="threshold"):
        build_config(bt.BackTranslateConfig, {}, ["threshold=6"])
    with pytest.raises(ConfigError, match="scorer=teacher"):
        build_config(bt.BackTranslateConfig, {}, ["scorer=teacher", "iterations=2"])


def test_stage_training_settings_override_a_train_yaml(tmp_path):
    yaml_path = tmp_path / "train.yaml"
    yaml_path.write_text("optim: {lr: 0.5, schedule: constant}\nbatch_size: 2\nmethod: {name: lora}\n")
    stage = bt.StageTraining(train_yaml=str(yaml_path), lr=0.001, steps=7)
    config = bt.BackTranslateConfig(model="tiny", seed=3)
    train_config = bt.stage_train_config(stage, config, tmp_path / "run")
    assert (train_config.optim.lr, train_config.max_steps) == (0.001, 7)  # the stage's fields win
    assert (train_config.optim.schedule, train_config.batch_size, train_config.method.name) == \
        ("constant", 2, "lora")  # the rest comes from the YAML
    assert (train_config.model.name, train_config.seed, train_config.output_dir) == ("tiny", 3, str(tmp_path / "run"))


def test_self_curation_end_to_end_and_resume(tmp_path, shared_data, texts):
    from sftlab.data.chat import tokenize_conversations
    from sftlab.data.io import read_conversations
    from sftlab.infer.base import SamplingConfig
    from sftlab.infer.hf import HFGenerator
    from sftlab.models import load_model, load_tokenizer
    from sftlab.train.data import fingerprint

    config = _config(tmp_path, shared_data, texts, "threshold=1")
    report = bt.run(config)
    work = tmp_path / "out.jsonl.work"

    # 1. the backward model was trained on the seeds turned around, and on nothing else
    seeds = read_conversations(config.seeds).conversations[:12]
    trained = read_conversations(work / "backward" / "train_data.jsonl").conversations
    assert [(c.messages[0].content, c.messages[1].content) for c in trained] == \
        [(s.messages[1].content, s.messages[0].content) for s in seeds]
    tokenizer = load_tokenizer("tiny")
    examples = tokenize_conversations(trained, tokenizer, max_length=128).examples
    run_json = json.loads((work / "backward" / "run.json").read_text())
    assert run_json["data_fingerprint"] == fingerprint(examples) and run_json["total_steps"] == 3

    # 2. an instruction was generated for each usable text, by the backward model
    candidates = _jsonl(work / "candidates.jsonl")
    assert [c["text_id"] for c in candidates] == [f"t{i}" for i in range(10)]
    backward = HFGenerator(load_model(str(work / "backward")), tokenizer)
    first = backward.generate([[Message("user", candidates[0]["text"])]], SamplingConfig(max_new_tokens=12))
    assert candidates[0]["instruction"] == first[0].text.strip()

    # 3. every rating was parsed or counted as unparseable; the threshold holds
    ratings = {r["id"]: r for r in _jsonl(work / "scores_0.jsonl")}
    assert ratings and len(ratings) == sum(bool(c["instruction"]) for c in candidates)
    assert all(r["score"] == bt.parse_score(r["rating"]) for r in ratings.values())
    records = _jsonl(config.output)
    assert all(r["meta"]["score"] >= 1 and r["meta"]["provenance"]["iteration"] == 0 for r in records)
    unparseable = sum(ratings[c["id"]]["score"] is None for c in candidates if c["instruction"])
    assert report.rejected["unparseable score"] == unparseable
    assert report.rejected["empty text"] == 1 and report.rejected["text too long"] == 1
    assert len(records) + sum(report.rejected.values()) == 12  # every text accounted for
    assert report.requests == 10 + len(ratings)

    # 4. rerun: nothing generated, rated, trained or written again
    marker = (work / "backward" / bt.STAGE_MARKER).stat().st_mtime_ns
    again = bt.run(config)
    assert again.requests == 0 and again.written == 0 and again.total == len(records)
    assert len(_jsonl(config.output)) == len(records)
    assert (work / "backward" / bt.STAGE_MARKER).stat().st_mtime_ns == marker


class ScriptedRater:
    """A teacher whose ratings depend on the text's number: t0-t3 -> 5, t4-t5 -> 3, else prose."""

    model = "scripted-rater"

    def __init__(self):
        self.prompts = []

    def complete(self, requests):
        out = []
        for request in requests:
            prompt = request.messages[-1].content
            self.prompts.append(prompt)
            answer = prompt.split("\nAnswer: ", 1)[1]
            number = int(next(row for row in ANSWERS if row[1] == answer.rstrip("\n"))[0][1:])
            out.append("Solid.\nScore: 5" if number < 4 else "Score: 3" if number < 6 else "no opinion")
        return out


ANSWERS: list = []


def test_teacher_scorer_threshold_and_counts(tmp_path, shared_data, texts):
    ANSWERS[:] = [(x["id"], x["text"]) for x in bt.read_texts(texts)]
    rater = ScriptedRater()
    config = _config(tmp_path, shared_data, texts, "scorer=teacher", "threshold=4")
    report = bt.run(config, teacher=rater)
    records = _jsonl(config.output)
    empty = {c["text_id"] for c in _jsonl(tmp_path / "out.jsonl.work" / "candidates.jsonl") if not c["instruction"]}
    assert records and sorted(r["meta"]["text_id"] for r in records) == sorted({"t0", "t1", "t2", "t3"} - empty)
    assert all(r["meta"]["provenance"]["teacher"] == "scripted-rater" for r in records)
    assert all(r["messages"][1]["content"] == dict(ANSWERS)[r["meta"]["text_id"]] for r in records)
    assert report.rejected["below threshold"] == len({"t4", "t5"} - empty)
    assert report.rejected["unparseable score"] == len({f"t{i}" for i in range(6, 10)} - empty)
    assert report.rejected["empty instruction"] == len(empty)
    assert "Score: <rating>" in rater.prompts[0] and "5-point scale" in rater.prompts[0]
    assert not (tmp_path / "out.jsonl.work" / "forward_0").exists()  # the teacher rated, no M_0


def test_second_iteration_trains_on_seeds_plus_curated(tmp_path, shared_data, texts):
    config = _config(tmp_path, shared_data, texts, "threshold=5")
    bt.run(config)
    work = tmp_path / "out.jsonl.work"
    # replace M_0's gibberish ratings: the first 3 candidates with an instruction get a 5
    candidates = [c for c in _jsonl(work / "candidates.jsonl") if c["instruction"]]
    rows = [{"id": c["id"], "score": 5 if i < 3 else 2, "rating": "x"} for i, c in enumerate(candidates)]
    (work / "scores_0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = bt.run(build_config(bt.BackTranslateConfig, {}, [
        *[f"{k}={v}" for k, v in _flat(config)], "iterations=2", "tag_sources=true"]))
    trained = _jsonl(work / "forward_1" / "train_data.jsonl")
    curated = _jsonl(work / "curated_0.jsonl")
    assert len(curated) == 3 and len(trained) == 12 + 3
    # seed pairs then curated pairs, each behind its source tag
    assert all(t["messages"][0] == {"role": "system", "content": bt.SEED_TAG} for t in trained[:12])
    assert [t["messages"] for t in trained[12:]] == \
        [[{"role": "system", "content": bt.AUGMENTED_TAG}] + c["messages"] for c in curated]
    assert report.extra["iterations"][0]["kept"] == 3
    assert (work / "scores_1.jsonl").exists()  # M_1 re-rated every candidate
    assert len(_jsonl(work / "scores_1.jsonl")) == len(candidates)


def _flat(config):
    """The config as key=value overrides (nested sections dotted), None values left out."""
    from dataclasses import asdict

    def walk(prefix, value):
        if isinstance(value, dict):
            for key, inner in value.items():
                yield from walk(f"{prefix}{key}.", inner)
        elif value is not None:
            yield prefix[:-1], value

    return [(k, v) for k, v in walk("", asdict(config)) if not k.startswith("teacher.")]


def test_texts_too_long_for_the_models_context_are_skipped_and_counted(tmp_path, shared_data,
                                                                       tiny_model_dir):
    """The tiny model's context is 1024 tokens ("word " is 2): one text cannot be back-translated,
    one fits the backward model but not the rating prompt; neither stops the run."""
    import shutil

    path = tmp_path / "texts.jsonl"
    rows = [{"id": "short", "text": "Rain falls, rivers run to the sea, the sun lifts the water again."},
            {"id": "huge", "text": "word " * 600}, {"id": "long", "text": "word " * 420}]
    path.write_text("".join(json.dumps(x) + "\n" for x in rows))
    work = tmp_path / "out.jsonl.work"
    shutil.copytree(tiny_model_dir, work / "backward")  # a backward model "already trained"
    (work / "backward" / bt.STAGE_MARKER).write_text("{}")
    config = _config(tmp_path, shared_data, path, "max_text_chars=100000",
                     f"forward_model={tiny_model_dir}", "threshold=1")
    report = bt.run(config)
    candidates = {c["text_id"]: c for c in _jsonl(work / "candidates.jsonl")}
    assert candidates["huge"]["skipped"] == bt.TOO_LONG_TO_BACK_TRANSLATE
    assert "skipped" not in candidates["short"] and "skipped" not in candidates["long"]
    ratings = {r["id"]: r for r in _jsonl(work / "scores_0.jsonl")}
    assert candidates["long"]["instruction"]  # greedy, seeded: the tiny model writes one
    assert ratings[candidates["long"]["id"]]["skipped"] == bt.TOO_LONG_TO_RATE
    assert report.rejected[bt.TOO_LONG_TO_RATE] == 1
    assert report.rejected[bt.TOO_LONG_TO_BACK_TRANSLATE] == 1
    assert report.written + sum(report.rejected.values()) == 3  # every text accounted for
    assert report.requests == 2 + sum(1 for r in ratings.values() if "skipped" not in r)


def test_text_ids_stay_when_the_file_is_prepended_to_renamed_or_reordered(tmp_path):
    """Texts without an id were keyed by <file stem>-<index>: a line added on top, or a renamed
    file, back-translated (and wrote) every text again."""
    from sftlab.synth.base import SynthReport
    from sftlab.synth.store import RecordStore

    rows = [{"text": "Blue is a colour."}, {"text": "A pear."}, {"text": "Blue is a colour."}, {"id": "own", "text": "Hi."}]
    path = tmp_path / "texts.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in rows))
    ids = [x["id"] for x in bt.read_texts(path)]
    assert ids[3] == "own" and ids[2] == f"{ids[0]}-1" and len(set(ids)) == 4
    moved = tmp_path / "renamed.jsonl"
    moved.write_text(json.dumps({"text": "New."}) + "\n" + path.read_text())
    assert [x["id"] for x in bt.read_texts(moved)][1:] == ids

    # candidates stored from the first file: the reordered, renamed file generates none
    config = bt.BackTranslateConfig(model="tiny", progress=False)
    with RecordStore(tmp_path / "candidates.jsonl") as store:
        for index, text in enumerate(bt.read_texts(path)):
            store.write({"id": bt._candidate_id(text, config), "text_id": text["id"], "text": text["text"],
                         "instruction": f"instruction {index}"})
    reordered = tmp_path / "reordered.jsonl"
    reordered.write_text("".join(json.dumps(x) + "\n" for x in rows[::-1]))
    report = SynthReport("back-translate")
    candidates = bt.augment(config, tmp_path / "no-model", bt.read_texts(reordered),
                            tmp_path / "candidates.jsonl", report)
    assert report.requests == 0 and len(_jsonl(tmp_path / "candidates.jsonl")) == 4
    assert sorted(c["instruction"] for c in candidates) == [f"instruction {i}" for i in range(4)]
