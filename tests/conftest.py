"""Shared fixtures: the tiny in-process model/tokenizer and the real files in ../shared/data."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ../shared/data; a missing folder is a failure, never a silent skip."""
    assert SHARED_DATA.is_dir(), f"{SHARED_DATA} is missing: tests read the real files there"
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from sftlab.models.tiny import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture()
def tiny_model():
    """A fresh random tiny Llama (same weights every time: seed 0)."""
    from sftlab.models.tiny import tiny_model

    return tiny_model(seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The tiny model and tokenizer saved as an ordinary Hugging Face directory."""
    from sftlab.models.tiny import save_tiny

    path = tmp_path_factory.mktemp("tiny-model")
    save_tiny(path)
    return path
