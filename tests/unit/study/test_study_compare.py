"""compare-data's checks and numbers: bad sources fail first, paired differences, verdicts."""
import pytest

from sftlab.errors import ConfigError
from sftlab.study.compare_data import check_sources, verdict
from sftlab.study.config import CompareDataConfig
from sftlab.study.report import paired_difference, per_item_means, score_block


@pytest.mark.parametrize("overrides, fragment", [
    ({"sources": ["random"]}, "sources: give at least two"),
    ({"sources": ["random", "random"]}, "sources: each source once"),
    ({"sources": ["random", "no/such.jsonl"]}, "sources: 'no/such.jsonl' is neither"),
    ({"baseline": "longest", "sources": ["random", "ifd"]}, "baseline: 'longest' is not one of"),
    ({"pool": "missing.jsonl"}, "pool: no such file"),
    ({"k": 0}, "k: must be positive"),
])
def test_bad_sources_name_the_key(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        check_sources(CompareDataConfig(**overrides))


def test_a_data_file_is_a_source(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"instruction": "Say hi", "output": "hi"}\n')
    check_sources(CompareDataConfig(sources=["random", str(path)], pool=str(path)))  # no error


def rows(scores, prefix="i"):
    return [{"id": f"{prefix}{k}", "correct": float(v)} for k, v in enumerate(scores)]


def test_paired_difference_pairs_items_by_id_across_seeds():
    a = [rows([1, 1, 0, 1]), rows([1, 0, 0, 1])]        # per item over seeds: 1, .5, 0, 1
    b = [list(reversed(rows([0, 1, 0, 0])))]            # the same items in another order
    assert per_item_means(a) == [1.0, 0.5, 0.0, 1.0]
    difference = paired_difference(a, b, seed=0, resamples=500)
    assert difference["mean"] == pytest.approx((1 - 0.5 + 0 + 1) / 4)
    assert difference["n"] == 4 and difference["low"] <= difference["mean"] <= difference["high"]
    block = score_block(a, seed=0, resamples=500)
    assert block["mean"] == pytest.approx(0.625) and [s["mean"] for s in block["seeds"]] == [0.75, 0.5]


def test_paired_difference_refuses_different_items():
    with pytest.raises(ValueError, match="different items"):
        paired_difference([rows([1, 0])], [rows([1, 0], prefix="j")], seed=0, resamples=10)


def test_paired_beats_unpaired_when_items_share_their_difficulty():
    """Items hard for both sides cancel: the paired interval is narrower than either side's."""
    a = [rows([1] * 20 + [0] * 20 + [1] * 5)]
    b = [rows([1] * 20 + [0] * 20 + [0] * 5)]
    difference = paired_difference(a, b, seed=0, resamples=1000)
    side = score_block(a, seed=0, resamples=1000)
    assert difference["high"] - difference["low"] < side["high"] - side["low"]
    assert verdict(difference) == "better"


@pytest.mark.parametrize("low, high, expected", [(0.01, 0.2, "better"), (-0.2, -0.01, "worse"),
                                                 (-0.1, 0.1, "no clear difference"), (0.0, 0.1, "no clear difference")])
def test_verdict(low, high, expected):
    assert verdict({"mean": (low + high) / 2, "low": low, "high": high}) == expected


def test_different_examples_sharing_an_id_are_refused():
    from sftlab.study.compare_data import _check_ids
    from sftlab.types import Conversation, Message

    a = Conversation([Message("user", "q"), Message("assistant", "a")], id="x")
    same = Conversation([Message("user", "q"), Message("assistant", "a")], id="x")
    _check_ids([a, same])  # the same example in the pool and a file: fine
    with pytest.raises(ConfigError, match="share the id 'x'"):
        _check_ids([a, Conversation([Message("user", "q"), Message("assistant", "b")], id="x")])
