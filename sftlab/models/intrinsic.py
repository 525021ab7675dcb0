"""Intrinsic-subspace delta-tuning (Aghajanyan et al. 2021, "Intrinsic Dimensionality Explains
the Effectiveness of Language Model Fine-Tuning"; after Li et al. 2018).

Only a vector ``theta`` of ``d`` numbers trains. The model's weights are its frozen base
``W0`` plus a fixed random projection of ``theta`` into the full parameter space::

    DID:   W_i = W0_i + P_i theta              (direct intrinsic dimension)
    SAID:  W_i = W0_i + lambda_i * P_i theta   (structure-aware: one learned scale per tensor)

for every target parameter tensor ``i`` (``D_i`` numbers; ``D = sum_i D_i``). ``theta``
starts at zero and ``lambda`` at one, so a fresh model is EXACTLY the base model (the
projection of a zero vector is a zero tensor, and adding it changes no bit) and the gradient
of ``theta`` is not zero at the start.

The projection is Fastfood (Le et al. 2013), never materialised as a ``D x d`` matrix. Per
tensor, ``n`` is the power of two >= max(D_i, d) and::

    P_i = (H G Pi H B)[:D_i, :d] / (||G|| sqrt(D))      (H G Pi H B: n x n)

with ``H`` the n x n Walsh-Hadamard matrix (applied by ``fwht`` in O(n log n)), ``B`` random
signs, ``Pi`` a random permutation and ``G`` Gaussian, all drawn from ``seed``. The full
``n x n`` block has columns of norm ``sqrt(n) ||G||`` exactly, so each column of the whole
``D x d`` projection has norm close to one (exactly one when ``D_i`` is a power of two and
the model has one target). Memory: the base weights are not copied; the drawn diagonals
take about 9 bytes per entry of the padded size (~2 D at most), and a forward pass holds
the effective weights ``W_i`` (O(D)) as any model does. With gradients off (evaluation,
generation, rollouts) they are computed once and kept until ``theta``, the scales or ``W0``
change (their version counters, storage, dtype and device say so), so such a forward costs
what the plain model's does; a forward with gradients projects afresh and drops them.

Because ``B``, ``Pi`` and ``G`` follow from the seed and the target shapes, the trained
result is tiny: ``theta``, the scales and the seed. It is saved as one of sftlab's adapter
formats (``sftlab.models.adapters``: ``sftlab_adapter.json`` with
``"format": "sftlab_intrinsic"`` + ``sftlab_adapter.safetensors`` holding ``theta`` and
``scales``); loading folds the delta into the weights (``merge_intrinsic``), which gives
the same logits bit for bit::

    delta = add_intrinsic(model, {"dimension": 256, "said": True, "seed": 0, "targets": ["*"]})
    ... train delta.parameters() ...
    merge_intrinsic(model)          # W <- W0 + delta: a plain model again

Training (``sftlab.train.methods.prepare_intrinsic``) freezes the base; the optimiser sees
``theta`` (and, with SAID, the scales) only.
"""
from __future__ import annotations

import fnmatch

import torch
from torch import nn
from torch.nn.utils import parametrize

from sftlab.errors import ConfigError

FORMAT = "sftlab_intrinsic"
FORMAT_VERSION = 1
# the settings a saved result records (all required: intrinsic_config writes every one)
SETTINGS = ("dimension", "said", "seed", "targets")


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Fast Walsh-Hadamard transform of the last dimension (length a power of two), unnormalised:
    ``fwht(x) == x @ H`` with ``H`` the Sylvester-ordered Hadamard matrix (symmetric, entries
    +-1, ``H @ H == n I``). O(n log n); differentiable (the gradient is ``fwht`` of the
    gradient, as H is symmetric, so autograd keeps no intermediate).

    >>> fwht(torch.tensor([1.0, 0.0, 0.0, 0.0])).tolist(), fwht(torch.tensor([1.0, 2.0])).tolist()
    ([1.0, 1.0, 1.0, 1.0], [3.0, -1.0])
    """
    n = x.shape[-1]
    if n & (n - 1):
        raise ValueError(f"fwht needs a power-of-two length, got {n}")
    return _Hadamard.apply(x)


class _Hadamard(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return _transform(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _transform(grad)


_RADIX = 64  # H_n = H_64 ⊗ H_64 ⊗ ... : a few small matmuls, 3-4x faster than 2x2 butterflies


def _transform(x: torch.Tensor) -> torch.Tensor:
    """``x @ H_n`` by Kronecker factors: view the last dimension as (k1, k2, ...) and apply
    H_k along each axis (Sylvester's H_n = H_k ⊗ H_(n/k), so the factors act independently).
    The odd-sized factor goes first: a last axis of 2 made the 2^25 transform 3x slower."""
    n, lead = x.shape[-1], x.shape[:-1]
    bits, radix_bits = n.bit_length() - 1, _RADIX.bit_length() - 1
    sizes = ([1 << (bits % radix_bits)] if bits % radix_bits else []) + [_RADIX] * (bits // radix_bits)
    rows, done = x.reshape(-1, n), 1
    for k in sizes:
        after = n // (done * k)
        factor = _small_hadamard(k, x.dtype, x.device)
        if after == 1:  # the last axis: one plain matrix product (H_k is symmetric)
            rows = rows.reshape(-1, k) @ factor
        else:
            rows = torch.matmul(factor, rows.reshape(-1, k, after))
        done *= k
    return rows.reshape(*lead, n)


def _small_hadamard(k: int, dtype, device) -> torch.Tensor:
    """H_k (k <= 64) by Sylvester's doubling."""
    h = torch.ones(1, 1, dtype=dtype, device=device)
    while h.shape[0] < k:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


class Fastfood(nn.Module):
    """The ``rows x dimension`` projection ``(H G Pi H B)[:rows, :dimension] / (||G|| sqrt(total))``.

    ``forward(theta)``: ``theta`` (dimension,) -> (rows,). The diagonals are non-persistent
    buffers drawn from ``generator`` (they are never saved: the seed redraws them).
    """

    def __init__(self, rows: int, dimension: int, total: int, generator: torch.Generator) -> None:
        super().__init__()
        size = 1 << (max(rows, dimension) - 1).bit_length()  # power of two >= both
        self.rows, self.dimension = rows, dimension
        signs = torch.randint(0, 2, (size,), generator=generator, dtype=torch.int8) * 2 - 1
        permutation = torch.randperm(size, generator=generator).to(torch.int32)
        gauss = torch.randn(size, generator=generator)
        self.register_buffer("signs", signs, persistent=False)
        self.register_buffer("permutation", permutation, persistent=False)
        self.register_buffer("gauss", gauss, persistent=False)
        self.scale = 1.0 / float(gauss.norm() * total ** 0.5)

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        size = self.gauss.shape[0]
        x = nn.functional.pad(theta, (0, size - self.dimension)) * self.signs
        x = fwht(x).index_select(-1, self.permutation) * self.gauss
        return fwht(x)[..., :self.rows] * self.scale


class IntrinsicDelta(nn.Module):
    """``theta`` (d,), the SAID ``scales`` (one per target tensor, or None) and one
    ``Fastfood`` block per target; ``delta(i)`` is target ``i``'s additive change, shaped
    like it."""

    def __init__(self, shapes: list[torch.Size], dimension: int, said: bool, seed: int,
                 dtype=torch.float32, device=None) -> None:
        super().__init__()
        total = sum(shape.numel() for shape in shapes)
        generator = torch.Generator().manual_seed(seed)  # on the CPU: the same draws everywhere
        self.shapes = [torch.Size(shape) for shape in shapes]
        self.blocks = nn.ModuleList(Fastfood(shape.numel(), dimension, total, generator)
                                    for shape in self.shapes).to(device)
        self.theta = nn.Parameter(torch.zeros(dimension, dtype=dtype, device=device))
        self.scales = nn.Parameter(torch.ones(len(shapes), dtype=dtype, device=device)) \
            if said else None
        # (target index, id of W0) -> (state of W0, theta and scales when computed, W0 + delta):
        # the no-grad forward's effective weights (``_AddDelta``)
        self.weights: dict[tuple[int, int], tuple[tuple, torch.Tensor]] = {}

    def state(self) -> tuple:
        """The state of ``theta`` and the scales (``_state``): a cached weight is reused
        while it is unchanged."""
        return _state(self.theta), _state(self.scales)

    def delta(self, index: int) -> torch.Tensor:
        projected = self.blocks[index](self.theta)
        if self.scales is not None:
            projected = projected * self.scales[index]
        return projected.reshape(self.shapes[index])


class _AddDelta(nn.Module):
    """The parametrization ``W0 -> W0 + delta(index)`` of one target tensor.

    With gradients off (evaluation, generation, a rollout inside training) the effective
    weight is cached on the owner (``IntrinsicDelta.weights``) and reused until ``theta``,
    the scales or ``W0`` change; with gradients on it is computed afresh every forward, as
    the backward pass needs, and the cache is dropped (no second copy of the weights while
    training)."""

    def __init__(self, owner: IntrinsicDelta, index: int) -> None:
        super().__init__()
        self.__dict__["owner"] = owner  # a reference, not a submodule: it lives on the model once
        self.index = index

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        owner = self.owner
        if torch.is_grad_enabled():
            owner.weights.clear()
            return original + owner.delta(self.index).to(original.dtype)
        key = (_state(original), owner.state())
        cached = owner.weights.get((self.index, id(original)))
        if cached is not None and cached[0] == key:
            return cached[1]
        weight = original + owner.delta(self.index).to(original.dtype)
        owner.weights[(self.index, id(original))] = (key, weight)
        return weight


def _state(tensor: torch.Tensor | None) -> tuple:
    """What changes when ``tensor`` does: its in-place version counter (optimizer steps,
    ``copy_``, ``load_state_dict`` bump it) and its storage, dtype and device (``.to()``).
    Writes through ``.data`` bypass the counter: nothing in sftlab makes them."""
    if tensor is None:
        return ()
    return (tensor._version, tensor.data_ptr(), tensor.dtype, tensor.device)


def add_intrinsic(model: nn.Module, settings: dict) -> IntrinsicDelta:
    """Freeze ``model`` and reparametrise its target tensors as ``W0 + delta`` (in place).

    ``settings``: ``{"dimension": 256, "said": True, "seed": 0, "targets": ["*"]}``
    (``SETTINGS``; ``targets`` are globs over ``named_parameters`` names). A tensor shared by
    several modules (tied embeddings) gets the same delta in each. Returns the new
    ``IntrinsicDelta`` (also ``model.sftlab_intrinsic``), whose parameters are the ones to
    train. Raises ConfigError for missing settings, a glob matching nothing or ``d < 1``.
    """
    missing = [key for key in SETTINGS if key not in settings]
    if missing:
        raise ConfigError(f"intrinsic settings lack {', '.join(missing)}")
    if hasattr(model, "sftlab_intrinsic"):
        raise ConfigError("the model already has an intrinsic delta")
    if int(settings["dimension"]) < 1:
        raise ConfigError(f"intrinsic.dimension must be >= 1, got {settings['dimension']}")
    targets = _target_tensors(model, list(settings["targets"]))
    first = targets[0][0]
    # theta trains in float32 even on a half-precision base (Adam steps would round away);
    # a float64 base (the exactness tests) gets float64
    dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
    delta = IntrinsicDelta([t.shape for t, _ in targets], int(settings["dimension"]),
                           bool(settings["said"]), int(settings["seed"]),
                           dtype=dtype, device=first.device)
    model.requires_grad_(False)
    for index, (_, names) in enumerate(targets):
        for name in names[1:]:  # tied copies first: the first name is the one recorded
            _register(model, name, _AddDelta(delta, index))
        _register(model, names[0], _AddDelta(delta, index))
    model.sftlab_intrinsic = delta  # a submodule: theta and the scales follow .to()
    model.sftlab_intrinsic_settings = {
        **{key: settings[key] for key in SETTINGS},
        "parameters": [[names[0], list(t.shape)] for t, names in targets]}
    return delta


def _target_tensors(model: nn.Module, patterns: list[str]) -> list[tuple[nn.Parameter, list[str]]]:
    """The parameters some pattern matches, once each, with every name they have."""
    by_id: dict[int, tuple[nn.Parameter, list[str]]] = {}
    named = list(model.named_parameters(remove_duplicate=False))
    for name, param in named:
        by_id.setdefault(id(param), (param, []))[1].append(name)
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name, _ in named):
            raise ConfigError(f"intrinsic.targets: '{pattern}' matches no parameter "
                              f"(names look like '{named[-1][0]}')")
    return [(param, names) for param, names in by_id.values()
            if any(fnmatch.fnmatchcase(n, p) for n in names for p in patterns)]


def _register(model: nn.Module, name: str, parametrization: _AddDelta) -> None:
    module_name, _, attribute = name.rpartition(".")
    parametrize.register_parametrization(model.get_submodule(module_name), attribute,
                                         parametrization)


def intrinsic_config(model: nn.Module) -> dict:
    """What a saved result records besides its format: the settings and each target's
    name and shape (checked when it is loaded onto a model)."""
    if not hasattr(model, "sftlab_intrinsic"):
        raise ConfigError("the model has no intrinsic delta")
    return dict(model.sftlab_intrinsic_settings)


def intrinsic_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{"theta": (d,), "scales": (m,)}`` (no ``scales`` without SAID): the whole result."""
    delta = model.sftlab_intrinsic
    tensors = {"theta": delta.theta}
    if delta.scales is not None:
        tensors["scales"] = delta.scales
    return {name: t.detach().contiguous().cpu() for name, t in tensors.items()}


def load_intrinsic(model: nn.Module, config: dict, tensors: dict[str, torch.Tensor], *,
                   source: str = "the saved result", merge: bool = True) -> nn.Module:
    """Rebuild the delta described by ``config`` (``intrinsic_config``'s dict) on a base
    ``model``, set ``tensors`` (``intrinsic_tensors``'s) and, with ``merge``, fold it into the
    weights. ConfigError naming ``source`` when the targets or tensors do not fit the model."""
    delta = add_intrinsic(model, config)
    recorded = [[name, list(shape)] for name, shape in config.get("parameters", [])]
    built = model.sftlab_intrinsic_settings["parameters"]
    if recorded != built:
        odd = next((a, b) for a, b in zip(recorded + [None] * len(built), built + [None] * len(recorded))
                   if a != b)
        raise ConfigError(f"{source}: its intrinsic targets do not match this model "
                          f"(saved {odd[0]}, the model has {odd[1]}); load it onto its own base model")
    expected = intrinsic_tensors(model)
    if set(tensors) != set(expected):
        raise ConfigError(f"{source}: holds tensors {sorted(tensors)}, expected {sorted(expected)}")
    with torch.no_grad():
        for name, tensor in tensors.items():
            target = getattr(delta, name)
            if target.shape != tensor.shape:
                raise ConfigError(f"{source}: '{name}' has shape {tuple(tensor.shape)}, "
                                  f"expected {tuple(target.shape)}")
            target.copy_(tensor)
    return merge_intrinsic(model) if merge else model


def merge_intrinsic(model: nn.Module) -> nn.Module:
    """Fold the delta into the weights (``W <- W0 + delta``, the values the parametrised model
    computes, so the logits stay identical) and remove it: a plain model again."""
    owners = [(module, attribute) for module in model.modules()
              if parametrize.is_parametrized(module)
              for attribute, chain in module.parametrizations.items()
              if any(isinstance(p, _AddDelta) for p in chain)]
    model.sftlab_intrinsic.weights.clear()  # the values below are computed afresh, uncached
    with torch.no_grad():
        merged = {}  # original tensor -> its parametrised value, computed before any removal
        for module, attribute in owners:
            original = module.parametrizations[attribute].original
            merged.setdefault(id(original), (original, getattr(module, attribute)))
        for module, attribute in owners:
            parametrize.remove_parametrizations(module, attribute, leave_parametrized=False)
        for original, value in merged.values():
            original.copy_(value)
    del model.sftlab_intrinsic
    del model.sftlab_intrinsic_settings
    return model
