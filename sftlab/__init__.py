"""sftlab: instruction tuning of language models, end to end.

The public API: the entry points a Python user calls and their config classes, each
defined in its stage module. A training run is one import and one call::

    import sftlab
    config = sftlab.load_config(sftlab.TrainConfig, "examples/sft_tiny.yaml", ["max_steps=5"])
    result = sftlab.finetune(config)       # result.final_loss, result.saved_to

``finetune`` is ``sftlab.train.sft.train``: the name ``sftlab.train`` is the training
package itself, so the function is exported under a name of its own.

Names resolve on first use (PEP 562 ``__getattr__``): ``import sftlab`` stays light (no
torch), so ``sftlab.data`` tools and ``sftlab --help`` start at once.
"""
from __future__ import annotations

import importlib
import logging

from sftlab.types import IGNORE_INDEX, Conversation, Message, Tokenized

__version__ = "0.1.0"

# bitsandbytes (which peft imports whenever it is installed) warns at import, in every
# command, that the optional `kernels` package for a faster CPU 4-bit matmul is missing; it
# falls back without it, and only QLoRA on a CPU would use it
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

# public name -> the module that defines it
_EXPORTS = {
    "load_config": "sftlab.config", "build_config": "sftlab.config",
    "read_conversations": "sftlab.data.io", "read_prompts": "sftlab.data.prompts",
    "tokenize_conversations": "sftlab.data.chat",
    "load_model": "sftlab.models", "load_tokenizer": "sftlab.models",
    "TrainConfig": "sftlab.train.config", "finetune": "sftlab.train.sft",
    "SamplingConfig": "sftlab.infer.base", "HFGenerator": "sftlab.infer.hf",
    "generate": "sftlab.infer.hf",
    "EvalConfig": "sftlab.eval.runner", "evaluate": "sftlab.eval.runner",
    "make_judge": "sftlab.eval.judge.client", "judge_pairs": "sftlab.eval.judge.pairwise",
    "summarize_annotations": "sftlab.eval.judge.lc",
}

_ALIASES = {"finetune": "train"}

__all__ = ["Conversation", "Message", "Tokenized", "IGNORE_INDEX", "__version__", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sftlab' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), _ALIASES.get(name, name))
    globals()[name] = value  # resolve once
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
