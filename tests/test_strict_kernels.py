"""Issue 9 (kernel part): strict kernel inputs, no NaN passed on, stores that tell kernels apart.

Each test is one finding of the issue: hyper-parameters checked against a declared domain when
bound or called (naming the kernel and the parameter), non-finite kernel values refused with
their own error (naming the kernel and the tile) instead of a misleading "not symmetric",
tiny widths computed exactly, complex features refused, ``method="factored"`` explained, a
non-finite test set refused, callable instances fingerprinted, and float64 kernel stores by
default.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import mfarray as mf
from mfarray.kernels import (Kernel, NonFiniteKernelError, cosine_ntk, cosine_ntk_empirical, delta,
                             gaussian_fs, gaussnet_nngp, gaussnet_ntk, gaussnet_ntk_empirical, patch_features,
                             relu_kernels, relu_kernels_diag, relu_nngp, relu_ntk, relu_ntk_diag, rescaled)
from mfarray.kernels.operators import BlockwiseOperator, ZarrOperator, as_operator

# the NaN kernels below are made with np.sqrt of negative numbers on purpose
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered in sqrt:RuntimeWarning")


@pytest.fixture(scope="module")
def chart():
    """About 70 Fermat-quintic points in one chart."""
    return mf.select_chart(mf.sample_points(mf.fermat_quintic(), 1500, seed=0)).compute()


@pytest.fixture(scope="module")
def z(chart):
    return chart.z.values[:12]


@pytest.fixture(scope="module")
def x(z):
    return patch_features(z)


def sets(chart):
    return chart.isel(point=slice(0, 40)), chart.isel(point=slice(40, 60))


# ------------------------------------------------------------ 1. hyper-parameter domains
SIGMA = {"sigma_w": 1.0}  # the required hyper-parameter of the cosine and Gauss-net kernels

# (kernel, required hyper-parameters, parameter, bad value, exception)
BAD = []
for _k in (relu_ntk, relu_nngp):
    BAD += [(_k, {}, "sigma_w", np.inf, ValueError), (_k, {}, "sigma_w", np.nan, ValueError),
            (_k, {}, "sigma_w", -1.0, ValueError), (_k, {}, "sigma_w", 1e200, ValueError),
            (_k, {}, "sigma_w", "1", TypeError), (_k, {}, "sigma_w", True, TypeError),
            (_k, {}, "sigma_w", 1j, TypeError), (_k, {}, "sigma_b", np.nan, ValueError),
            (_k, {}, "sigma_b", -np.inf, ValueError), (_k, {}, "depth", -1, ValueError),
            (_k, {}, "depth", True, TypeError), (_k, {}, "depth", 1.5, TypeError),
            (_k, {}, "depth", 10**9, ValueError), (_k, {}, "refine_tol", np.nan, ValueError),
            (_k, {}, "block_rows", 0, ValueError), (_k, {}, "n_threads", 0.5, TypeError),
            (_k, {}, "dtype", np.int64, TypeError)]
BAD += [(cosine_ntk, {}, "sigma_w", np.nan, ValueError), (cosine_ntk, {}, "sigma_w", -1.0, ValueError),
        (cosine_ntk, {}, "sigma_w", np.inf, ValueError), (cosine_ntk, {}, "sigma_w", None, TypeError),
        (cosine_ntk, SIGMA, "amplitude", np.inf, ValueError), (cosine_ntk, SIGMA, "amplitude", np.nan, ValueError),
        (cosine_ntk, SIGMA, "normalized", "yes", TypeError), (cosine_ntk, SIGMA, "variant", "gauss", ValueError)]
for _k in (gaussnet_nngp, gaussnet_ntk):
    BAD += [(_k, {}, "sigma_w", np.nan, ValueError), (_k, {}, "sigma_w", np.inf, ValueError),
            (_k, SIGMA, "sigma_b", np.inf, ValueError), (_k, SIGMA, "sigma_b", -1.0, ValueError),
            (_k, SIGMA, "amplitude", np.nan, ValueError)]
BAD += [(gaussnet_nngp, SIGMA, "sigma_a", np.nan, ValueError), (gaussnet_ntk, SIGMA, "normalized", 1, TypeError)]
BAD += [(gaussian_fs, {}, "sigma", v, e) for v, e in ((np.nan, ValueError), (np.inf, ValueError), (0.0, ValueError),
                                                    (-1e-3, ValueError), ("0.3", TypeError), (True, TypeError))]
BAD += [(gaussian_fs, {"sigma": 0.3}, "squared", "yes", TypeError),
        (gaussian_fs, {"sigma": 0.3}, "method", "fast", ValueError)]


def _id(case):
    k, _, name, value, _ = case
    return f"{k.name}-{name}={value!r}"


@pytest.mark.parametrize("case", BAD, ids=[_id(c) for c in BAD])
def test_bad_hyper_parameters_are_refused_when_bound_and_when_called(case, x, z):
    k, required, name, value, exc = case
    data = z if k.inputs == "points" else x
    match = rf"{k.name}: hyper-parameter {name} must be"
    with pytest.raises(exc, match=match):
        k.bind(**{name: value})
    with pytest.raises(exc, match=match):
        mf.kernels.as_kernel(functools.partial(k, **{name: value}))
    with pytest.raises(exc, match=match):
        k(data, data, **required, **{name: value})
    with pytest.raises(exc, match=match):
        rescaled(k, lambda v: np.ones(v.shape[0]))(data, data, **required, **{name: value})


def test_the_issue_examples_name_the_parameter(x):
    with pytest.raises(ValueError, match=r"relu_ntk: hyper-parameter sigma_w .*got inf"):
        relu_ntk(x, x, sigma_w=np.inf)
    with pytest.raises(ValueError, match=r"cosine_ntk: hyper-parameter sigma_w .*got nan"):
        cosine_ntk(x, x, sigma_w=np.nan)


@pytest.mark.parametrize("fn, kwargs, name", [
    (relu_kernels, {"sigma_w": np.inf}, "sigma_w"), (relu_kernels_diag, {"sigma_b": np.nan}, "sigma_b"),
    (relu_ntk_diag, {"depth": -2}, "depth"), (cosine_ntk_empirical, {"sigma_w": np.nan, "width": 8}, "sigma_w"),
    (cosine_ntk_empirical, {"sigma_w": 1.0, "width": 0}, "width"),
    (gaussnet_ntk_empirical, {"sigma_w": 1.0, "width": 8, "sigma_b0": np.inf}, "sigma_b0"),
])
def test_the_kernel_functions_beside_the_specs_check_the_same_domains(fn, kwargs, name, x):
    args = (x,) if fn in (relu_kernels_diag, relu_ntk_diag) else (x, x)
    with pytest.raises((TypeError, ValueError), match=name):
        fn(*args, **kwargs)


def test_good_values_of_every_kind_are_accepted_and_converted(x, z):
    K = relu_ntk(x, x, depth=np.int64(2), sigma_w=np.float32(1.5), sigma_b=np.array(0.5))
    assert np.array_equal(K, relu_ntk(x, x, depth=2, sigma_w=float(np.float32(1.5)), sigma_b=0.5))
    assert relu_ntk.bind(sigma_w=np.float32(1.5)).hyper == {"sigma_w": float(np.float32(1.5))}
    assert np.isfinite(cosine_ntk(x, x, sigma_w=1, normalized=np.bool_(True))).all()
    assert np.isfinite(gaussnet_ntk(x, x, sigma_w=2, amplitude=-3)).all()
    assert np.isfinite(relu_ntk(x, x, dtype="float32", block_rows=None, n_threads=np.int8(2))).all()


def test_overflowing_values_are_refused_never_passed_on(x):
    """Finite hyper-parameters whose kernel overflows float64: a ValueError naming the kernel."""
    with pytest.raises(NonFiniteKernelError, match=r"relu_ntk\(.*sigma_w=1e\+100.*non-finite"):
        relu_ntk(x, x, depth=5, sigma_w=1e100)
    with pytest.raises(NonFiniteKernelError, match="relu_kernels"):
        relu_kernels(x, x, depth=5, sigma_w=1e100)
    with pytest.raises(NonFiniteKernelError, match="relu_kernels_diag"):
        relu_kernels_diag(x, depth=5, sigma_w=1e100)
    with pytest.raises(NonFiniteKernelError, match="non-finite inputs: x2"):
        relu_ntk(x, np.where(np.arange(x.shape[1]) == 1, np.nan, x))
    assert issubclass(NonFiniteKernelError, ValueError)


def test_a_user_kernel_returning_nan_is_refused_by_name(z):
    k = Kernel(lambda a, b: np.full((a.shape[0], b.shape[0]), np.nan), inputs="points", name="broken")
    with pytest.raises(NonFiniteKernelError, match=r"kernel broken\(\) returned non-finite values .* 144 of 144"):
        k(z, z)
    import dask.array as da

    with pytest.raises(NonFiniteKernelError, match="broken"):
        k(da.from_array(z, chunks=(5, 5)), z).compute()


# ------------------------------------------------------------ 2. NaN inside a flow
def nan_kernel(name="sqrt_of_negative"):
    """Finite where a and b are far apart, NaN on near pairs (the diagonal): the kind of kernel
    that used to reach the symmetry check."""
    return Kernel(lambda a, b: np.sqrt(0.5 - gaussian_fs(a, b, sigma=0.3)), inputs="points", name=name)


@pytest.mark.parametrize("method, options", [("dense", None), ("blockwise", {"block": 16}),
                                             ("blockwise", {"block": 16, "symmetric": False})])
def test_nan_kernel_values_in_a_flow_are_their_own_error(chart, method, options):
    train, test = sets(chart)
    with pytest.raises(NonFiniteKernelError) as info:
        mf.kernel_flow(train, nan_kernel(), steps=2, test=test, method=method, operator_options=options)
    msg = str(info.value)
    assert "symmetric" not in msg
    assert "kernel sqrt_of_negative" in msg and "non-finite values" in msg
    assert "on the tile of rows 0:" in msg and "columns" in msg  # where
    assert "(40, 40) operator is train x train, the (20, 40) one test x train" in msg


def test_nan_kernel_values_are_refused_by_every_operator(chart, tmp_path):
    z = chart.z.values[:40]
    plain = lambda a, b: np.sqrt(0.5 - gaussian_fs(a, b, sigma=0.3))  # not a spec
    for k in (nan_kernel(), plain):
        with pytest.raises(NonFiniteKernelError, match=r"rows 0:16 \(x_out\) and columns 0:16"):
            BlockwiseOperator(k, z, z, block=16).matvec(np.ones((40, 9)))
        with pytest.raises(NonFiniteKernelError, match="non-finite"):
            as_operator(k, z, z, method="dense")
        with pytest.raises(NonFiniteKernelError, match="non-finite"):
            ZarrOperator.build(k, z, None, tmp_path / f"{id(k)}.zarr", block=16)
        import dask.array as da

        with pytest.raises(NonFiniteKernelError, match="lazy"):
            BlockwiseOperator(k, da.from_array(z, chunks=20), z, block=16).matvec(np.ones((40, 9))).compute()


def nonsymmetric(a, b):
    """Pairwise, not symmetric: k(a, b) = k_FS(a, b) w(b)."""
    w = 1 + 0.5 * np.abs(b[:, 0]) ** 2 / np.sum(np.abs(b) ** 2, axis=1)
    return gaussian_fs(a, b, sigma=0.3) * w[None, :]


def test_the_symmetry_advice_works_when_followed(chart):
    train, test = sets(chart)
    k = Kernel(nonsymmetric, inputs="points", name="skewed")
    with pytest.raises(ValueError, match=r"kernel skewed is not symmetric.*symmetric=False") as info:
        mf.kernel_flow(train, k, steps=2, test=test)
    assert "Kernel(fn, inputs=..., symmetric=False)" in str(info.value)
    declared = mf.kernel_flow(train, Kernel(nonsymmetric, inputs="points", symmetric=False), steps=2, test=test)
    optioned = mf.kernel_flow(train, k, steps=2, test=test, operator_options={"symmetric": False})
    blockwise = mf.kernel_flow(train, k, steps=2, test=test, method="blockwise",
                               operator_options={"symmetric": False, "block": 16})
    for r in (optioned, blockwise):
        np.testing.assert_allclose(r.g_test.values, declared.g_test.values, rtol=1e-12, atol=1e-15)
    assert np.isfinite(declared.sigma_test.values).all()


# ------------------------------------------------------------ 3. gaussian_fs at any width
def test_gaussian_fs_accepts_numpy_scalars(z):
    assert np.array_equal(gaussian_fs(z, z, sigma=np.float32(0.5)), gaussian_fs(z, z, sigma=float(np.float32(0.5))))
    assert np.isfinite(mf.kernels.as_kernel(functools.partial(gaussian_fs, sigma=np.float32(0.3)))(z, z)).all()


@pytest.mark.parametrize("squared", [True, False])
@pytest.mark.parametrize("sigma", [1e-200, 5e-324, 1e-160, 1e-9])
def test_tiny_widths_give_the_delta_kernel_exactly(z, sigma, squared):
    """exp(-d^2 / (2 sigma^2)) at sigma = 1e-200 used to raise ZeroDivisionError (1e-160: NaN)."""
    for method in ("gemm", "entrywise"):
        K = gaussian_fs(z, z, sigma=sigma, squared=squared, method=method)
        np.testing.assert_array_equal(K, np.eye(len(z)))


@pytest.mark.parametrize("squared", [True, False])
@pytest.mark.parametrize("sigma", [1e-3, 0.05, 0.3, 7.0, 1e300])
def test_gaussian_fs_is_the_formula_at_every_width(z, sigma, squared):
    d = mf.fs_distance(z, z, method="entrywise")
    exponent = (d / sigma) ** 2 / 2 if squared else d / (2 * sigma)
    K = gaussian_fs(z, z, sigma=sigma, squared=squared, method="entrywise")
    assert np.array_equal(K > 0, np.exp(-exponent) > 0)
    normal = K > 1e-300  # the exponent, to rounding (log(K) near 1 has absolute error eps)
    np.testing.assert_allclose(-np.log(K[normal]), exponent[normal], rtol=1e-13, atol=4e-16)
    assert np.all(np.diag(K) == 1)
    import dask.array as da

    Kd = gaussian_fs(da.from_array(z, chunks=5), z, sigma=sigma, squared=squared, method="entrywise")
    np.testing.assert_allclose(Kd.compute(), K, rtol=1e-15, atol=0)


# ------------------------------------------------------------ 4. complex features
@pytest.mark.parametrize("k, kwargs", [(relu_ntk, {}), (relu_nngp, {}), (cosine_ntk, SIGMA),
                                       (gaussnet_nngp, SIGMA), (gaussnet_ntk, SIGMA)])
def test_feature_kernels_refuse_complex_inputs(k, kwargs, z, x):
    with pytest.raises(TypeError, match=rf"{k.name} reads real features, but x1 is complex.*patch_features"):
        k(z, z, **kwargs)
    with pytest.raises(TypeError, match="x2 is complex"):
        k(x[:, :5], z, **kwargs)


@pytest.mark.parametrize("fn, kwargs", [(relu_kernels, {}), (cosine_ntk_empirical, {"sigma_w": 1.0, "width": 4}),
                                        (gaussnet_ntk_empirical, {"sigma_w": 1.0, "width": 4})])
def test_feature_functions_refuse_complex_inputs(fn, kwargs, z):
    with pytest.raises(TypeError, match="x1 is complex"):
        fn(z, z, **kwargs)
    with pytest.raises(TypeError, match="complex"):
        relu_ntk_diag(z)


def test_a_user_feature_kernel_refuses_complex_inputs(z):
    k = Kernel(lambda a, b: a @ b.T, inputs="features", name="linear")
    with pytest.raises(TypeError, match="linear reads real features"):
        k(z, z)
    assert delta(z, z).shape == (12, 12)  # kernels of points take complex z


# ------------------------------------------------------------ 5. method="factored"
def test_factored_with_a_kernel_function_is_explained(chart, x):
    train, _ = sets(chart)
    for k in (functools.partial(gaussian_fs, sigma=0.3), relu_ntk):
        with pytest.raises(ValueError, match=r"method='factored' needs a low-rank feature map.*'dense'"):
            mf.kernel_flow(train, k, steps=1, method="factored")
    for k in (relu_ntk, functools.partial(gaussian_fs, sigma=0.3), lambda a, b: a @ b.T):
        with pytest.raises(TypeError, match=r"method='factored' takes a feature map phi\(x\)"):
            as_operator(k, x, method="factored")
    with pytest.raises(ValueError, match=r"returned \(3,\) for 12 points"):
        as_operator(lambda v: np.ones(3), x, method="factored")
    op = as_operator(lambda v: v[:, :2], x, method="factored")
    np.testing.assert_allclose(op.to_dense(), x[:, :2] @ x[:, :2].T)


# ------------------------------------------------------------ 6. a non-finite test set
@pytest.mark.parametrize("var, at, match", [("g_fs", (0, 0, 0), "test.g_fs"), ("weight", (3,), "test.weight"),
                                            ("omega2", (2,), "test.omega2"), ("z", (1, 0), "test.z")])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_a_non_finite_test_set_is_refused(chart, var, at, match, value):
    train, test = sets(chart)
    bad = test.copy(deep=True)
    data = bad[var].values
    data[at] = value
    with pytest.raises(ValueError, match=match):
        mf.kernel_flow(train, functools.partial(gaussian_fs, sigma=0.3), steps=1, test=bad)


# ------------------------------------------------------------ 7. callable instances in stores
class Width:
    """A kernel object: the hyper-parameter is an attribute."""

    def __init__(self, sigma):
        self.sigma = sigma

    def __call__(self, a, b):
        return gaussian_fs(a, b, sigma=self.sigma)

    def method(self, a, b):
        return gaussian_fs(a, b, sigma=self.sigma)


class SlotWidth:
    __slots__ = ("sigma",)

    def __init__(self, sigma):
        self.sigma = sigma

    def __call__(self, a, b):
        return gaussian_fs(a, b, sigma=self.sigma)


CONFIG = {"sigma": 0.3}


def from_config(a, b):
    return gaussian_fs(a, b, sigma=CONFIG["sigma"])


@pytest.mark.parametrize("make", [
    lambda s: Kernel(Width(s), inputs="points", name="w"),
    lambda s: Kernel(Width(s).method, inputs="points", name="w"),
    lambda s: Kernel(SlotWidth(s), inputs="points", name="w"),
], ids=["instance", "bound-method", "slots"])
def test_callable_instances_with_other_attributes_do_not_share_a_store(make, chart, tmp_path):
    from mfarray.kernels.operators.record import code_token

    z = chart.z.values[:60]
    assert code_token(make(0.3)) == code_token(make(0.3))
    assert code_token(make(0.3)) != code_token(make(1.0))
    path = tmp_path / "k.zarr"
    ZarrOperator.build(make(0.3), z, None, path, block=16)
    with pytest.raises(ValueError, match="another kernel"):
        ZarrOperator.build(make(1.0), z, None, path, block=16)
    np.testing.assert_allclose(ZarrOperator.build(make(0.3), z, None, path, block=16).to_dense(),
                               gaussian_fs(z, z, sigma=0.3), rtol=1e-13)


def test_a_changed_module_level_value_is_seen(chart, tmp_path):
    z = chart.z.values[:60]
    k = Kernel(from_config, inputs="points", name="cfg")
    path = tmp_path / "c.zarr"
    ZarrOperator.build(k, z, None, path, block=16)
    CONFIG["sigma"] = 1.0
    try:
        with pytest.raises(ValueError, match="another kernel"):
            ZarrOperator.build(k, z, None, path, block=16)
    finally:
        CONFIG["sigma"] = 0.3


def test_unreadable_state_makes_the_values_decide():
    import dask.array as da

    from mfarray.kernels.operators.record import code_token

    lazy = da.ones(3)
    k = Kernel(lambda a, b: gaussian_fs(a, b, sigma=float(lazy[0])), inputs="points")
    assert code_token(k) != code_token(k)  # unstable: the probe is evaluated on every resume
    assert code_token(gaussian_fs.bind(sigma=0.3)) == code_token(gaussian_fs.bind(sigma=0.3))


# ------------------------------------------------------------ 8. float64 stores by default
def test_zarr_stores_float64_by_default_and_match_dense(chart, tmp_path):
    train, test = sets(chart)
    kern = functools.partial(gaussian_fs, sigma=0.3)
    ref = mf.kernel_flow(train, kern, steps=3, test=test)
    r = mf.kernel_flow(train, kern, steps=3, test=test, method="zarr",
                       operator_options={"path": str(tmp_path / "k.zarr"), "block": 16})
    assert ZarrOperator.open(tmp_path / "k.zarr").dtype == np.float64
    z = train.z.values
    ZarrOperator.build(kern, z, None, tmp_path / "old.zarr", block=16, dtype="float32")  # the old default
    with pytest.raises(ValueError, match=r"mismatch in \['dtype'\].*pass dtype='float32' to resume"):
        ZarrOperator.build(kern, z, None, tmp_path / "old.zarr", block=16)
    for var in ("g_train", "g_test", "dual"):
        err = np.abs(r[var].values - ref[var].values).max() / np.abs(ref[var].values).max()
        assert err < 1e-13, (var, err)
