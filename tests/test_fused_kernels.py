"""The fused numba tiles (mfarray.kernels.fused): their exp / acos / atan2 against NumPy and
mpmath over the whole domain, gaussian_fs(method="fused") and the fused ReLU kernels against the
NumPy paths within the documented error bounds, and inside BlockwiseOperator."""

import math
import warnings

import dask.array as da
import mpmath as mp
import numpy as np
import pytest

pytest.importorskip("numba")

from mfarray.geometry.distance import NEAR_RADIUS, fs_distance, unit_vectors  # noqa: E402
from mfarray.kernels import fs as fs_mod  # noqa: E402
from mfarray.kernels import fused  # noqa: E402
from mfarray.kernels import relu as relu_mod  # noqa: E402
from mfarray.kernels.checks import NonFiniteKernelError  # noqa: E402
from mfarray.kernels.features import patch_features  # noqa: E402
from mfarray.kernels.fs import gaussian_fs  # noqa: E402
from mfarray.kernels.operators.tiled import BlockwiseOperator  # noqa: E402
from mfarray.kernels.relu import relu_kernels, relu_ntk  # noqa: E402

EPS = 2.0**-53
TINY = np.finfo(np.float64).smallest_subnormal
# as tests/test_fs_kernels.py: the GEMM bound of a distance (2 m eps amplified by 1 / sin d, plus
# one ulp of arccos), the sine form's few ulps
GEMM_TOL = 2 * 5 * EPS / math.sin(NEAR_RADIUS) + 2.0**-52
ENTRYWISE_TOL = 1e-15


def kernel_tol(sigma, squared, dist_err):
    """|K - K'| for two evaluations with distances dist_err apart (tests/test_fs_kernels.py)."""
    lipschitz = 1 / (sigma * math.sqrt(math.e)) if squared else 1 / (2 * sigma)
    return lipschitz * dist_err + 2 * 5 * EPS


def ulps(a, ref):
    """|a - ref| in units of the spacing at ref (the smallest subnormal for ref = 0)."""
    return np.abs(a - ref) / np.spacing(np.abs(ref))


# ----------------------------------------------------------------------------- the helpers


def test_exp_matches_numpy_to_one_ulp_over_the_whole_range():
    edges = [-745.1332191019412, -745.1332191019411, -708.3964185322641, -708.3964185322642,
             709.782712893384, 709.7827128933841, -1e-300, 1e-300, TINY, -TINY]
    x = np.concatenate([np.linspace(-800.0, 720.0, 300001), np.random.default_rng(0).uniform(-1, 1, 20000), edges])
    with np.errstate(over="ignore"):
        ref = np.exp(x)
    got = fused.exp(x)
    normal = (ref >= np.finfo(np.float64).tiny) & np.isfinite(ref)
    assert ulps(got[normal], ref[normal]).max() <= 1
    sub = (ref > 0) & (ref < np.finfo(np.float64).tiny)  # subnormal results: rounded once, one unit at most
    assert sub.sum() > 1000 and np.abs(got[sub] - ref[sub]).max() <= TINY
    assert np.array_equal(got[ref == 0], ref[ref == 0]) and np.all(np.isinf(got[np.isinf(ref)]))
    special = np.array([0.0, -0.0, -np.inf, np.inf, np.nan])
    np.testing.assert_array_equal(fused.exp(special), [1.0, 1.0, 0.0, np.inf, np.nan])
    assert fused.exp(np.zeros((3, 2))).shape == (3, 2)


def test_exp_against_mpmath():
    x = np.random.default_rng(1).uniform(-745.0, 709.0, 3000)
    exact = np.array([float(mp.exp(mp.mpf(float(v)))) for v in x])  # correctly rounded
    assert ulps(fused.exp(x), exact).max() <= 1


def test_acos_matches_numpy_over_its_domain():
    x = np.concatenate([np.linspace(-1.0, 1.0, 400001), [-1.0, -0.5, 0.5, 1.0, np.nextafter(0.5, 1), -0.0]])
    got, ref = fused.acos(x), np.arccos(x)
    assert np.abs(got - ref).max() <= 2 * 2.0**-52 * math.pi / 2  # <= 1 ulp of the largest values
    assert fused.acos(np.array([1.0]))[0] == 0.0
    assert fused.acos(np.array([-1.0]))[0] == math.pi
    assert np.all(np.isnan(fused.acos(np.array([1.0 + 1e-15, -1.0 - 1e-15, 2.0, np.inf, np.nan]))))


def test_acos_sqrt_is_the_fs_angle_to_an_ulp():
    """arccos(sqrt(c2)) on [0, 1] against mpmath (NumPy's own arccos(sqrt(c2)) is not exact: the
    rounding of sqrt is amplified near c2 = 1)."""
    c2 = np.concatenate([np.random.default_rng(2).uniform(0, 1, 4000), np.random.default_rng(3).uniform(0.99, 1, 1000),
                         [0.0, 0.25, 0.75, 1.0, np.nextafter(0.25, 0), np.nextafter(0.75, 1), 1e-300, 1 - EPS]])
    with mp.workdps(40):
        exact = np.array([float(mp.acos(mp.sqrt(mp.mpf(float(c))))) for c in c2])
    got = fused.acos_sqrt(c2)
    assert np.abs(got - exact).max() <= 2.0**-52  # <= one ulp of pi/2
    assert fused.acos_sqrt(np.array([1.0, 1.0 + 1e-15]))[0] == 0.0


def test_atan2_matches_numpy_with_ieee_special_values():
    rng = np.random.default_rng(4)
    y = rng.normal(size=100000) * 10.0 ** rng.uniform(-300, 300, 100000)
    x = rng.normal(size=100000) * 10.0 ** rng.uniform(-300, 300, 100000)
    got, ref = fused.atan2(y, x), np.arctan2(y, x)
    assert ulps(got, ref).max() <= 2
    near = rng.normal(size=20000)  # y/x close to +-1, tan(pi/8) and 0: the octant seams
    for x2 in (near, near * (1 + 1e-9), near * math.tan(math.pi / 8), near * 1e9, -near):
        assert ulps(fused.atan2(near, x2), np.arctan2(near, x2)).max() <= 2
    special = np.array([0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, 1e308, -1e-310, TINY])
    Y, X = np.meshgrid(special, special)
    got, ref = fused.atan2(Y, X), np.arctan2(Y, X)
    assert np.array_equal(np.signbit(got), np.signbit(ref))
    assert ulps(got, ref).max() <= 2
    assert np.isnan(fused.atan2(np.nan, 1.0)) and np.isnan(fused.atan2(1.0, np.nan))
    assert fused.atan2(0.0, 3.0) == 0.0  # theta = 0 exactly for D = 0 (the ReLU kernels' identical inputs)


# ----------------------------------------------------------------------------- gaussian_fs


@pytest.fixture(scope="module")
def z(quintic_points):
    """300 quintic points, near-duplicates of 40 of them (distances 1e-9 .. 1e-3) and 20 exact
    duplicates."""
    z = quintic_points.z.values[:300]
    rng = np.random.default_rng(3)
    w = rng.normal(size=(40, 5)) + 1j * rng.normal(size=(40, 5))
    eps = 10.0 ** rng.uniform(-9, -3, size=(40, 1))
    return np.concatenate([z, z[:40] + eps * np.abs(z[:40]).max() * w, z[100:120]])


def test_fused_distances_have_the_gemm_bound(z):
    u = unit_vectors(z)
    d = fused.fs_distance_tile(u, u)
    exact = fs_distance(z, z)  # entrywise: a few ulps at every distance
    assert np.abs(d - exact).max() <= GEMM_TOL + ENTRYWISE_TOL
    assert np.all(np.diag(d) == 0.0) and np.all(d[np.arange(100, 120), np.arange(340, 360)] == 0.0)
    assert 0 < (d < NEAR_RADIUS).mean() < 0.5  # both branches (sine form and polynomial) are used
    assert d.min() >= 0 and d.max() <= math.pi / 2


@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("sigma", [0.01, 0.3, 30.0])
def test_gaussian_fs_fused_agrees_with_gemm_and_entrywise(z, sigma, squared):
    K = gaussian_fs(z, z, sigma=sigma, squared=squared, method="fused")
    assert K.dtype == np.float64 and K.shape == (len(z), len(z))
    assert np.all(np.diag(K) == 1.0) and np.all(K[np.arange(100, 120), np.arange(340, 360)] == 1.0)
    for method in ("gemm", "entrywise"):
        ref = gaussian_fs(z, z, sigma=sigma, squared=squared, method=method)
        np.testing.assert_allclose(K, ref, rtol=0, atol=kernel_tol(sigma, squared, GEMM_TOL + ENTRYWISE_TOL))
    # projective invariance: z -> lambda z with a phase and a scale per point
    lam = (np.exp(1j * np.arange(len(z))) * 10.0 ** np.linspace(-3, 3, len(z)))[:, None]
    np.testing.assert_allclose(gaussian_fs(lam * z, z, sigma=sigma, squared=squared, method="fused"), K,
                               rtol=0, atol=kernel_tol(sigma, squared, 2 * GEMM_TOL))
    # the default is the fused kernel for NumPy inputs
    assert np.array_equal(gaussian_fs(z, z, sigma=sigma, squared=squared), K)


@pytest.mark.parametrize("squared", [False, True])
def test_gaussian_fs_fused_tiny_and_huge_widths(z, squared):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow or underflow warnings
        for sigma in (TINY, 1e-300, 1e-20):
            K = gaussian_fs(z, z, sigma=sigma, squared=squared, method="fused")
            d = fs_distance(z, z)
            np.testing.assert_array_equal(K, (d == 0).astype(float))
        for sigma in (1e300, np.finfo(np.float64).max):
            K = gaussian_fs(z, z, sigma=sigma, squared=squared, method="fused")
            np.testing.assert_array_equal(K, np.ones_like(K))
    K = gaussian_fs(z, z, sigma=1e-3, squared=squared, method="fused")  # subnormal and zero values
    np.testing.assert_allclose(K, gaussian_fs(z, z, sigma=1e-3, squared=squared, method="gemm"), rtol=0,
                               atol=kernel_tol(1e-3, squared, GEMM_TOL + ENTRYWISE_TOL))


def test_gaussian_fs_fused_lazy_and_shapes(z):
    zd = da.from_array(z, chunks=(150, 5))
    lazy = gaussian_fs(zd, zd, sigma=0.2, squared=True, method="fused")
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), gaussian_fs(z, z, sigma=0.2, squared=True), rtol=0,
                               atol=kernel_tol(0.2, True, 2 * GEMM_TOL))
    assert gaussian_fs(z[:0], z, sigma=0.2, method="fused").shape == (0, len(z))
    assert gaussian_fs(z[:3], z[:1], sigma=0.2, method="fused").shape == (3, 1)
    with pytest.raises(ValueError, match="same P"):
        gaussian_fs(z, z[:, :4], sigma=0.2, method="fused")
    bad = z.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"), np.errstate(invalid="ignore"):
        gaussian_fs(bad, z, sigma=0.2, method="fused")


@pytest.mark.parametrize("m", [2, 10])
def test_fused_distances_in_other_dimensions(m):
    """P^1 and P^9 (the dot product is unrolled for each number of coordinates)."""
    rng = np.random.default_rng(m)
    z = rng.normal(size=(120, m)) + 1j * rng.normal(size=(120, m))
    z = np.concatenate([z, z[:20] * (1 + 1e-8 * rng.normal(size=(20, m)))])
    d = fused.fs_distance_tile(unit_vectors(z), unit_vectors(z))
    assert np.abs(d - fs_distance(z, z)).max() <= 2 * m * EPS / math.sin(NEAR_RADIUS) + 2.0**-52 + ENTRYWISE_TOL
    assert np.all(np.diag(d) == 0.0)


def test_fused_is_refused_for_cupy_inputs_with_the_fix(z, monkeypatch):
    monkeypatch.setattr(fs_mod, "_on_cupy", lambda x: True)
    with pytest.raises(ValueError, match="method='fused'.*CuPy.*method='gemm'"):
        gaussian_fs(z, z, sigma=0.3, method="fused")
    monkeypatch.setattr(fs_mod.fused, "available", lambda: True)
    assert fs_mod._resolve_method("auto", z, z) == "gemm"  # auto never picks fused for CuPy
    monkeypatch.setattr(fs_mod, "_on_cupy", lambda x: False)
    monkeypatch.setattr(fs_mod.fused, "available", lambda: False)
    assert fs_mod._resolve_method("auto", z, z) == "gemm"  # nor without numba
    with pytest.raises(ValueError, match="needs numba"):
        gaussian_fs(z, z, sigma=0.3, method="fused")


# ----------------------------------------------------------------------------- ReLU kernels

TABLE1 = dict(sigma_w=5.716, sigma_b=80.52)  # paper, Table 1


@pytest.fixture(scope="module")
def x(z):
    """Patch features (d = 10) of the points above (near-coincident and identical ones included),
    some antipodal and some scaled copies."""
    f = patch_features(z)
    return np.concatenate([f, -f[:10], f[10:20] * (1 + 1e-7), f[20:30] + 1e-12])


@pytest.mark.parametrize("depth", [0, 1, 2, 3])
@pytest.mark.parametrize("hp", [dict(sigma_w=1.0, sigma_b=0.0), dict(sigma_w=1.3, sigma_b=0.4), TABLE1],
                         ids=["default", "w1.3-b0.4", "table1"])
def test_relu_fused_agrees_with_numpy(x, depth, hp):
    """Both paths run the same recursion; each is within ~1e-15 relative of a 50-digit reference
    (tests/test_relu_kernels.py), so they agree to a few 1e-15 of the kernel's scale
    sqrt(K(x, x) K(x', x')) (entries near zero: antipodal inputs without bias)."""
    x1, x2 = x[:250], x
    K, T = relu_kernels(x1, x2, depth=depth, method="fused", **hp)
    Kn, Tn = relu_kernels(x1, x2, depth=depth, method="numpy", **hp)
    dk, dt = relu_mod.relu_kernels_diag(x, depth=depth, **hp)
    scale_k, scale_t = np.sqrt(np.outer(dk[:250], dk)), np.sqrt(np.outer(dt[:250], dt))
    assert np.abs(K - Kn).max() <= 1e-14 * scale_k.max() and np.all(np.abs(K - Kn) <= 1e-14 * scale_k)
    assert np.all(np.abs(T - Tn) <= 1e-14 * (depth + 1) * scale_t)
    # identical inputs: theta = 0 exactly in every layer
    np.testing.assert_allclose(np.diag(T), dt[:250], rtol=1e-15 * (depth + 1), atol=0)
    assert np.array_equal(T[np.arange(100, 120), np.arange(340, 360)], T[np.arange(100, 120), np.arange(100, 120)])
    # the single-output kernels and "auto" are the same computation
    assert np.array_equal(relu_ntk(x1, x2, depth=depth, **hp), T)
    assert np.array_equal(relu_mod.relu_nngp(x1, x2, depth=depth, method="fused", **hp), K)


@pytest.mark.parametrize("d", [1, 3, 25])
def test_relu_fused_other_feature_dimensions(d):
    rng = np.random.default_rng(d)
    x = rng.normal(size=(150, d))
    x = np.concatenate([x, x[:10], x[10:20] + 1e-9 * rng.normal(size=(10, d)), -x[20:30]])
    for depth in (1, 3):
        hp = dict(depth=depth, sigma_w=1.3, sigma_b=0.4)
        T = relu_ntk(x, x, method="fused", **hp)
        Tn = relu_ntk(x, x, method="numpy", **hp)
        dt = relu_mod.relu_ntk_diag(x, **hp)
        assert np.all(np.abs(T - Tn) <= 1e-14 * (depth + 1) * np.sqrt(np.outer(dt, dt)))


def test_relu_fused_refinement_matters(x):
    """refine_tol=0 (no cancellation-free input layer) moves the near-coincident pairs: the
    refinement is active in the fused path too."""
    hp = dict(depth=1, **TABLE1)
    T = relu_ntk(x, x, method="fused", **hp)
    T0 = relu_ntk(x, x, method="fused", refine_tol=0.0, **hp)
    Tn = relu_ntk(x, x, method="numpy", refine_tol=0.0, **hp)
    assert np.abs(T0 - T).max() > 1e-12 * np.abs(T).max()
    np.testing.assert_allclose(T0, Tn, rtol=1e-13, atol=0)


def test_relu_fused_threads_lazy_and_errors(x):
    hp = dict(depth=3, sigma_w=1.4, sigma_b=0.3)
    ref = relu_ntk(x, x, method="fused", n_threads=1, **hp)
    assert np.array_equal(relu_ntk(x, x, method="fused", n_threads=3, **hp), ref)
    xd = da.from_array(x, chunks=(100, 10))
    _, T = relu_kernels(xd, xd, **hp)
    assert isinstance(T, da.Array)
    np.testing.assert_allclose(T.compute(), ref, rtol=1e-15, atol=0)
    np.testing.assert_allclose(relu_ntk(xd, x[:50], method="numpy", **hp).compute(), ref[:, :50], rtol=1e-14)
    assert relu_ntk(x, x, method="fused", dtype=np.float32, **hp).dtype == np.float32  # fused32 (test_fused32)
    assert relu_ntk(x, x, method="numpy", dtype=np.float32).dtype == np.float32
    with pytest.raises(ValueError, match="method"):
        relu_ntk(x, x, method="gemm")
    with pytest.raises(NonFiniteKernelError):
        relu_ntk(x * 1e150, x, method="fused", sigma_w=1e150, depth=2)


def test_relu_fused_refused_for_other_namespaces(x, monkeypatch):
    import array_api_compat

    monkeypatch.setattr(array_api_compat, "is_numpy_namespace", lambda xp: False)
    with pytest.raises(ValueError, match="method='fused'.*method='numpy'"):
        relu_mod._resolve_method("fused", np, "relu_ntk")
    assert relu_mod._resolve_method("auto", np, "relu_ntk") == "numpy"


# ----------------------------------------------------------------------------- in the operator


@pytest.mark.parametrize("which", ["gaussian_fs", "relu_ntk"])
def test_blockwise_matvec_with_the_fused_kernel_equals_the_dense_numpy_one(z, x, which):
    if which == "gaussian_fs":
        pts = z
        k_fused = gaussian_fs.bind(sigma=0.3, squared=True, method="fused")
        dense = gaussian_fs(z, z, sigma=0.3, squared=True, method="gemm")
        tol = kernel_tol(0.3, True, GEMM_TOL + ENTRYWISE_TOL)
    else:
        pts = x
        k_fused = relu_ntk.bind(method="fused", **TABLE1)
        dense = relu_ntk(x, x, method="numpy", **TABLE1)
        tol = 1e-14 * np.abs(dense).max()
    v = np.random.default_rng(5).normal(size=(len(pts), 9))
    op = BlockwiseOperator(k_fused, pts, pts, block=128)
    assert op.symmetric
    got = op.matvec(v)
    ref = dense @ v
    # each entry of K within tol, the products summed in other orders
    bound = tol * np.abs(v).sum(axis=0) + 1e-13 * (np.abs(dense) @ np.abs(v))
    assert np.all(np.abs(got - ref) <= bound)
    np.testing.assert_allclose(op.to_dense(), dense, rtol=0, atol=tol)
