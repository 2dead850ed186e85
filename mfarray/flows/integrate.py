r"""The one integrator of metric flows: step control, the validity guard, recording.

Every flow in mfarray -- the frozen-kernel flow (2.12), the evolving-kernel network flow (2.8)
and its linearisation (2.10) -- is discrete gradient descent of a :class:`MetricModel`
(:mod:`mfarray.flows.models`) on a pointwise loss:

    G = dl/dg (x')  at the train points         (losses, trace inner-product convention)
    theta(s) = the model's line in the descent direction of G  (kernel: dual A + s G;
               network: theta - s J^T r(G)),  metrics g(s), g_test(s) along it

and this module decides the step length s.  Per step it factorises each trial metric once
(:func:`mfarray.linalg.metrics`), and reuses that factorisation for the guard, the loss value,
sigma and the next gradient.

Step control (:class:`StepControl`)
-----------------------------------
* ``lr``: the step (the paper's fixed learning rate when ``adaptive=False``).
* ``normalize``: s = lr / max_x |g(x; theta - D) - g(x)|_F, so lr is the largest per-point
  metric change of a step (the paper's "normalised updates", §3.2).
* ``clip``: per-point Frobenius clipping of dl/dg before the model acts (on the dual side, so
  test predictions stay exact).
* ``adaptive``: backtracking on the total loss -- a step that does not decrease it is halved
  and retried; an accepted step grows the rate by ``grow`` (up to ``lr_max``).
* The guard: a step whose train or test metrics are not all valid (finite, Hermitian,
  lambda_min >= linalg.MARGIN lambda_max) is halved and retried, whatever the step control.
  Test points therefore limit the step only through validity; ``rejected_test`` counts it.
  The shortened rate is kept for later steps.
* :class:`FlowError` when a step needs more than ``max_halvings`` halvings, or when the rate
  has collapsed below ``lr 2^-max_halvings``; the error names the step and carries the steps
  done as ``error.result``.

Recording: loss (mean of the per-point losses), sigma (B.11) on train and test, the step size
taken (``lr``), halvings (``rejected``, ``rejected_test``) at step 0, every ``record_every``
steps and the last; an optional ``callback(step, record)`` and a progress line on stderr.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import backend, linalg, losses
from ..geometry import measures

if TYPE_CHECKING:
    from .models import MetricModel
    from .sites import Sites

__all__ = ["FlowError", "StepControl", "Trajectory", "integrate"]


class FlowError(RuntimeError):
    """A flow could not take a step that keeps every metric valid (finite, Hermitian, positive
    definite with a margin).  ``step`` is the step that failed; ``result`` (set by the flow
    entry points) holds the steps done, as the Dataset the flow would have returned."""

    def __init__(self, message: str, *, step: int | None = None, trajectory: Trajectory | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.trajectory = trajectory
        self.result = None


def _positive_real(value, name, what="a positive finite number"):
    """float(value) for a real number in (0, inf); TypeError for a non-number (bools too),
    ValueError for NaN, inf, <= 0 or an integer too large for a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise TypeError(f"{name} must be {what} (a number); got {value!r}")
    try:
        v = float(value)
    except OverflowError:
        v = math.inf
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be {what} (a number); got {value!r}") from exc
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be {what}; got {value!r}")
    return v


@dataclasses.dataclass(frozen=True)
class StepControl:
    """How steps are taken (module docstring).  Validated on construction."""

    lr: float = 1.0
    adaptive: bool = True
    grow: float = 1.25
    lr_max: float = math.inf
    normalize: bool = False
    clip: float | None = None
    max_halvings: int = 40

    def __post_init__(self):
        object.__setattr__(self, "lr", _positive_real(self.lr, "lr", "a positive finite learning rate"))
        if self.clip is not None:
            object.__setattr__(self, "clip", _positive_real(self.clip, "clip"))
        grow = _positive_real(self.grow, "grow")
        if grow < 1:
            raise ValueError(f"grow must be >= 1; got {self.grow!r}")
        object.__setattr__(self, "grow", grow)
        lr_max = math.inf if self.lr_max == math.inf else _positive_real(self.lr_max, "lr_max", "positive (inf: no bound)")
        object.__setattr__(self, "lr_max", lr_max)
        for flag in ("adaptive", "normalize"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"{flag} must be True or False; got {getattr(self, flag)!r}")
        mh = self.max_halvings
        if isinstance(mh, bool) or not isinstance(mh, int) or not 0 <= mh <= 1000:
            raise ValueError(f"max_halvings must be an integer in [0, 1000]; got {mh!r}")

    def describe(self) -> dict:
        d = dataclasses.asdict(self)
        d["lr_max"] = None if math.isinf(self.lr_max) else self.lr_max
        return d


MAX_STEPS = 10**9
"""More steps than any flow can take (10^9 steps of the cheapest step, ~0.1 ms, are 28 hours): a
larger ``steps`` is a mistake (e.g. 10**30 ran until killed), refused rather than run."""


def check_steps(steps: int, name: str = "steps") -> int:
    """``steps`` as an int in [0, MAX_STEPS]; TypeError for a non-integer (bools too)."""
    if isinstance(steps, bool) or not isinstance(steps, int) and not (hasattr(steps, "__index__")):
        raise TypeError(f"{name} must be a non-negative integer; got {steps!r}")
    steps = int(steps.__index__())
    if not 0 <= steps <= MAX_STEPS:
        raise ValueError(f"{name} must be an integer in [0, {MAX_STEPS:.0e}] (mfarray.flows.integrate.MAX_STEPS); "
                         f"got {steps!r}")
    return steps


@dataclasses.dataclass
class Trajectory:
    """What the integrator hands back: records along ``step`` and the last accepted state."""

    history: dict
    theta: object
    train: linalg.Metrics
    test: linalg.Metrics | None
    steps_done: int


def _sigma_recorder(sites):
    """det -> sigma (B.11) at a Sites (kappa of the metric itself), or None without |Omega|^2."""
    if sites is None or sites.omega2 is None:
        return lambda m: None
    sigma_at = measures.sigma_of(sites.omega2, sites.weight)
    return lambda m: float(sigma_at(m.det))


def _frobenius_rows(rows):
    """Per-point Frobenius norms (N,) of Hermitian matrices given by real rows (an isometry)."""
    xp = backend.namespace(rows)
    return xp.sqrt(xp.sum(rows * rows, axis=0))


def _clip(G, clip):
    xp = backend.namespace(G)
    norm = _frobenius_rows(G)
    return G * xp.minimum(1.0, clip / xp.where(norm > 0, norm, 1.0))


class _Progress:
    def __init__(self, steps, enabled):
        self.steps, self.enabled = steps, enabled
        self.start = self.last = time.perf_counter()

    def __call__(self, step, rec, final=False):
        if not self.enabled:
            return
        now = time.perf_counter()
        if not final and now - self.last < 1.0:
            return
        self.last = now
        sig = rec.get("sigma_train")
        extra = "" if sig is None else f" sigma_train {sig:.4g}"
        if rec.get("sigma_test") is not None:
            extra += f" sigma_test {rec['sigma_test']:.4g}"
        print(f"\rflow step {step}/{self.steps} loss {rec['loss']:.4g}{extra} lr {rec['lr']:.3g} "
              f"[{now - self.start:.1f} s]", end="\n" if final else "", file=sys.stderr, flush=True)


def integrate(model: MetricModel, loss: losses.Loss, data: losses.LossData, control: StepControl, steps: int,
              train_sites: Sites, test_sites: Sites | None = None, *, record_every: int = 1,
              callback: Callable | None = None, progress: bool = False) -> Trajectory:
    """Run ``steps`` steps of gradient descent of ``model`` on ``loss`` (module docstring).

    model : a :class:`~mfarray.flows.models.MetricModel` (``init``, ``metrics``, ``line``) on
        real coordinate rows (k*k, N + M) of the train metrics followed by the test metrics
        (:func:`mfarray.linalg.to_rows`), factorised together.
    data : the loss data of the train points; train_sites / test_sites : their
        :class:`~mfarray.flows.sites.Sites` (sigma is recorded where they have |Omega|^2).
    Returns a :class:`Trajectory`; raises :class:`FlowError` (with ``.trajectory``).
    """
    theta = model.init()
    k, n = train_sites.k, train_sites.n
    both = linalg.metrics_rows(model.metrics(theta), k)  # train columns, then test columns
    m = linalg.require_valid(both.take(slice(0, n)), "the initial train metric")
    mt = None if test_sites is None else linalg.require_valid(both.take(slice(n, None)), "the initial test metric")
    total = functools.partial(losses.total, loss)  # dispatches to loss.total_at for built-ins
    values = total(m, data)
    history = {k: [] for k in ("step", "loss", "sigma_train", "sigma_test", "lr", "rejected", "rejected_test")}
    report = _Progress(steps, progress)
    sigma_train, sigma_test = _sigma_recorder(train_sites), _sigma_recorder(test_sites)

    columns = [history[key] for key in ("step", "loss", "sigma_train", "sigma_test", "lr", "rejected",
                                        "rejected_test")]

    def record(step, loss_value, rate, rejected, rejected_test):
        row = (step, loss_value, sigma_train(m), None if mt is None else sigma_test(mt), rate, rejected,
               rejected_test)
        for column, v in zip(columns, row):
            column.append(v)
        if callback is not None or progress:
            rec = dict(zip(history, row))
            if callback is not None:
                callback(step, rec)
            report(step, rec, final=step == steps)

    record(0, values, 0.0, 0, 0)
    current = values
    rate, floor = control.lr, control.lr * 2.0 ** -control.max_halvings
    pending = [0, 0]
    last_size = 0.0
    for step in range(1, steps + 1):
        G = losses.gradient_rows(loss, m, data)
        if control.clip is not None:
            G = _clip(G, control.clip)
        metrics_at, theta_at = model.line(theta, both.rows, G)
        scale = 1.0
        if control.normalize:
            g1 = metrics_at(1.0)
            biggest = float(backend.to_numpy(backend.namespace(g1).max(_frobenius_rows(g1[:, :n] - m.rows))))
            scale = 1.0 / biggest if biggest > 0 else 0.0
        rejected = rejected_test = 0
        while True:
            size = rate * scale
            g_s = metrics_at(size)
            both_s = linalg.metrics_rows(g_s, k)  # train and test metrics factorised in one pass
            m_s = both_s.take(slice(0, n))
            mt_s = None if test_sites is None else both_s.take(slice(n, None))
            ok = both_s.all_valid
            if not ok and mt_s is not None and m_s.all_valid:
                rejected_test += 1
            trial_value = None
            if ok:
                trial_value = total(m_s, data)
                ok = trial_value <= current or not control.adaptive
            if ok:
                break
            rejected += 1
            rate *= 0.5
            if rejected > control.max_halvings:
                why = ("keeps every train and test metric valid (finite, Hermitian, positive definite with "
                       f"lambda_min >= {linalg.MARGIN:g} lambda_max)") + (" and decreases the loss" if control.adaptive else "")
                if step > 1 and (step - 1) % record_every:  # the steps done end the record, as in a full run
                    record(step - 1, current, last_size, *pending)
                raise FlowError(
                    f"step {step}: no step size down to {size:.3g} {why}; the flow cannot continue "
                    f"(lower lr, enable clip or normalize); the {step - 1} steps done are in error.result",
                    step=step, trajectory=Trajectory(history, theta, m, mt, step - 1))
        theta, both, m, mt, current, last_size = theta_at(size), both_s, m_s, mt_s, trial_value, size
        pending[0] += rejected
        pending[1] += rejected_test
        if step % record_every == 0 or step == steps:
            record(step, current, size, *pending)
            pending = [0, 0]
        if control.adaptive:
            rate = min(rate * control.grow, control.lr_max)
        elif rate < floor and step < steps:
            if step % record_every:  # the steps done end the record, as in a full run
                record(step, current, size, *pending)
            raise FlowError(
                f"step {step}: the step size has collapsed to {rate:.3g} (< lr 2^-{control.max_halvings}): "
                "the metrics are at the edge of validity and fixed steps cannot move them; use "
                f"adaptive=True or a smaller lr; the {step} steps done are in error.result",
                step=step, trajectory=Trajectory(history, theta, m, mt, step))
    return Trajectory(history, theta, m, mt, steps)
