"""Test fixtures: the tiny in-process model and tokenizer.

``shared_data`` (the real files in ../shared/data, or $SFTLAB_SHARED_DATA) is in the
repository's root ``conftest.py``, beside the names the docstring examples use.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from sftlab.models import tiny


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """The tiny ChatML tokenizer (trained in-process, 512 tokens; see ``sftlab.models.tiny``)."""
    return tiny.tiny_tokenizer()


@pytest.fixture()
def tiny_model():
    """A fresh random tiny Llama (same weights every time: seed 0)."""
    return tiny.tiny_model(seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The tiny model and tokenizer saved as an ordinary Hugging Face directory."""
    path = tmp_path_factory.mktemp("tiny-model")
    tiny.save_tiny(path)
    return path
