"""size-sweep's rules: nested subsets, the bad-size errors, the "smallest n" rule."""
import pytest

from sftlab.errors import ConfigError
from sftlab.study.config import SizeSweepConfig
from sftlab.study.runs import Benchmark
from sftlab.study.size_sweep import check_sizes, nested_subsets, plan, smallest_within, task_fraction_subsets
from sftlab.types import Conversation, Message

POOL = [Conversation([Message("user", f"q{i}"), Message("assistant", f"a{i}")], id=f"x{i}") for i in range(50)]


def ids(conversations):
    return [c.id for c in conversations]


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_subsets_are_nested_for_each_seed(seed):
    subsets = nested_subsets(POOL, [5, 12, 30], seed)
    assert [len(subsets[n]) for n in (5, 12, 30)] == [5, 12, 30]
    assert set(ids(subsets[5])) <= set(ids(subsets[12])) <= set(ids(subsets[30])) <= set(ids(POOL))
    assert len(set(ids(subsets[30]))) == 30  # no example drawn twice
    assert nested_subsets(POOL, [5, 12, 30], seed) == subsets  # deterministic


def test_seeds_draw_different_subsets():
    assert ids(nested_subsets(POOL, [10], 0)[10]) != ids(nested_subsets(POOL, [10], 1)[10])


@pytest.mark.parametrize("sizes, fragment", [([8, 4], "strictly increasing"), ([4, 4], "strictly increasing"),
                                             ([0, 4], "positive"), ([], "strictly"), ([10, 51], "exceeds the pool of 50")])
def test_bad_sizes_name_the_key(sizes, fragment):
    with pytest.raises(ConfigError, match=fragment) as error:
        check_sizes(sizes, len(POOL))
    assert str(error.value).startswith("sizes:")


def test_no_seeds_fails_naming_the_key():
    with pytest.raises(ConfigError, match="^seeds: give at least one"):
        SizeSweepConfig(model="tiny", seeds=[])


def block(mean, low, high):
    return {"mean": mean, "low": low, "high": high}


def test_smallest_n_within_the_largest_interval():
    points = {8: block(0.10, 0.05, 0.15), 32: block(0.39, 0.33, 0.45), 128: block(0.41, 0.36, 0.46),
              512: block(0.45, 0.40, 0.50)}
    assert smallest_within(points) == 128  # 0.41 >= 0.40; 32's 0.39 is below the interval
    points[32] = block(0.40, 0.34, 0.46)  # exactly at the lower end counts as within
    assert smallest_within(points) == 32


def test_only_the_largest_when_nothing_smaller_reaches_it():
    assert smallest_within({4: block(0.0, 0.0, 0.0), 16: block(0.3, 0.2, 0.4)}) == 16


def test_a_smaller_n_scoring_above_the_interval_counts():
    """At or above the lower end: a small set that beats the largest is certainly enough."""
    assert smallest_within({4: block(0.9, 0.8, 1.0), 16: block(0.3, 0.2, 0.4)}) == 4


TASK_POOL = [Conversation([Message("user", f"q{i}"), Message("assistant", "a")], id=f"{task}{i}", meta={"task": task})
             for task, count in (("add", 16), ("sort", 5)) for i in range(count)]


@pytest.mark.parametrize("seed", [0, 3])
def test_task_fractions_are_nested_per_task(seed):
    subsets = task_fraction_subsets(TASK_POOL, [0.125, 0.5, 1.0], seed)
    per_task = {f: {t: [c.id for c in chosen if c.meta["task"] == t] for t in ("add", "sort")}
                for f, chosen in subsets.items()}
    assert {f: {t: len(v) for t, v in tasks.items()} for f, tasks in per_task.items()} == {
        0.125: {"add": 2, "sort": 1}, 0.5: {"add": 8, "sort": 3}, 1.0: {"add": 16, "sort": 5}}
    for task in ("add", "sort"):
        assert set(per_task[0.125][task]) <= set(per_task[0.5][task]) <= set(per_task[1.0][task])
    assert [c.id for c in task_fraction_subsets(TASK_POOL, [0.5], seed, ["sort"])[0.5]] == per_task[0.5]["sort"]


def test_task_fraction_errors_name_the_key():
    with pytest.raises(ConfigError, match="fractions: must be strictly increasing"):
        task_fraction_subsets(TASK_POOL, [0.5, 0.25], 0)
    with pytest.raises(ConfigError, match="fractions:"):
        task_fraction_subsets(TASK_POOL, [0.5, 1.5], 0)
    with pytest.raises(ConfigError, match=r"tasks: \['mul'\] not in the pool"):
        task_fraction_subsets(TASK_POOL, [0.5], 0, ["mul"])
    with pytest.raises(ConfigError, match="needs each example's task in meta.task"):
        task_fraction_subsets(POOL, [0.5], 0)


def test_single_task_plans_one_curve_per_task_on_its_own_items():
    items = [{"id": f"e{t}{i}", "task": t, "prompt": "p", "answer": "a"} for t in ("add", "sort") for i in range(3)]
    benchmark = Benchmark("b", TASK_POOL, items, lambda r, a: 0.0)
    curves = plan(SizeSweepConfig(mode="task_fraction", setting="single_task", fractions=[0.5, 1.0], seeds=[0]),
                  benchmark)
    assert [c.label for c in curves] == ["add", "sort"]
    assert all({i["task"] for i in c.items} == {c.label} for c in curves)
    assert {x.meta["task"] for x in curves[1].subsets[0][1.0]} == {"sort"}
    with pytest.raises(ConfigError, match="tasks: 'sort' has no evaluation items"):
        plan(SizeSweepConfig(mode="task_fraction", setting="single_task", fractions=[1.0]),
             Benchmark("b", TASK_POOL, items[:3], lambda r, a: 0.0))
