"""Fixtures for the whole repository: the real data files, and the names docstring examples
in ``sftlab/`` may use (the default suite runs them with ``--doctest-modules``).

The real data lives beside the clone, in ``../shared/data``; set ``SFTLAB_SHARED_DATA`` to
point elsewhere. The tiny model and tokenizer fixtures of the tests are in ``tests/conftest.py``.

Each docstring example gets fresh objects, so one that changes the tokenizer
(``ensure_chat_template`` clears its template) cannot break the next:

* ``tok``: the tiny ChatML tokenizer trained in-process (``sftlab.models.tiny``);
* ``model``: a fresh tiny random Llama (seed 0) whose vocabulary matches ``tok``;
* ``shared_data``: the folder of real data files (``SHARED_DATA``);
* ``Message``, ``Conversation``, ``Tokenized``: the core types.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from _pytest.doctest import DoctestItem

from sftlab.models.tiny import tiny_model, tiny_tokenizer
from sftlab.types import Conversation, Message, Tokenized

REPO = Path(__file__).resolve().parent
SHARED_DATA = Path(os.environ.get("SFTLAB_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ../shared/data (or $SFTLAB_SHARED_DATA); a missing folder is a failure, never a skip."""
    assert SHARED_DATA.is_dir(), (f"{SHARED_DATA} is missing: tests read the real files there "
                                  "(put them in ../shared/data or set SFTLAB_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _doctest_names(request, doctest_namespace) -> None:
    if isinstance(request.node, DoctestItem):  # ordinary tests build their own through fixtures
        doctest_namespace.update(tok=tiny_tokenizer(), model=tiny_model(seed=0), shared_data=SHARED_DATA,
                                 Message=Message, Conversation=Conversation, Tokenized=Tokenized)
