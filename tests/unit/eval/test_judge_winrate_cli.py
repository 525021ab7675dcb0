"""`sftlab judge winrate` on a crafted annotations file (in-process CLI)."""
import json

import pytest

from sftlab.cli import main


def write(path, preferences, *, model_len=10, generator="mine"):
    rows = [{"instruction": f"q{i}", "output_1": "b" * 10, "output_2": "m" * (model_len + i % 7),
             "generator_1": "base", "generator_2": generator, "preference": p}
            for i, p in enumerate(preferences)]
    path.write_text(json.dumps(rows))
    return path


def test_winrate_json(tmp_path, capsys):
    file = write(tmp_path / "annotations.json", [2, 2, 1, 1.5, 2, 1, 2, 1.75])
    assert main(["judge", "winrate", str(file), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    expected = 100 * (1 + 1 + 0 + 0.5 + 1 + 0 + 1 + 0.75) / 8
    assert result["win_rate"] == pytest.approx(expected)
    assert result["n_total"] == 8 and result["n_draws"] == 1 and result["model"] == "mine"
    assert result["standard_error"] > 0 and "length_controlled_winrate" in result
    assert result["lc_standard_error"] >= 0


def test_winrate_table_with_two_models_uses_difficulty(tmp_path, capsys):
    a = write(tmp_path / "a.json", [2, 1, 2, 1, 2, 2, 1, 2], generator="model-a")
    b = write(tmp_path / "b.json", [1, 1, 2, 1, 1, 2, 1, 1], generator="model-b", model_len=30)
    assert main(["judge", "winrate", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "model-a" in out and "model-b" in out and "62.50" in out
    assert main(["judge", "winrate", str(a), str(b), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result[str(a)]["uses_difficulty"] is True


def test_winrate_bad_file_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"output_1": "x", "preference": 2}]))
    assert main(["judge", "winrate", str(bad)]) == 2
    assert "output_2" in capsys.readouterr().err


def test_winrate_overrides_config_file_and_missing_files(tmp_path, capsys):
    """KEY=VALUE after the files was read as a file, `--config` with `annotations:` was
    refused by argparse, and no file at all said KEY=VALUE was required too."""
    file = write(tmp_path / "annotations.json", [2, 2, 1, 1.5])
    assert main(["judge", "winrate", str(file), "json=true"]) == 0
    assert json.loads(capsys.readouterr().out)["n_total"] == 4
    config = tmp_path / "w.yaml"
    config.write_text(f"annotations: [{file}]\njson: true\n")
    assert main(["judge", "winrate", "--config", str(config)]) == 0
    assert json.loads(capsys.readouterr().out)["n_total"] == 4
    assert main(["judge", "winrate"]) != 0
    err = capsys.readouterr().err
    assert "ANNOTATIONS is required" in err and "KEY=VALUE" not in err


def test_winrate_on_the_compact_leaderboard_form_says_what_it_is(tmp_path, capsys):
    """Was `needs a 'instruction' string`: annotations_compact.csv (lengths, no texts) was read
    as annotation rows missing their texts, without saying which format is expected."""
    compact = tmp_path / "annotations_compact.csv"
    compact.write_text("model,index,instruction_sha1,generator_1,generator_2,len_output_1,len_output_2,preference\n"
                       "m,0,fb5e4d4705fb,gpt4_1106_preview,m,2104,2570,1.73\n")
    assert main(["judge", "winrate", str(compact)]) == 2
    err = capsys.readouterr().err
    assert "compact leaderboard form" in err and "instruction, output_1, output_2" in err
    assert "scripts/build_alpaca_eval_difficulty.py" in err


def test_winrate_preference_error_and_hint_agree_on_ties(tmp_path, capsys):
    """Was "(or 0 for a tie ...)" with the fix "1.5 = tie": both are read as a tie."""
    file = write(tmp_path / "annotations.json", [2, 0, 1.5, 3])
    assert main(["judge", "winrate", str(file)]) == 2
    err = capsys.readouterr().err
    assert "1.5 or AlpacaEval's 0 for a tie" in err and "1.5 (or 0) = tie" in err
    file = write(tmp_path / "annotations.json", [2, 0, 1.5, 1])
    assert main(["judge", "winrate", str(file), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_draws"] == 2


def test_winrate_table_without_generator_names_the_model_by_its_file(tmp_path, capsys):
    """Was `None` in the model column when the rows have no generator_2."""
    file = tmp_path / "my-model.json"
    file.write_text(json.dumps([{"instruction": f"q{i}", "output_1": "b", "output_2": "m", "preference": p}
                                for i, p in enumerate([2, 1, 2])]))
    assert main(["judge", "winrate", str(file)]) == 0
    row = capsys.readouterr().out.splitlines()[1]
    assert "None" not in row and row.split()[:2] == ["my-model.json", "my-model"]
