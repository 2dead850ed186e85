"""Float32 fused tiles (mfarray.kernels.fused32): their error bounds against the float64 tiles,
the float32 operator (float32 products summed in float64) and a float32 flow against float64."""

import math

import dask.array as da
import numpy as np
import pytest

pytest.importorskip("numba")

import mfarray as mf  # noqa: E402
from mfarray.kernels import fused, fused32, gaussian_fs, relu_ntk  # noqa: E402
from mfarray.kernels.operators import BlockwiseOperator  # noqa: E402
from mfarray.kernels.operators.protocol import apply_block  # noqa: E402

EPS32 = float(np.finfo(np.float32).eps)


def _unit(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def u():
    """Unit vectors in C^5 with near pairs at every scale (1e-9 .. 1e-1), a phase copy and exact copies."""
    rng = np.random.default_rng(3)
    n = 600
    a = _unit(rng.normal(size=(n, 5)) + 1j * rng.normal(size=(n, 5)))
    h = n // 2
    eps = np.logspace(-9, -1, h)[:, None]
    a[h:] = _unit(a[:h] + eps * (rng.normal(size=(h, 5)) + 1j * rng.normal(size=(h, 5))))
    a[-1] = a[0] * np.exp(0.7j)  # the same point of P^4
    a[-2] = a[1]
    return a


def test_exp32_acos32_atan32_against_float64():
    x = np.concatenate([np.linspace(-87, 0, 200001), -np.logspace(-12, 0, 1000), [0.0, -0.0]]).astype(np.float32)
    ref = np.exp(x.astype(np.float64))
    assert np.max(np.abs(fused32.exp32(x) - ref) / ref) <= 1.5 * EPS32
    assert np.all(fused32.exp32(np.float32([-87.5, -200, -np.inf])) == 0)
    assert np.isnan(fused32.exp32(np.float32([np.nan]))).all()
    assert fused32.exp32(np.float32(0.0)) == 1
    c2 = np.concatenate([np.random.default_rng(0).random(100000), 1 - np.logspace(-16, -1, 1000), [0.0, 1.0, 1.5]])
    d = fused32.acos_sqrt32(c2)
    c = np.minimum(c2, 1.0)
    ref = np.where(c > 0.5, np.arcsin(np.sqrt(1 - c)), np.arccos(np.sqrt(c)))  # 1 - c exact for c > 1/2
    # 1 - c2 is formed in float64, so d keeps its absolute accuracy near 0 (a float32 c2 would
    # lose sqrt(eps32) ~ 3e-4 there)
    assert np.all(np.abs(d - ref) <= 3 * EPS32 * ref + 1e-9)
    assert np.max(np.abs(np.arccos(np.sqrt(c2.astype(np.float32).clip(0, 1))) - ref)) > 1e-4  # the trap avoided
    rng = np.random.default_rng(1)
    y = np.abs(rng.normal(size=100000)) * 10.0 ** rng.integers(-6, 6, 100000)
    xx = rng.normal(size=100000) * 10.0 ** rng.integers(-6, 6, 100000)
    y32, x32 = y.astype(np.float32), xx.astype(np.float32)
    ref = np.arctan2(y32.astype(np.float64), x32.astype(np.float64))
    assert np.max(np.abs(fused32.atan2_pos32(y32, x32) - ref) / ref) <= 2 * EPS32
    assert fused32.atan2_pos32(0.0, -1.0) == np.float32(np.pi) and fused32.atan2_pos32(0.0, 0.0) == 0


@pytest.mark.parametrize("squared", [True, False])
@pytest.mark.parametrize("sigma", [0.02, 0.3, 3.0])
def test_gaussian_tile32_within_its_bound_of_float64(u, squared, sigma):
    K32 = fused32.gaussian_fs_tile32(u, u, sigma=sigma, squared=squared)
    K64 = fused.gaussian_fs_tile(u, u, sigma=sigma, squared=squared)
    assert K32.dtype == np.float32 and K32.shape == K64.shape
    w = math.sqrt(2) * sigma if squared else 2 * sigma
    err = np.abs(K32.astype(np.float64) - K64)
    assert np.all(err <= 4 * EPS32 * K64 + 5e-8 / w)
    assert np.all(np.diagonal(K32) == 1) and K32[0, -1] == 1 and K32[1, -2] == 1  # identical points: exactly 1
    assert np.array_equal(K32, K32.T)
    if sigma > 1:
        return
    # the bound is tight enough to catch a float32 inner product
    u32 = u.astype(np.complex64)
    c2 = np.abs(np.conj(u32) @ u32.T) ** 2
    d = np.arccos(np.sqrt(np.clip(c2, 0, 1))).astype(np.float64)
    K_bad = np.exp(-(d / w) ** 2) if squared else np.exp(-d / w)
    assert np.any(np.abs(K_bad - K64) > 4 * EPS32 * K64 + 5e-8 / w)


def test_gaussian_tile32_extreme_widths(u):
    K = fused32.gaussian_fs_tile32(u, u, sigma=1e-300, squared=True)
    d = fused.fs_distance_tile(u, u)
    assert np.array_equal(K, (d < 6.3e-8).astype(np.float32))  # 1 - c2 < 4e-15 is taken as d = 0
    assert np.array_equal(K, fused32.gaussian_fs_tile32(u, u, sigma=1e-300, squared=False))
    assert np.all(fused32.gaussian_fs_tile32(u, u, sigma=1e300, squared=False) == 1)


def test_gaussian_fs_dtype_float32_on_every_path(u):
    z = u * np.exp(1j * np.arange(u.shape[0]))[:, None]  # homogeneous points, any scale
    z = z * 3.0
    K64 = gaussian_fs(z, z, sigma=0.3, squared=True)
    K32 = gaussian_fs(z, z, sigma=0.3, squared=True, dtype="float32")
    assert K32.dtype == np.float32
    assert np.all(np.abs(K32 - K64) <= 4 * EPS32 * K64 + 5e-8 / (math.sqrt(2) * 0.3))
    zd = da.from_array(z, chunks=(250, 5))
    lazy = gaussian_fs(zd, zd, sigma=0.3, squared=True, dtype=np.float32)
    assert isinstance(lazy, da.Array) and lazy.dtype == np.float32
    assert np.array_equal(lazy.compute(), K32)  # chunk by chunk the same tiles
    gemm = gaussian_fs(z, z, sigma=0.3, squared=True, method="gemm", dtype="float32")
    assert gemm.dtype == np.float32
    np.testing.assert_array_equal(gemm, gaussian_fs(z, z, sigma=0.3, squared=True, method="gemm").astype(np.float32))
    spec = gaussian_fs.bind(sigma=0.3, squared=True, dtype="float32")
    assert spec(z, z).dtype == np.float32
    with pytest.raises(TypeError, match="dtype must be None, float32 or float64"):
        gaussian_fs(z, z, sigma=0.3, dtype="float16")


@pytest.mark.parametrize("depth,sigma_w,sigma_b", [(0, 1.0, 0.0), (1, 1.0, 0.0), (2, 1.5, 0.0), (3, 1.4, 0.3)])
def test_relu_tile32_within_float32_ulps_of_float64(depth, sigma_w, sigma_b):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(500, 10))
    x[5] = 2 * x[3]  # parallel
    x[7] = x[3] + 1e-9 * rng.normal(size=10)  # nearly parallel: the refined pairs
    x[9] = -x[3]  # antiparallel
    x[11] = x[3] + 1e-4 * rng.normal(size=10)
    x[13] = x[3] + 0.03 * np.linalg.norm(x[3]) * _unit(rng.normal(size=(1, 10)))[0]  # sin^2 theta ~ 1e-3
    T64 = relu_ntk(x, x, depth=depth, sigma_w=sigma_w, sigma_b=sigma_b)
    T32 = relu_ntk(x, x, depth=depth, sigma_w=sigma_w, sigma_b=sigma_b, dtype=np.float32)
    assert T32.dtype == np.float32
    scale = np.sqrt(np.outer(np.diag(T64), np.diag(T64)))
    assert np.max(np.abs(T32 - T64) / scale) <= (1 + depth) * 2 * EPS32
    # the nearly parallel pairs keep their relative accuracy (recomputed in float64 from x' - x)
    for i, j in [(3, 7), (3, 11), (3, 5), (3, 13)]:
        assert abs(T32[i, j] - T64[i, j]) <= (1 + depth) * 3 * EPS32 * abs(T64[i, j])
    assert np.array_equal(T32, T32.T)


def test_relu_tile32_needs_its_float64_refinement(monkeypatch):
    """Without recomputing the pairs of sin^2 theta <= REFINE32 in float64, the float32 input layer's
    D = s^2 - c^2 cancels: 300 pairs at sin^2 theta = 3e-4, depth 3, measured 0.4 ulps of their
    value with it and 10 without."""
    rng = np.random.default_rng(5)
    base = rng.normal(size=(1, 10))
    n = np.linalg.norm(base)
    d = rng.normal(size=(300, 10))
    d = _unit(d - (d @ base.T) / n ** 2 * base)
    x = np.vstack([base, base + math.sqrt(3e-4) * n * d])
    T64 = relu_ntk(x, x, depth=3)[0, 1:]

    def err():
        return np.max(np.abs(relu_ntk(x, x, depth=3, dtype=np.float32)[0, 1:] - T64) / T64) / EPS32

    assert err() <= 2
    monkeypatch.setattr(fused32, "REFINE32", 0.0)
    assert err() > 5


def test_apply_block_multiplies_float32_in_float32_and_returns_float64():
    rng = np.random.default_rng(4)
    K = rng.random((1024, 700)).astype(np.float32)
    v = rng.normal(size=(700, 9))
    p = apply_block(K, v)
    assert p.dtype == np.float64
    exact = K.astype(np.float64) @ v
    sgemm = (K @ v.astype(np.float32)).astype(np.float64)
    scale = np.abs(K).astype(np.float64) @ np.abs(v)
    np.testing.assert_allclose(p, sgemm, rtol=1e-6, atol=1e-6 * scale.max())
    assert np.max(np.abs(p - exact) / scale) <= math.sqrt(700) * EPS32
    assert not np.array_equal(p, exact)  # really float32 arithmetic
    pc = apply_block(K, v + 1j * v[:, ::-1])
    assert pc.dtype == np.complex128  # one float32 GEMM on [Re v | Im v]: float32 rounding of both parts
    assert np.max(np.abs(pc.real - exact) / scale) <= math.sqrt(700) * EPS32
    assert np.max(np.abs(pc.imag - exact[:, ::-1]) / scale[:, ::-1]) <= math.sqrt(700) * EPS32


def test_float32_operator_is_deterministic_and_close_to_float64():
    x = mf.sample_chart(n=900, seed=5).compute()["z"].values
    k32 = gaussian_fs.bind(sigma=0.3, squared=True, dtype="float32")
    k64 = gaussian_fs.bind(sigma=0.3, squared=True)
    v = np.random.default_rng(6).normal(size=(x.shape[0], 9))
    ops = [BlockwiseOperator(k32, x, x, block=256, workers=w) for w in (1, 2)]
    outs = [op.matvec(v) for op in ops]
    assert outs[0].dtype == np.float64 and np.array_equal(outs[0], outs[1])
    ref = BlockwiseOperator(k64, x, x, block=256).matvec(v)
    scale = BlockwiseOperator(k64, x, x, block=256).matvec(np.abs(v))
    assert np.max(np.abs(outs[0] - ref) / scale) <= 2 * math.sqrt(256) * EPS32
    assert np.max(np.abs(outs[0] - ref) / scale) > 1e-9  # float32, not float64 in disguise


def test_float32_flow_within_float32_rounding_of_float64():
    """20 backtracking steps on 600 one-chart points: the float32 kernels move sigma by ~1e-8 and
    the metrics by ~1e-7 relative (measured at 1500 points: <= 1.4e-7); a kernel or product
    error beyond float32 rounding would show at 1e-5."""
    train = mf.sample_chart(n=600, seed=7).compute()
    test = mf.sample_chart(n=150, seed=8).compute()
    for k64 in (gaussian_fs.bind(sigma=0.3, squared=True), relu_ntk.bind(depth=2)):
        r64 = mf.kernel_flow(train, k64, steps=20, test=test, method="blockwise")
        r32 = mf.kernel_flow(train, k64.bind(dtype="float32"), steps=20, test=test, method="blockwise")
        e64, e32 = mf.evaluate(r64), mf.evaluate(r32)
        assert e64.sigma_train_final < 0.99 * e64.sigma_train_initial  # the flow moved
        for var in ("sigma_train_final", "sigma_test_final"):
            assert abs(float(e32[var]) - float(e64[var])) <= 1e-6
        for g in ("g_train", "g_test"):
            a, b = r32[g].values.reshape(r32[g].shape[0], -1), r64[g].values.reshape(r64[g].shape[0], -1)
            assert np.max(np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)) <= 1e-5
            assert not np.array_equal(a, b)


def test_fs_tiles_give_every_row_the_bits_it_has_alone(u):
    """The FS tiles form |<u, v>|^2 two rows at a time (an odd last row pairs with itself): each
    row of a tile is bit for bit the tile of that row alone, float64 (distance, both kernel forms)
    and float32, with identical and nearly identical points among the rows."""
    a = np.array(u[:9])
    a[3] = a[5] * np.exp(0.7j)  # the same point up to phase
    a[4] = a[6] + 1e-9
    a[4] /= np.linalg.norm(a[4])
    b = np.concatenate([u[:40], u[200:600]])
    tiles = (lambda x: fused.fs_distance_tile(x, b),
             lambda x: fused.gaussian_fs_tile(x, b, sigma=0.3, squared=True),
             lambda x: fused.gaussian_fs_tile(x, b, sigma=0.05, squared=False),
             lambda x: fused32.gaussian_fs_tile32(x, b, sigma=0.3, squared=True))
    for tile in tiles:
        for n1 in (9, 8):
            together = tile(a[:n1])
            alone = np.concatenate([tile(a[i:i + 1]) for i in range(n1)])
            np.testing.assert_array_equal(together, alone)
