"""The frozen-kernel (infinite-width) metric flow, eq. (2.12), with prediction at test points.

Discrete time, train points x' in B:

    g(x) <- g(x) - lr * sum_{x'} Theta(x, x') . dl/dg(x')          (2.12)

with the Kronecker metric-NTK Theta_{ijkl} = delta_ik delta_jl k(x, x') of a scalar kernel
(2.23), or any kernel operator with a ``matvec`` over trailing component axes.  The flow is
linear in the dual coefficients A(t) = sum over steps of lr_n dl/dg(x', t_n), so a test point
follows without re-running the flow (the kernel's "duality frame", §2.2):

    g_test(t) = g_test(0) - Theta(test, train) A(t)

(:class:`~mfarray.flows.models.KernelModel`; :func:`~mfarray.flows.evaluate.predict` does the
same for any point set after the flow).  Metrics are complex Hermitian (N, k, k) in ONE chart
for all train and test points.  Steps, the validity guard and the record are the one
integrator's (:mod:`mfarray.flows.integrate`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import xarray as xr

from .. import backend, linalg, losses
from ..kernels.checks import NonFiniteKernelError
from ..kernels.features import patch_features
from ..kernels.operators import as_operator
from ..kernels.spec import as_kernel
from .integrate import FlowError, StepControl, check_steps, integrate
from .models import KernelModel
from .results import flow_result
from .sites import materialize

if TYPE_CHECKING:
    from ..kernels.operators import KernelOperator
    from ..kernels.spec import Kernel

__all__ = ["kernel_flow", "kernel_inputs", "kernel_spec", "resolve_loss"]

Array = Any  # a NumPy, CuPy or Dask array


def resolve_loss(loss: str | losses.Loss) -> losses.Loss:
    """A loss object from a name ("sigma", "sigma_dynamic", "sigma_squared", "mse") or itself."""
    named = {"sigma": losses.sigma_loss, "sigma_dynamic": losses.sigma_loss_dynamic,
             "sigma_squared": losses.sigma_squared_loss, "mse": losses.mse_loss}
    if isinstance(loss, str) and loss in named:
        return named[loss]()
    if hasattr(loss, "gradient") and hasattr(loss, "value"):
        return loss
    raise ValueError(f"loss must be 'sigma', 'sigma_dynamic', 'sigma_squared', 'mse' or a loss object with "
                     f"value/gradient; got {loss!r}")


def kernel_spec(kernel: Callable[..., Array]) -> Kernel:
    """The :class:`~mfarray.kernels.spec.Kernel` of a kernel argument, refusing opaque callables
    (a flow must know whether to feed a kernel points or features)."""
    spec = as_kernel(kernel)
    if spec.opaque:
        raise TypeError(
            f"kernel {spec.name} is a plain callable: a flow cannot tell whether it reads homogeneous points "
            "or real features.  Wrap it once: mfarray.kernels.Kernel(fn, inputs='points') (or 'features')"
        )
    return spec


def kernel_inputs(kernel: Callable[..., Array], z: Array, features: Callable[[Array], Array] | None = None) -> Array:
    """What a kernel is evaluated on: homogeneous points z for point kernels (FS distance),
    else ``features(z)`` (default :func:`~mfarray.kernels.features.patch_features`)."""
    if kernel_spec(kernel).inputs == "points":
        return z
    return (features or patch_features)(z)


def _operators(kernel, train, test, features, method, options):
    """Train-train and test-train operators, and the JSON record of the kernel."""
    options = dict(options or {})
    if isinstance(kernel, tuple):
        return _operator_pair(kernel, train, test)
    if hasattr(kernel, "matvec"):
        if test is not None:
            raise ValueError("with test points, pass a kernel function or a pair of operators (K_train_train, "
                             "K_test_train): one operator only covers the train points")
        K = as_operator(kernel)
        if tuple(K.shape) != (train.n, train.n):
            raise ValueError(f"kernel operator has shape {tuple(K.shape)}; the train set needs {(train.n,) * 2}")
        return K, None, {"name": type(kernel).__name__, "operator": True}
    spec = kernel_spec(kernel)
    if method == "factored":
        raise ValueError(
            f"method='factored' needs a low-rank feature map phi(x) -> (n, rank), but kernel_flow takes a kernel "
            f"k(x1, x2) (here {spec.name}), and no kernel spec comes with a factorisation: use method='dense' (the "
            "default), 'blockwise' or 'zarr'; for a feature map, pass "
            "mfarray.kernels.FactoredOperator(phi(x_train)) as the kernel (train points only)")
    x_train = kernel_inputs(spec, train.z, features)
    K = as_operator(spec, x_train, x_train, method=method, **options)
    K_test = None
    if test is not None:
        if "path" in options:  # one Zarr store per operator
            options["path"] = f"{options['path']}.test"
        K_test = as_operator(spec, kernel_inputs(spec, test.z, features), x_train, method=method, **options)
    return K, K_test, spec.describe()


def _operator_pair(pair, train, test):
    """``(K_train_train, K_test_train)`` given as operators: checked against the point sets."""
    if len(pair) != 2 or not all(op is None or hasattr(op, "matvec") for op in pair) or pair[0] is None:
        raise TypeError("kernel as a tuple must be a pair of operators (K_train_train, K_test_train) with matvec "
                        f"(K_test_train None without test points); got {tuple(type(op).__name__ for op in pair)}")
    K, K_test = as_operator(pair[0]), pair[1]
    if tuple(K.shape) != (train.n, train.n):
        raise ValueError(f"kernel[0] (K_train_train) has shape {tuple(K.shape)}; the train set needs "
                         f"{(train.n,) * 2}")
    if test is None and K_test is not None:
        raise ValueError("kernel[1] (K_test_train) was given without test points: pass test=, or (K, None)")
    if test is not None:
        if K_test is None:
            raise ValueError("with test points, kernel[1] must be the (n_test, n_train) operator K_test_train; "
                             "got None")
        K_test = as_operator(K_test)
        if tuple(K_test.shape) != (test.n, train.n):
            raise ValueError(f"kernel[1] (K_test_train) has shape {tuple(K_test.shape)}; the test and train sets "
                             f"need {(test.n, train.n)}")
    return K, K_test, {"name": type(K).__name__, "operator": True, "pair": True}


def kernel_flow(train: xr.Dataset, kernel: Callable[..., Array] | KernelOperator | tuple, *, steps: int,
                lr: float = 1.0, loss: str | losses.Loss = "sigma_squared", test: xr.Dataset | None = None,
                adaptive: bool = True, normalize: bool = False, clip: float | None = None, grow: float = 1.25,
                max_halvings: int = 40, features: Callable[[Array], Array] | None = None, method: str = "dense",
                operator_options: dict | None = None, g0: Array | None = None, g0_test: Array | None = None,
                target: Array | None = None, callback: Callable[[int, dict], Any] | None = None,
                progress: bool = False) -> xr.Dataset:
    """Run the frozen-kernel flow (2.12) on the train points; predict test metrics.

    Parameters
    ----------
    train, test : point sets (``mfarray.sample_points`` ..., lazy or computed) in one chart.
    kernel : a kernel spec (``mfarray.kernels.gaussian_fs``, ``relu_ntk``, ``delta``, ...), with
        hyper-parameters bound (``functools.partial(gaussian_fs, sigma=0.3)`` or ``.bind``), or
        a kernel operator with ``matvec`` (train points only), or a pair of operators
        ``(K_train_train, K_test_train)`` of shapes (n_train, n_train) and (n_test, n_train)
        (``K_test_train`` None without test points) -- e.g. a frozen empirical metric-NTK
        (:func:`mfarray.flows.evolving.metric_ntk_operator`) that predicts test points.  Point
        kernels see z, feature kernels ``features(z)`` (default: real/imag parts of z in the
        patch normalisation).
    steps : number of steps.
    lr, adaptive, grow, normalize, clip, max_halvings : step control
        (:class:`~mfarray.flows.integrate.StepControl`).  Default: backtracking from lr = 1.
        The loss is the MC mean (1/N) sum w l with the weights as given, so a step scales with
        mean(w) (a subset taken with ``isel`` keeps its superset's weights; ``normalize=True``
        steps do not depend on it; docs/paper-notes.md, note 17).
    loss : "sigma_squared" ((1 - eta)^2, B.14; the default, see docs/paper-notes.md: with the
        paper's |1 - eta| (B.11) no step control gets the Delta kernel past a train gain of
        ~14), "sigma" (B.11, kappa fixed at the initial metric), "sigma_dynamic", "mse" (needs
        ``target``) or a ``losses.PointwiseLoss``.
    method, operator_options : how the kernel becomes an operator
        (:func:`mfarray.kernels.operators.as_operator`): "dense", "blockwise", "zarr", ...
        with options such as ``{"cache_bytes": 2**30}``, ``block``, ``workers``, ``path``
        (zarr; the test store is ``path + ".test"``), for both train and test operators.
    g0, g0_test : initial metrics (N, k, k) in the points' chart; default g_FS.
    target : target metrics (N, k, k) for loss="mse".
    callback : ``callback(step, record)`` after every recorded step; progress : a progress
        line on stderr.

    Returns the result Dataset of :mod:`mfarray.flows.results` with the dual coefficients
    ``dual`` (point, row, col).  Every returned metric, train and test, is valid
    (:mod:`mfarray.linalg`); a step that cannot keep them valid raises :class:`FlowError`,
    whose ``result`` holds the steps done.
    """
    steps = check_steps(steps)
    if operator_options is not None and not isinstance(operator_options, Mapping):
        raise TypeError(f"operator_options must be a dict of options of the operator (e.g. {{'block': 512}}) or None; "
                        f"got {type(operator_options).__name__}")
    if features is not None and not callable(features):
        raise TypeError(f"features must be a function z -> (N, d) real features (default patch_features) or None; "
                        f"got {type(features).__name__}")
    control = StepControl(lr=lr, adaptive=adaptive, normalize=normalize, clip=clip, grow=grow,
                          max_halvings=max_halvings)
    loss_fn = resolve_loss(loss)
    tr, te = materialize(train, test, g0=g0, g0_test=g0_test)
    data = losses.loss_data(tr.omega2, tr.weight, tr.g0, target=target)
    if loss_fn.name == "mse" and data.target is None:
        raise ValueError("loss='mse' needs target metrics: pass target=(N, k, k)")
    try:
        K, K_test, kernel_record = _operators(kernel, tr, te, features, method, operator_options)
    except NonFiniteKernelError as exc:
        raise _where(exc, tr, te) from None
    model = KernelModel(K, K_test, tr.m0.rows, None if te is None else te.m0.rows, k=tr.k)
    attrs = {"flow": "frozen-kernel flow (2.12)", "model": "kernel", "loss": loss_fn.name,
             "initial": "g_fs" if g0 is None else "g0",
             "kernel": json.dumps(kernel_record), "step_control": json.dumps(control.describe()),
             "features": getattr(features or patch_features, "__qualname__", repr(features)),
             "method": method, "operator_options": json.dumps(_json_safe(operator_options or {})),
             "operators": json.dumps({name: op.describe() for name, op in (("train", K), ("test", K_test))
                                      if hasattr(op, "describe")}, default=repr)}

    def result(trajectory):
        dual = (("point", "row", "col"), backend.to_numpy(linalg.from_rows(trajectory.theta, tr.k)))
        return flow_result(trajectory, tr, te, model_vars={"dual": dual}, attrs=attrs, steps=steps)

    try:
        trajectory = integrate(model, loss_fn, data, control, steps, tr, te, callback=callback, progress=progress)
    except FlowError as err:
        err.result = result(err.trajectory)
        raise
    except NonFiniteKernelError as exc:  # a lazily evaluated (blockwise) kernel
        raise _where(exc, tr, te) from None
    return result(trajectory)


def _where(exc, tr, te):
    """The kernel's non-finite-values error, saying which operator is which in this flow."""
    ops = f"the ({tr.n}, {tr.n}) operator is train x train"
    if te is not None:
        ops += f", the ({te.n}, {tr.n}) one test x train"
    return NonFiniteKernelError(f"{exc}; in this kernel_flow {ops}")


def _json_safe(options):
    return {str(k): (v if isinstance(v, (int, float, str, bool, type(None))) else repr(v)) for k, v in options.items()}
