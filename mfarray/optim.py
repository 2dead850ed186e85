r"""First-order optimisers on flat parameter vectors, and seeded mini-batches.

Adam (Kingma & Ba 2015) as a pure pair of functions, in the style of optax / jax-md::

    init, update = adam(lr, b1=0.9, b2=0.999, eps=1e-8)
    state = init(params)                        # AdamState(step=0, m=0, v=0)
    delta, state = update(grad, state)          # params <- params + delta

with, at step t = state.step + 1 (all operations elementwise on the flat vector)

.. math::

    m_t = b_1 m_{t-1} + (1 - b_1) g,\qquad v_t = b_2 v_{t-1} + (1 - b_2) g^2,\qquad
    \Delta = -\eta_t\, \frac{m_t / (1 - b_1^t)}{\sqrt{v_t / (1 - b_2^t)} + \epsilon},

the bias-corrected form of the paper (and of optax).  ``lr`` is a number or a schedule
``lr(step) -> float`` of the 0-based step count.  The state is a frozen
:class:`AdamState` (step, m, v): saving and restoring it (e.g. in a checkpoint) continues a
run bit for bit.  :func:`sgd` is plain gradient descent in the same form (Delta = -eta_t g).

One epoch of either is :func:`run_epoch`: every mini-batch's loss and gradient, then one
update, the loop the training functions of :mod:`mfarray.kahler.training` and
:mod:`mfarray.experiments.feature_learning` share.

Mini-batches: :func:`epoch_batches` splits a permutation of ``range(n)`` into consecutive
batches; the permutation of epoch ``e`` is drawn from
``numpy.random.default_rng(SeedSequence(seed, spawn_key=(e,)))``, so it depends on
``(seed, e, n)`` only and an interrupted run resumes with the batches it would have had.

Bare array code: vectors are NumPy or CuPy (namespace from the inputs), float64.  Index
arrays are NumPy int64 (index a CuPy array with ``xp.asarray(idx)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import backend

__all__ = ["AdamState", "SGDState", "adam", "epoch_batches", "minibatches", "n_batches", "require_finite_epoch",
           "run_epoch", "sgd"]

Array = Any  # a NumPy or CuPy array


@dataclass(frozen=True)
class AdamState:
    """State of :func:`adam`: the number of updates done and the moment estimates.

    step : int, updates done so far (0 after ``init``)
    m, v : (P,) float64 arrays, the first and second moment estimates (biased).
    """

    step: int
    m: Array
    v: Array


@dataclass(frozen=True)
class SGDState:
    """State of :func:`sgd`: the number of updates done (the schedule's argument)."""

    step: int


def _as_vector(x, name):
    if not backend.is_cupy(x):
        x = np.asarray(x)
    xp = backend.namespace(x)
    if x.ndim != 1:
        raise ValueError(f"{name} must be a flat parameter vector of shape (P,); got shape {tuple(x.shape)} "
                         f"(flatten it, e.g. with mfarray.networks.flatten)")
    if xp.isdtype(x.dtype, "complex floating"):
        raise ValueError(f"{name} must be real; got dtype {x.dtype}")
    return xp.astype(x, xp.float64, copy=False), xp


def _check_rate(name, value, lo, hi, closed_lo=True):
    if not backend.is_real(value):  # not text, not a bool
        raise ValueError(f"{name} must be a number; got {value!r}")
    value = float(value)
    ok = (lo <= value if closed_lo else lo < value) and value < hi and math.isfinite(value)
    if not ok:
        raise ValueError(f"{name} must lie in {'[' if closed_lo else '('}{lo}, {hi}); got {value}")
    return value


def _schedule(lr):
    """``lr`` as a schedule ``step -> float``: a number checked > 0 and finite once, a callable's
    value at every step (a negative, NaN or text rate would climb the loss or spoil the state)."""
    if callable(lr):
        return lambda step: _check_rate(f"lr({step})", lr(step), 0.0, math.inf, closed_lo=False)
    value = _check_rate("lr", lr, 0.0, math.inf, closed_lo=False)
    return lambda step: value


def adam(lr: float | Callable[[int], float], b1: float = 0.9, b2: float = 0.999,
         eps: float = 1e-8) -> tuple[Callable[[Array], AdamState], Callable[[Array, AdamState], tuple[Array, AdamState]]]:
    """Adam as ``(init, update)`` on flat parameter vectors.

    Parameters
    ----------
    lr : float > 0, or a callable ``lr(step) -> float`` (``step`` = updates done before this one)
    b1, b2 : decay rates of the moment estimates, in [0, 1)
    eps : float > 0, added to the root of the second moment

    Returns
    -------
    init : ``init(params (P,)) -> AdamState`` (zero moments, step 0)
    update : ``update(grad (P,), state) -> (delta (P,), new_state)``; the new parameters are
        ``params + delta`` (the state does not hold the parameters).
    """
    rate = _schedule(lr)
    b1 = _check_rate("b1", b1, 0.0, 1.0)
    b2 = _check_rate("b2", b2, 0.0, 1.0)
    eps = _check_rate("eps", eps, 0.0, math.inf, closed_lo=False)

    def init(params: Array) -> AdamState:
        p, xp = _as_vector(params, "params")
        return AdamState(step=0, m=xp.zeros_like(p), v=xp.zeros_like(p))

    def update(grad: Array, state: AdamState) -> tuple[Array, AdamState]:
        if not isinstance(state, AdamState):
            raise TypeError(f"state must be the AdamState returned by init or update; got {type(state).__name__}")
        g, xp = _as_vector(grad, "grad")
        if not bool(xp.all(xp.isfinite(g))):  # an inf would leave v = inf and every later step NaN
            raise FloatingPointError(f"grad has non-finite entries at step {state.step}: the loss or its gradient "
                                     "overflowed (lower lr, or check the model's inputs)")
        if g.shape != state.m.shape:
            raise ValueError(f"grad has shape {tuple(g.shape)}; the state was made for parameters of shape "
                             f"{tuple(state.m.shape)}")
        t = state.step + 1
        m = b1 * state.m + (1.0 - b1) * g
        v = b2 * state.v + (1.0 - b2) * (g * g)
        eta = float(rate(state.step))
        # fold both bias corrections into one scalar and eps: the same number as the textbook form
        c1, c2 = 1.0 - b1**t, 1.0 - b2**t
        delta = (-eta / c1) * m / (xp.sqrt(v / c2) + eps)
        return delta, AdamState(step=t, m=m, v=v)

    return init, update


def sgd(lr: float | Callable[[int], float]) -> tuple[Callable[[Array], SGDState],
                                                      Callable[[Array, SGDState], tuple[Array, SGDState]]]:
    """Gradient descent as ``(init, update)``, the form of :func:`adam`: ``delta = -lr(step) g``
    (``lr`` a number > 0 or a schedule of the 0-based step count)."""
    rate = _schedule(lr)

    def init(params: Array) -> SGDState:
        _as_vector(params, "params")
        return SGDState(step=0)

    def update(grad: Array, state: SGDState) -> tuple[Array, SGDState]:
        if not isinstance(state, SGDState):
            raise TypeError(f"state must be the SGDState returned by init or update; got {type(state).__name__}")
        g, _ = _as_vector(grad, "grad")
        return (-float(rate(state.step))) * g, SGDState(step=state.step + 1)

    return init, update


def run_epoch(params: Array, state: Any, update: Callable, batches: list[np.ndarray],
              value_and_grad: Callable[[Array, np.ndarray], tuple[float, Array, int]]) -> tuple[Array, Any, float, int]:
    """One epoch of mini-batch training: for each index array ``idx`` of ``batches``,
    ``value, grad, skipped = value_and_grad(params, idx)`` (the batch's mean loss, its gradient
    (P,) and how many points it skipped), then ``delta, state = update(grad, state)`` and
    ``params + delta``.  Returns ``(params, state, mean loss over the epoch's points, skipped)``."""
    total, skipped, count = 0.0, 0, 0
    for idx in batches:
        value, grad, sk = value_and_grad(params, idx)
        delta, state = update(grad, state)
        params = params + delta
        total += value * len(idx)
        count += len(idx)
        skipped += sk
    return params, state, total / max(count, 1), skipped


# ----------------------------------------------------------------------------- mini-batches
def _check_sizes(n, batch):
    for name, value in (("n", n), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer; got {value!r}")
    if n < 1:
        raise ValueError(f"n (the number of points) must be >= 1; got {n}")
    if batch < 1:
        raise ValueError(f"batch (the mini-batch size) must be >= 1; got {batch}")
    return int(n), int(batch)


def n_batches(n: int, batch: int, drop_last: bool = False) -> int:
    """Number of batches of one epoch of :func:`epoch_batches`."""
    n, batch = _check_sizes(n, batch)
    return n // batch if drop_last else -(-n // batch)


def epoch_batches(n: int, batch: int, seed: int, epoch: int, drop_last: bool = False) -> list[np.ndarray]:
    """The mini-batches of one epoch: a permutation of ``range(n)`` cut into consecutive pieces.

    The permutation is ``default_rng(SeedSequence(seed, spawn_key=(epoch,))).permutation(n)``:
    deterministic in ``(n, seed, epoch)``.  Every batch has ``batch`` indices except the last,
    which has ``n mod batch`` (dropped with ``drop_last=True``; then at least one full batch is
    needed).  Without ``drop_last`` every index occurs exactly once per epoch.

    Returns
    -------
    list of (b,) int64 NumPy arrays.
    """
    n, batch = _check_sizes(n, batch)
    if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
        raise ValueError(f"epoch must be an integer >= 0; got {epoch!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0; got {seed!r}")
    if drop_last and batch > n:
        raise ValueError(f"drop_last=True with batch = {batch} > n = {n} leaves no batch; lower batch")
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(epoch),)))
    perm = rng.permutation(n).astype(np.int64)
    stop = (n // batch) * batch if drop_last else n
    return [perm[i:min(i + batch, stop)] for i in range(0, stop, batch)]


def minibatches(n: int, batch: int, seed: int, epochs: int, start: int = 0,
                drop_last: bool = False) -> Iterator[tuple[int, np.ndarray]]:
    """``(epoch, indices)`` for epochs ``start .. epochs - 1``, each the :func:`epoch_batches`
    of that epoch (so resuming at ``start`` gives the batches an uninterrupted run had)."""
    for epoch in range(int(start), int(epochs)):
        for idx in epoch_batches(n, batch, seed, epoch, drop_last):
            yield epoch, idx


def require_finite_epoch(what: str, epoch: int, loss: float, params: Array, lr: float) -> None:
    """FloatingPointError naming the epoch and the fix when an epoch's mean loss or the
    parameters after it are not finite (a diverged training)."""
    xp = backend.namespace(params)
    if not math.isfinite(loss) or not bool(xp.all(xp.isfinite(params))):
        raise FloatingPointError(f"{what} training diverged in epoch {epoch} (loss {loss}): lower lr (now {lr})")
