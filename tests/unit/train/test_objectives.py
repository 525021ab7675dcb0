"""The objective registry: the config's allowed names are the registered ones, every
objective fulfils the contract the loop relies on, and the config stays light."""
from __future__ import annotations

import subprocess
import sys
from typing import get_args

import pytest

from sftlab.train.config import ObjectiveName, TrainConfig
from sftlab.train.objectives import OBJECTIVES, Objective
from sftlab.types import Tokenized


def test_config_names_are_the_registered_objectives():
    assert list(get_args(ObjectiveName)) == OBJECTIVES.names()


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_every_objective_has_the_loop_contract(name):
    objective = OBJECTIVES.get(name)(TrainConfig(objective=name))
    assert isinstance(objective, Objective) and objective.name == name
    assert objective.unit_name and objective.count_key and isinstance(objective.unit_type, type)
    for hook in ("load_data", "make_units", "collate", "loss_module", "count"):
        assert getattr(type(objective), hook) is not getattr(Objective, hook), hook


def test_sft_collates_and_counts_labelled_tokens():
    objective = OBJECTIVES.get("sft")(TrainConfig())
    batch = objective.collate([Tokenized([1, 5, 6], [-100, 5, 6]), Tokenized([1, 7], [-100, 7])],
                              pad_id=3)
    assert objective.count(batch.tensors) == 3 and batch.tokens == 5


def test_train_config_imports_no_torch():
    """``sftlab --help`` builds the train options from TrainConfig: it must stay light."""
    code = "import sys, sftlab.train.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
