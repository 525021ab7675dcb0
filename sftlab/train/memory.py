"""Give memory freed during the forward pass back to the OS (CPU training, glibc).

On CPU, PyTorch tensors come from glibc's malloc. A forward pass frees many short-lived
activation-sized blocks; glibc keeps them in its heap, and from the second step on the
heap's holes fit the next step's tensors badly, so the resident set grows well past what
is alive: on the LoRA benchmark (SmolLM2-135M shape, 4 examples of 32-128 tokens) the
first step peaks about 470 MiB above the model, later steps about 900 MiB.
``malloc_trim(0)`` every few decoder layers hands the free pages back as the forward
goes: peak RSS then stays near what is alive (-350 MiB there) for about 4% of step time.
Full fine-tuning on the same workload pays more: -270 MiB for about 19% of step time
(2.81 vs 2.37 s a step; 210-230k minor page faults a step against 55-130k untrimmed;
``bench/profile_train.py``): the trimmed pages fault back in.
Serving *every* block above 256 KiB with mmap (``mallopt(M_MMAP_THRESHOLD)``) saves as
much there but costs about 19%: every activation then page-faults on each use.

Long sequences need the mmap route for their big blocks. glibc raises its mmap threshold
to the size of each mmapped block freed, up to 32 MiB, so after the first step's frees
every activation up to 32 MiB lives in the heap. In a long step those are ``[L, hidden]``
and ``[L, intermediate]`` tensors (9 and 25 MiB at 4096 tokens for the 135M model), and
the backward pass interleaves them with blocks that live on: the checkpointed layer
inputs, and with ``optim.in_backward`` each parameter's new AdamW state. The freed
activations leave holes the next layer's do not fit, so the heap grows by about one layer's
activations per layer: at 4096 tokens a full fine-tuning step peaked at 4.0 GiB RSS of
which about 1.8 GiB was free heap (``bench/long_context.py``), and the trims above do not
run in the backward pass (the recompute of a checkpointed layer skips its hooks).
``mmap_large_blocks`` fixes the threshold at 4 MiB instead: blocks that big are mapped
and unmapped on their own, so freeing one returns it to the OS at once, and the heap keeps
only the small ones. Blocks under 4 MiB are what short sequences allocate (the LoRA
benchmark's largest activation is 3 MiB), so they keep the heap's speed; a mapped block
costs its page faults, which a tensor of 4 MiB or more amortises over its compute.

    mmap_large_blocks()                           # False where there is no glibc
    hooks = trim_during_forward(model, every=5)   # [] where there is no glibc or no layer list

The layer list is ``sftlab.models.layers.decoder_layers``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache

from sftlab.models.layers import decoder_layers


M_MMAP_THRESHOLD = -3  # glibc's malloc.h
LARGE_BLOCK = 4 * 1024 * 1024


@lru_cache(maxsize=1)
def _libc():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def _glibc_function(name: str):
    """``name`` from glibc, or None where the C library lacks it (musl, macOS)."""
    return getattr(_libc(), name, None)


@lru_cache(maxsize=1)
def _malloc_trim():
    return _glibc_function("malloc_trim")


def _mallopt():
    return _glibc_function("mallopt")


def mmap_large_blocks(threshold: int = LARGE_BLOCK) -> bool:
    """Serve every allocation of ``threshold`` bytes or more with its own mmap, for the rest
    of the process (``mallopt(M_MMAP_THRESHOLD)``; it also stops glibc's raising of the
    threshold). True when set, False where there is no glibc ``mallopt``."""
    mallopt = _mallopt()
    return bool(mallopt and mallopt(M_MMAP_THRESHOLD, threshold))


def trim_during_forward(model, every: int = 5) -> list:
    """Call ``malloc_trim(0)`` after every ``every``-th decoder layer's forward. Returns the
    hook handles (empty where glibc or a layer list is missing)."""
    trim, layers = _malloc_trim(), decoder_layers(model)
    if trim is None or layers is None or every < 1:
        return []

    def hook(module, args, output):
        trim(0)

    return [layer.register_forward_hook(hook) for layer in list(layers)[every - 1::every]]
