"""The frozen-kernel (infinite-width) metric flow, eq. (2.12), with prediction at test points.

Discrete time, train points x' in B:

    g(x) <- g(x) - lr * sum_{x'} Theta(x, x') . dl/dg(x')          (2.12)

with the Kronecker metric-NTK Theta_{ijkl} = delta_ik delta_jl k(x, x') of a scalar kernel
(2.23), or any kernel operator with a ``matvec`` over trailing component axes.  The flow is
linear in the dual coefficients A(t) = sum over steps of lr_n dl/dg(x', t_n), so a test point
follows without re-running the flow (the kernel's "duality frame", §2.2):

    g_test(t) = g_test(0) - Theta(test, train) A(t).

Metrics are complex Hermitian (N, k, k) in ONE chart for all train and test points (the flow
refuses mixed charts: components of different coordinate systems cannot be added).  Every
accepted step keeps all train metrics finite and positive definite (the step is shortened
until it does, or the flow stops with :class:`FlowError`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import xarray as xr

from .. import backend, losses
from ..kernels.features import patch_features
from ..kernels.operators import acts_componentwise, as_operator
from ..pointset import sigma_measure
from .guard import FlowError, positive_definite


@dataclasses.dataclass(frozen=True)
class StepControl:
    """How steps are taken.

    lr : initial learning rate (the paper's fixed step when ``adaptive=False``).
    adaptive : backtracking on the loss: a step that increases the total loss is halved and
        retried; an accepted step grows the rate by ``grow`` (up to ``lr_max``).
    normalize : the paper's "normalised updates" (§3.2): the update is divided by its largest
        per-point Frobenius norm, so lr is the largest metric change per step.
    clip : clip the per-point Frobenius norm of dl/dg at this value (on the dual side, so test
        predictions stay exact); None for no clipping.
    max_halvings : shortenings tried before a step is declared impossible.
    """

    lr: float
    adaptive: bool = False
    grow: float = 1.25
    lr_max: float = float("inf")
    normalize: bool = False
    clip: float | None = None
    max_halvings: int = 40

    def __post_init__(self):
        if not (np.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive finite learning rate; got {self.lr!r}")
        if self.clip is not None and not self.clip > 0:
            raise ValueError(f"clip must be positive or None; got {self.clip!r}")
        if self.grow < 1:
            raise ValueError(f"grow must be >= 1; got {self.grow!r}")


def single_chart(*datasets):
    charts = set()
    for ds in datasets:
        if ds is None:
            continue
        pairs = np.unique(np.stack([backend.to_numpy(ds["patch"].data), backend.to_numpy(ds["elim"].data)], 1), axis=0)
        charts.update(map(tuple, pairs.tolist()))
    if len(charts) > 1:
        raise ValueError(
            f"train/test metrics are in {len(charts)} different charts {sorted(charts)[:4]}...: their "
            "components cannot be added.  Use mfarray.select_chart (rejection sampling) or "
            "mfarray.express_in_chart (transform every point) so all points share one chart"
        )
    return charts.pop()


def kernel_inputs(kernel, ds, features=None):
    """What a kernel is evaluated on: homogeneous points for FS kernels, else features(z)."""
    z = backend.to_numpy(ds["z"].data)
    func = getattr(kernel, "func", kernel)
    if features is None:
        if getattr(func, "input_kind", "features") == "points":
            return z
        features = patch_features
    return features(z)


def _frob(a):
    return np.sqrt(np.sum(np.abs(a) ** 2, axis=(-2, -1)))


def kernel_flow(train: xr.Dataset, kernel, *, steps: int, lr: float, loss="sigma", test: xr.Dataset | None = None,
                adaptive: bool = False, normalize: bool = False, clip: float | None = None,
                features=None, method: str = "dense", operator_options: dict | None = None,
                g0=None, g0_test=None, target=None, test_every: int = 1,
                max_halvings: int = 40) -> xr.Dataset:
    """Run the frozen-kernel flow (2.12) on the train points; predict test metrics.

    Parameters
    ----------
    train, test : point sets (``mfarray.sample_points`` ...) in one chart.
    kernel : scalar kernel function (hyper-parameters bound, e.g. functools.partial(gaussian_fs,
        sigma=0.3)) or a kernel operator with ``matvec``; FS kernels see points z, others see
        ``features(z)`` (default: real/imag parts of z in the patch normalisation).
    steps, lr : number of steps and learning rate (see :class:`StepControl` for the options).
    loss : "sigma" (B.11, kappa fixed at the initial metric), "sigma_dynamic" (kappa of the
        current metric), "sigma_squared" ((1 - eta)^2, B.14), or a ``losses.PointwiseLoss``.
    method, operator_options : how a kernel function becomes an operator
        (:func:`mfarray.kernels.operators.as_operator`): "dense", "blockwise" (tiles recomputed
        every step, memory ~ tiles), "zarr", ...; options such as ``{"cache_bytes": 2**30}``
        (blockwise: keep tiles up to 1 GiB, after the first step as fast as dense at 10^4
        points), ``block``, ``workers`` or ``path`` (zarr; the test store is ``path + ".test"``)
        go to both train and test operators.
    g0, g0_test : initial metrics (N, k, k) in the points' chart; default g_FS.
    target : target metrics (N, k, k) for loss="mse".

    Returns an ``xarray.Dataset`` with ``sigma_train`` (step), ``sigma_test`` (step) when test is
    given, ``loss`` (step), ``lr`` (step), ``g_train`` and ``g_test`` (final metrics) and the
    dual coefficients ``dual`` (train point, row, col).  Step 0 is the initial metric.
    """
    if not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer; got {steps!r}")
    control = StepControl(lr=lr, adaptive=adaptive, normalize=normalize, clip=clip,
                          max_halvings=max_halvings)
    single_chart(train, test)
    g = np.array(backend.to_numpy(train["g_fs"].data if g0 is None else g0), dtype=np.complex128)
    if not np.all(positive_definite(g)):
        raise ValueError("g0 must be finite and positive definite at every train point")
    loss_fn = resolve_loss(loss)
    data = losses.make_loss_data(train, g, target=target)
    if loss_fn.name == "mse" and data.target is None:
        raise ValueError("loss='mse' needs target metrics: pass target=(N, k, k)")
    x_train = None if hasattr(kernel, "matvec") else kernel_inputs(kernel, train, features)
    options = dict(operator_options or {})
    K = as_operator(kernel, x_train, x_train, method=method, **options)
    if tuple(K.shape) != (g.shape[0], g.shape[0]):
        raise ValueError(f"kernel operator has shape {tuple(K.shape)}; the train set needs {(g.shape[0],) * 2}")
    if test is not None:
        gt0 = np.array(backend.to_numpy(test["g_fs"].data if g0_test is None else g0_test), dtype=np.complex128)
        if hasattr(kernel, "matvec"):
            raise ValueError("with test points, pass a kernel function (an operator only covers the train points)")
        if "path" in options:  # one Zarr store per operator
            options["path"] = f"{options['path']}.test"
        K_test = as_operator(kernel, kernel_inputs(kernel, test, features), x_train, method=method, **options)
    dual = np.zeros_like(g)
    rate = control.lr
    history = {"loss": [], "sigma_train": [], "lr": [], "rejected": []}
    if test is not None:
        history["sigma_test"] = []

    def record(g, rate, rejected, step):
        history["loss"].append(losses.total(loss_fn, g, data))
        history["sigma_train"].append(sigma_measure(train, g))
        history["lr"].append(rate)
        history["rejected"].append(rejected)
        if test is not None:
            if step % test_every == 0 or step == steps:
                history["sigma_test"].append(sigma_or_nan(test, gt0 - metric_matvec(K_test, dual)))
            else:
                history["sigma_test"].append(np.nan)

    record(g, 0.0, 0, 0)
    current = history["loss"][-1]
    for step in range(1, steps + 1):
        grad = loss_fn.gradient(g, data)
        if control.clip is not None:
            norm = _frob(grad)
            grad = grad * np.minimum(1.0, control.clip / np.where(norm > 0, norm, 1.0))[:, None, None]
        update = metric_matvec(K, grad)
        scale = 1.0
        if control.normalize:
            biggest = float(np.max(_frob(update)))
            scale = 1.0 / biggest if biggest > 0 else 0.0
        rejected = 0
        while True:
            step_size = rate * scale
            trial = g - step_size * update
            ok = bool(np.all(positive_definite(trial)))
            if ok and control.adaptive:
                trial_loss = losses.total(loss_fn, trial, data)
                ok = trial_loss <= current
            if ok:
                break
            rejected += 1
            rate *= 0.5
            if rejected > control.max_halvings:
                raise FlowError(
                    f"step {step}: no step size down to {rate:.3g} keeps every metric positive definite"
                    + (" and decreases the loss" if control.adaptive else "")
                    + "; the flow cannot continue (lower lr, enable clip or normalize)"
                )
        g = trial
        dual = dual + step_size * grad
        record(g, step_size, rejected, step)
        current = history["loss"][-1]
        if control.adaptive:
            rate = min(rate * control.grow, control.lr_max)
    return _result(train, test, g, dual, history, metric_matvec(K_test, dual) if test is not None else None,
                   gt0 if test is not None else None)


def metric_matvec(K, G):
    """``Theta . G`` for Hermitian metrics G (N, k, k) -> (N, k, k).

    A scalar (Kronecker, eq. 2.23) real kernel acts on each component alike, so it is applied
    to the k^2 real coordinates of G (:func:`losses.hermitian_to_real`, an isometry) rather
    than to its 2 k^2 real and imaginary parts: half the mat-vec columns, and an exactly
    Hermitian result.  Other operators get G itself."""
    if acts_componentwise(K):
        r = K.matvec(losses.hermitian_to_real(G))
        if not np.iscomplexobj(r):
            return losses.real_to_hermitian(r, G.shape[-1])
    return K.matvec(G)


def resolve_loss(loss):
    """A loss object from a name ("sigma", "sigma_dynamic", "sigma_squared", "mse") or itself."""
    if loss == "sigma":
        return losses.sigma_loss()
    if loss == "sigma_dynamic":
        return losses.sigma_loss_dynamic()
    if loss == "sigma_squared":
        return losses.sigma_squared_loss()
    if loss == "mse":
        return losses.mse_loss()
    if hasattr(loss, "gradient") and hasattr(loss, "value"):
        return loss
    raise ValueError(f"loss must be 'sigma', 'sigma_dynamic', 'sigma_squared' or a loss object with value/gradient; got {loss!r}")


def sigma_or_nan(ds, g):
    try:
        return sigma_measure(ds, g)
    except ValueError:
        return np.nan


def _result(train, test, g, dual, history, test_shift, gt0):
    step = np.arange(len(history["loss"]))
    data = {
        "loss": ("step", np.asarray(history["loss"])),
        "sigma_train": ("step", np.asarray(history["sigma_train"])),
        "lr": ("step", np.asarray(history["lr"])),
        "rejected": ("step", np.asarray(history["rejected"])),
        "g_train": (("point", "row", "col"), g),
        "g_train_initial": (("point", "row", "col"), backend.to_numpy(train["g_fs"].data)),
        "dual": (("point", "row", "col"), dual),
    }
    if test is not None:
        g_test = gt0 - test_shift
        data["sigma_test"] = ("step", np.asarray(history["sigma_test"]))
        data["g_test"] = (("test_point", "row", "col"), g_test)
        data["g_test_initial"] = (("test_point", "row", "col"), gt0)
    return xr.Dataset(data, coords={"step": step})
