"""Data where users keep it: LLaMA-Factory's dataset_info.json, column mapping, CSV and
Parquet files, ``datasets`` directories and hub ids, all read into the same conversations
as the JSON equivalent, with errors that name the file, row and column.

No test touches the network: the hub flags are set offline before ``datasets`` loads, and
the ``datasets`` cache goes to a temporary folder.
"""
from __future__ import annotations

import csv
import json
import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from sftlab.cli import main  # noqa: E402
from sftlab.config import build_config  # noqa: E402
from sftlab.data.io import iter_records, read_conversations  # noqa: E402
from sftlab.data.preference import parse_preference  # noqa: E402
from sftlab.data.sources import resolve_source  # noqa: E402
from sftlab.errors import ConfigError, DataError  # noqa: E402
from sftlab.train.config import TrainConfig  # noqa: E402


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """Offline hub and a private ``datasets`` cache, whatever imported ``datasets`` first."""
    import datasets
    import huggingface_hub.constants

    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def _load(path):
    return json.loads(path.read_text(encoding="utf-8"))


def _write_json(path, rows):
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return path


def _write_csv(path, rows, columns):
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: json.dumps(value, ensure_ascii=False) if isinstance(value, (list, dict))
                             else value for key, value in row.items()})
    return path


def _write_parquet(path, rows):
    import pyarrow
    import pyarrow.parquet

    keys = list(dict.fromkeys(key for row in rows for key in row))  # from_pylist would keep row 0's keys only
    pyarrow.parquet.write_table(pyarrow.Table.from_pydict({key: [row.get(key) for row in rows] for key in keys}),
                                path)
    return path


def _content(result):
    """What a conversation is, without the file it came from."""
    return [(c.id, c.messages, c.meta) for c in result.conversations]


@pytest.fixture(scope="module")
def alpaca_rows(shared_data):
    """Alpaca rows with every optional field: real rows, one with system, one with history."""
    rows = _load(shared_data / "formats" / "alpaca_en_demo.json")[:30]
    rows[3] = {**rows[3], "system": "You are terse."}
    rows[7] = {**rows[7], "history": [["Hi", "Hello! How can I help?"], ["Count to 2", "1, 2"]]}
    return rows


@pytest.fixture(scope="module")
def sharegpt_rows(shared_data):
    return _load(shared_data / "formats" / "sharegpt_dummy_conversation.json")[:25]


# --- LLaMA-Factory dataset_info.json --------------------------------------------------------

@pytest.fixture()
def lf_dir(tmp_path, shared_data, alpaca_rows):
    """The sample dataset_info.json beside small files named as its entries say."""
    formats = shared_data / "formats"
    (tmp_path / "dataset_info.json").write_text((formats / "lf_dataset_info_sample.json").read_text())
    _write_json(tmp_path / "alpaca_en_demo.json", alpaca_rows)
    for name, sample in (("glaive_toolcall_en_demo.json", "lf_glaive_toolcall_sample.json"),
                         ("dpo_en_demo.json", "lf_dpo_sample.json"), ("kto_en_demo.json", "lf_kto_sample.json")):
        _write_json(tmp_path / name, _load(formats / sample)[:12])
    identity = [{"instruction": "hi", "input": "", "output": "Hello! I am {{name}}, made by {{author}}."},
                {"instruction": "Who are you?", "input": "", "output": "I am {{name}}."},
                {"instruction": "What is your name?", "input": "", "output": "{{name}}."}]
    _write_json(tmp_path / "identity.json", identity)
    return tmp_path


def test_dataset_info_sample_entries_resolve_with_their_formatting_columns_and_tags(lf_dir):
    info = lf_dir / "dataset_info.json"
    kto = resolve_source("kto_en_demo", dataset_info=info)
    assert (kto.location, kto.kind, kto.format) == (str(lf_dir / "kto_en_demo.json"), "json", "sharegpt")
    assert kto.columns == {"conversations": "messages", "kto_tag": "label"}
    assert kto.tags == {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                        "assistant_tag": "assistant"}
    dpo = resolve_source("dpo_en_demo", dataset_info=lf_dir)  # the folder works as well
    assert dpo.ranking and dpo.format == "sharegpt" and dpo.columns == {}  # identity pairs need no renaming
    alpaca = resolve_source("alpaca_en_demo", dataset_info=info)
    assert (alpaca.format, alpaca.columns, alpaca.tags, alpaca.ranking) == ("alpaca", {}, {}, False)


def test_dataset_info_sample_entries_read_with_exact_counts(lf_dir, alpaca_rows):
    info = lf_dir / "dataset_info.json"
    counts = {name: len(read_conversations(name, dataset_info=info).conversations)
              for name in ("alpaca_en_demo", "glaive_toolcall_en_demo", "kto_en_demo", "identity")}
    assert counts == {"alpaca_en_demo": len(alpaca_rows), "glaive_toolcall_en_demo": 12, "kto_en_demo": 12,
                      "identity": 3}
    # the entry reads exactly what the file read directly gives
    direct = read_conversations(lf_dir / "alpaca_en_demo.json")
    assert _content(read_conversations("alpaca_en_demo", dataset_info=info)) == _content(direct)


def test_kto_entry_maps_tags_and_the_label_column(lf_dir):
    """role/content + user/assistant tags and ``label`` -> ``kto_tag``: the same messages as
    reading the rows as OpenAI messages, and each row's label kept."""
    result = read_conversations("kto_en_demo", dataset_info=lf_dir / "dataset_info.json")
    assert result.format == "sharegpt"
    as_openai = read_conversations(lf_dir / "kto_en_demo.json", format="openai")
    assert [c.messages for c in result.conversations] == [c.messages for c in as_openai.conversations]
    labels = [row["label"] for row in _load(lf_dir / "kto_en_demo.json")]
    assert [c.meta["kto_tag"] for c in result.conversations] == labels
    assert {True, False} <= set(labels)  # the sample holds both kinds


def test_ranking_entry_is_refused_as_sft_and_its_rows_are_preference_pairs(lf_dir):
    info = lf_dir / "dataset_info.json"
    with pytest.raises(ConfigError, match="'dpo_en_demo' is a ranking"):
        read_conversations("dpo_en_demo", dataset_info=info)
    pairs = [parse_preference(record.value) for record in iter_records(resolve_source("dpo_en_demo",
                                                                                      dataset_info=info))]
    rows = _load(lf_dir / "dpo_en_demo.json")
    assert len(pairs) == len(rows) == 12
    assert [pair.chosen for pair in pairs] == [row["chosen"]["value"] for row in rows]


def test_dataset_info_with_renamed_columns_and_tags_names_the_files_own_fields(tmp_path):
    rows = [{"q": "2+2?", "ctx": "", "a": "4", "sys": "Be brief."}, {"q": "Capital of France?", "a": "Paris"}]
    _write_json(tmp_path / "qa.json", rows)
    chats = [{"dialog": [{"speaker": "me", "text": "Hi"}, {"speaker": "bot", "text": "Hello"}]},
             {"dialog": [{"speaker": "me", "text": "Hi"}, {"speaker": "robot", "text": "Hello"}]}]
    _write_json(tmp_path / "chats.json", chats)
    info = {"qa": {"file_name": "qa.json", "columns": {"prompt": "q", "query": "ctx", "response": "a",
                                                      "system": "sys"}},
            "chats": {"file_name": "chats.json", "formatting": "sharegpt", "columns": {"messages": "dialog"},
                      "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "me",
                               "assistant_tag": "bot"}}}
    _write_json(tmp_path / "dataset_info.json", info)
    qa = read_conversations("qa", dataset_info=tmp_path)
    assert [[(m.role, m.content) for m in c.messages] for c in qa.conversations] == [
        [("system", "Be brief."), ("user", "2+2?"), ("assistant", "4")],
        [("user", "Capital of France?"), ("assistant", "Paris")]]
    with pytest.raises(DataError) as error:  # the second chat's "robot" is no known speaker
        read_conversations("chats", dataset_info=tmp_path)
    assert str(error.value).startswith(f"{tmp_path / 'chats.json'}[record 1]: field 'dialog[1].speaker': ")
    skipped = read_conversations("chats", dataset_info=tmp_path, on_error="skip")
    assert len(skipped.conversations) == 1 and sum(skipped.skipped.values()) == 1


@pytest.mark.parametrize("entry, message", [
    ({"file_name": "x.json", "formatting": "gpt4"}, "unsupported formatting 'gpt4'"),
    ({"file_name": "x.json", "colums": {}}, r"unknown key\(s\) \['colums'\]"),
    ({"file_name": "x.json", "columns": {"question": "q"}}, "unknown column 'question'"),
    ({"file_name": "x.json", "tags": {"role_tag": "role"}}, "tags apply to sharegpt"),
    ({"ms_hub_url": "AI-ModelScope/x"}, "sftlab cannot read ms_hub_url"),
])
def test_bad_dataset_info_entries_name_the_file_and_the_key(tmp_path, entry, message):
    _write_json(tmp_path / "dataset_info.json", {"mine": entry})
    with pytest.raises(DataError, match=message) as error:
        read_conversations("mine", dataset_info=tmp_path / "dataset_info.json")
    assert error.value.file == str(tmp_path / "dataset_info.json") and error.value.field.startswith("mine")


def test_unknown_dataset_name_lists_the_available_ones(lf_dir):
    with pytest.raises(DataError) as error:
        read_conversations("alpaca_demo", dataset_info=lf_dir)
    text = str(error.value)
    assert "no dataset 'alpaca_demo'" in text and "did you mean 'alpaca_en_demo'" in text
    assert "alpaca_en_demo, glaive_toolcall_en_demo, dpo_en_demo, kto_en_demo, identity" in text


def test_num_samples_reads_a_seeded_subset(tmp_path, alpaca_rows):
    _write_json(tmp_path / "a.json", alpaca_rows)
    _write_json(tmp_path / "dataset_info.json", {"a": {"file_name": "a.json", "num_samples": 5},
                                                 "many": {"file_name": "a.json", "num_samples": 999}})
    first = read_conversations("a", dataset_info=tmp_path)
    assert len(first.conversations) == 5 and first.records == 5
    assert _content(first) == _content(read_conversations("a", dataset_info=tmp_path))  # same rows each time
    ids = [int(c.id.split("-")[1]) for c in first.conversations]
    assert ids == sorted(ids) and ids != list(range(5))  # sampled across the file, kept in file order
    with pytest.raises(DataError, match="num_samples is 999 but there are 30 records"):
        read_conversations("many", dataset_info=tmp_path)


# --- CSV and Parquet -------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["csv", "tsv", "parquet"])
def test_alpaca_csv_and_parquet_read_into_the_json_conversations(tmp_path, alpaca_rows, kind):
    expected = read_conversations(_write_json(tmp_path / "rows.json", alpaca_rows))
    columns = ["instruction", "input", "output", "system", "history"]
    if kind == "parquet":
        path = _write_parquet(tmp_path / "rows.parquet", alpaca_rows)
    elif kind == "csv":
        path = _write_csv(tmp_path / "rows.csv", alpaca_rows, columns)
    else:
        path = tmp_path / "rows.tsv"
        _write_csv(tmp_path / "tmp.csv", alpaca_rows, columns)
        with open(tmp_path / "tmp.csv", newline="", encoding="utf-8") as handle, \
                open(path, "w", newline="", encoding="utf-8") as out:
            csv.writer(out, delimiter="\t").writerows(csv.reader(handle))
    result = read_conversations(path)
    assert result.format == "alpaca" and result.records == len(alpaca_rows)
    assert _content(result) == _content(expected)
    assert {c.source for c in result.conversations} == {path.name}
    # the system and history rows really went through
    assert result.conversations[3].messages[0].role == "system"
    assert len(result.conversations[7].messages) == 6


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_sharegpt_csv_and_parquet_read_into_the_json_conversations(tmp_path, sharegpt_rows, kind):
    expected = read_conversations(_write_json(tmp_path / "chats.json", sharegpt_rows))
    path = (_write_parquet(tmp_path / "chats.parquet", sharegpt_rows) if kind == "parquet" else
            _write_csv(tmp_path / "chats.csv", sharegpt_rows, ["id", "conversations"]))
    result = read_conversations(path)
    assert result.format == "sharegpt"
    assert _content(result) == _content(expected) and len(result.conversations) == len(sharegpt_rows)


def test_csv_errors_name_the_line_counting_the_header_and_the_column(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text('instruction,output\n"Say hi",hi\n"Two\nlines",ok\nonly one cell\n"Empty",\n',
                    encoding="utf-8")
    with pytest.raises(DataError) as error:
        read_conversations(path)
    assert str(error.value).startswith(f"{path}:5: 1 cells but the header has 2 columns")
    result = read_conversations(path, on_error="skip")
    assert [c.id for c in result.conversations] == ["bad-0", "bad-1"]
    assert result.conversations[1].messages[0].content == "Two\nlines"  # a quoted line break stays in its cell
    assert result.skipped == {"wrong cell count": 1, "missing field": 1}
    assert [(e.line, e.field) for e in result.errors] == [(5, None), (6, "output")]  # line 6: the empty cell


def test_csv_cell_of_bad_json_names_line_and_column(tmp_path):
    path = tmp_path / "chats.csv"
    path.write_text('id,conversations\na,"[{""from"": ""human"", ""value"": ""Hi""}, {""from"": ""gpt"", '
                    '""value"": ""Hello""}]"\nb,"[{""from"": ""human""}"\n', encoding="utf-8")
    with pytest.raises(DataError) as error:
        read_conversations(path, format="sharegpt")
    assert str(error.value).startswith(f"{path}:3: field 'conversations': invalid JSON in the cell")
    assert len(read_conversations(path, format="sharegpt", on_error="skip").conversations) == 1


def test_a_missing_relative_path_names_the_folder_it_was_read_from(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("../shared/data/alpaca.jsonl", "data.parquet"):
        with pytest.raises(DataError, match="file not found") as error:
            read_conversations(name)
        assert f"relative paths are read from the current folder, {tmp_path}" in str(error.value)
    with pytest.raises(DataError) as error:
        read_conversations(tmp_path / "absolute.jsonl")
    assert "relative paths" not in str(error.value)


def test_missing_and_broken_table_files_are_named(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_conversations(tmp_path / "nothing.csv")
    with pytest.raises(DataError, match="file not found"):
        read_conversations(tmp_path / "nothing.parquet")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="not a readable Parquet file") as error:
        read_conversations(tmp_path / "broken.parquet")
    assert error.value.file == str(tmp_path / "broken.parquet")


# --- column mapping ---------------------------------------------------------------------

def test_column_mapping_renames_any_files_columns_for_the_reader(tmp_path, alpaca_rows):
    expected = read_conversations(_write_json(tmp_path / "rows.json", alpaca_rows))
    renamed = [{"q": row["instruction"], "extra": row["input"], "a": row["output"],
                **{key: row[key] for key in ("system", "history") if key in row}} for row in alpaca_rows]
    columns = {"instruction": "q", "input": "extra", "output": "a"}
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in renamed), encoding="utf-8")
    for path in (tmp_path / "rows.jsonl", _write_parquet(tmp_path / "rows.parquet", renamed),
                 _write_csv(tmp_path / "rows.csv", renamed, ["q", "extra", "a", "system", "history"])):
        result = read_conversations(path, format="alpaca", columns=columns)
        assert _content(result) == _content(expected), path.name
    # the mapping also lets the format be detected: {q, a} alone looks like nothing
    assert read_conversations(tmp_path / "rows.csv", columns=columns).format == "alpaca"
    with pytest.raises(DataError, match="cannot detect the format"):
        read_conversations(tmp_path / "rows.csv")


def test_column_mapping_errors_name_the_files_column(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text('{"q": "2+2?", "a": "4"}\n{"q": "3+3?"}\n', encoding="utf-8")
    with pytest.raises(DataError) as error:
        read_conversations(path, columns={"instruction": "q", "output": "a"})
    assert str(error.value).startswith(f"{path}:2: field 'a': missing field")
    table = _write_csv(tmp_path / "qa.csv", [{"q": "2+2?", "answer": "4"}], ["q", "answer"])
    with pytest.raises(DataError) as error:  # a table's header is checked before any row
        read_conversations(table, columns={"instruction": "q", "output": "a"})
    assert error.value.reason == "missing column"
    assert "column 'a' (read as output) is not in the file" in str(error.value)
    assert "the columns are: q, answer" in str(error.value)
    with pytest.raises(ConfigError, match="more than one field"):
        read_conversations(table, columns={"instruction": "q", "output": "q"})


# --- datasets: save_to_disk, a local data dir, hub ids ---------------------------------

def test_save_to_disk_directory_reads_like_the_json(tmp_path, sharegpt_rows):
    import datasets

    expected = read_conversations(_write_json(tmp_path / "chats.json", sharegpt_rows))
    datasets.Dataset.from_list(sharegpt_rows).save_to_disk(str(tmp_path / "chats"))
    result = read_conversations(tmp_path / "chats")
    assert _content(result) == _content(expected)
    arrow = tmp_path / "chats.arrow"  # the Arrow file inside, read on its own
    arrow.write_bytes(next((tmp_path / "chats").glob("*.arrow")).read_bytes())
    assert _content(read_conversations(arrow)) == _content(expected)
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(sharegpt_rows[:20]),
                                   "test": datasets.Dataset.from_list(sharegpt_rows[20:])})
    splits.save_to_disk(str(tmp_path / "split"))
    assert len(read_conversations(tmp_path / "split").conversations) == 20  # train by default
    test = read_conversations(tmp_path / "split", split="test")
    assert [c.messages for c in test.conversations] == [c.messages for c in expected.conversations[20:]]
    with pytest.raises(DataError, match="no split 'dev'.*use one of: train, test"):
        read_conversations(tmp_path / "split", split="dev")


def test_local_data_dir_goes_through_load_dataset(tmp_path, alpaca_rows):
    folder = tmp_path / "mydata"
    folder.mkdir()
    for split, rows in (("train", alpaca_rows[:20]), ("test", alpaca_rows[20:])):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    expected = read_conversations(folder / "test.jsonl")
    result = read_conversations(folder, split="test")
    assert [(c.messages, c.meta) for c in result.conversations] == \
        [(c.messages, c.meta) for c in expected.conversations]
    assert len(read_conversations(folder).conversations) == 20
    with pytest.raises(DataError, match="cannot load the dataset") as error:
        read_conversations(folder, split="nope")
    assert error.value.file == str(folder)


def test_hub_ids_need_hf_prefix_and_pass_split_subset_revision(tmp_path, monkeypatch, alpaca_rows):
    import datasets

    with pytest.raises(DataError) as error:  # a missing local path never becomes a hub lookup
        read_conversations("tatsu-lab/alpaca")
    assert "file not found" in str(error.value) and "hf://owner/name" in str(error.value)
    with pytest.raises(DataError, match=r"hf://nobody/nothing: cannot load the dataset \(offline"):
        read_conversations("hf://nobody/nothing")
    calls = []

    def fake_load_dataset(path, **kwargs):  # the hub, as datasets would answer it from its cache
        calls.append((path, kwargs))
        return datasets.Dataset.from_list(alpaca_rows[:4])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    result = read_conversations("hf://tatsu-lab/alpaca", split="train", subset="default", revision="abc123")
    assert calls == [("tatsu-lab/alpaca", {"name": "default", "split": "train", "revision": "abc123",
                                           "data_dir": None})]
    assert [c.id for c in result.conversations] == [f"alpaca-{i}" for i in range(4)]
    assert {c.source for c in result.conversations} == {"alpaca"}
    # a dataset_info entry with hf_hub_url loads the same way, with its split, subset and folder
    _write_json(tmp_path / "dataset_info.json", {"hub": {"hf_hub_url": "owner/name", "split": "validation",
                                                         "subset": "en", "folder": "data/en"}})
    read_conversations("hub", dataset_info=tmp_path, revision="v1")
    assert calls[-1] == ("owner/name", {"name": "en", "split": "validation", "revision": "v1",
                                        "data_dir": "data/en"})


# --- where users give data: the train config and the CLI ---------------------------------

def test_train_config_data_section_takes_the_source_options(tmp_path):
    config = build_config(TrainConfig, {"data": {"paths": ["alpaca_en_demo"], "dataset_info": "data/",
                                                 "columns": {"instruction": "q"}, "split": "train",
                                                 "subset": "en", "revision": "main"}})
    assert (config.data.dataset_info, config.data.columns, config.data.split, config.data.subset,
            config.data.revision) == ("data/", {"instruction": "q"}, "train", "en", "main")


def test_train_loads_a_csv_with_column_mapping(tmp_path, tiny_tokenizer):
    from sftlab.train.data import load_examples

    _write_csv(tmp_path / "qa.csv", [{"q": "2+2?", "a": "4"}, {"q": "Capital of France?", "a": "Paris"}],
               ["q", "a"])
    config = build_config(TrainConfig, {"data": {"paths": [str(tmp_path / "qa.csv")],
                                                 "columns": {"instruction": "q", "output": "a"}}})
    train, _, summary = load_examples(config.data, tiny_tokenizer)
    assert len(train) == 2 and all(example.num_trained > 0 for example in train)


def test_a_kto_entry_is_refused_as_sft_training_data(lf_dir, tiny_tokenizer):
    from sftlab.train.data import load_examples

    data = {"paths": ["kto_en_demo"], "dataset_info": str(lf_dir / "dataset_info.json")}
    with pytest.raises(DataError, match=r"kto_en_demo: \d+ of its 12 conversations are marked undesirable"
                                        r".*objective=kto"):
        load_examples(build_config(TrainConfig, {"data": data}).data, tiny_tokenizer)
    train, _, _ = load_examples(build_config(TrainConfig, {"data": {**data, "format": "sharegpt"}}).data,
                                tiny_tokenizer)
    assert len(train) == 12  # the format given: every answer trained, as asked


def test_cli_data_commands_take_the_source_options(tmp_path, lf_dir, alpaca_rows, capsys, tiny_tokenizer):
    out = tmp_path / "out.jsonl"
    assert main(["data", "convert", "identity", "--dataset-info", str(lf_dir), "-o", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 3
    _write_csv(tmp_path / "qa.csv", [{"q": "2+2?", "a": "4"}], ["q", "a"])
    assert main(["data", "stats", str(tmp_path / "qa.csv"), "--columns", "instruction=q,output=a", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["records"] == 1
    assert main(["data", "show-mask", str(tmp_path / "qa.csv"), "--columns", "instruction=q,output=a",
                 "--tokenizer", "tiny", "--color", "never"]) == 0
    assert "[[" in capsys.readouterr().out
    assert main(["data", "stats", "kto_demo", "--dataset-info", str(lf_dir)]) == 2
    assert "no dataset 'kto_demo'" in capsys.readouterr().err
