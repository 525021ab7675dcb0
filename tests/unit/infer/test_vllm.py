"""The optional vLLM backend: without vllm installed, building one is a clear, fixable error."""
from __future__ import annotations

import importlib.util

import pytest

from sftlab.errors import SftlabError


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_missing_vllm_is_a_clear_error():
    from sftlab.infer.vllm import VLLMGenerator

    with pytest.raises(SftlabError, match="pip install vllm"):
        VLLMGenerator("tiny")


def test_module_imports_without_vllm():
    import sftlab.infer.vllm as module

    assert hasattr(module, "VLLMGenerator")
