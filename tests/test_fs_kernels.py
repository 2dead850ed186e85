"""Kernels on FS distance (Gaussian 3.5, Delta), the rescaling trick (2.16) and features."""

import math

import dask.array as da
import numpy as np
import pytest

import mfarray as mf
from mfarray.geometry.distance import NEAR_RADIUS
from mfarray.kernels.features import patch_features
from mfarray.kernels.fs import delta, gaussian_fs, nearest_index
from mfarray.kernels.rescale import det_metric_rescaling, rescaled


@pytest.fixture(scope="module")
def z(quintic_points):
    return quintic_points.z.values[:400]


EPS = 2.0**-53  # unit roundoff
# absolute distance accuracy of method="gemm" (GEMM rounding of <u, v> in C^5, 2 m eps, amplified
# by 1 / sin d <= 1 / sin(NEAR_RADIUS), plus one ulp of arccos) and of "entrywise" (the bound
# required in tests/test_distance.py)
GEMM_TOL = 2 * 5 * EPS / math.sin(NEAR_RADIUS) + 2.0**-52
ENTRYWISE_TOL = 1e-15


def kernel_tol(sigma, squared, dist_err):
    """Bound on |K - K'| for two evaluations whose distances differ by at most dist_err.

    |dK/dd| <= 1 / (2 sigma) for exp(-d / (2 sigma)) and <= 1 / (sigma sqrt(e)) for
    exp(-d^2 / (2 sigma^2)) (its maximum, at d = sigma); each evaluation adds the rounding of the
    exponent x (2 eps |x| K <= 2 eps / e) and of exp (a few ulps of K <= 1): 5 eps, twice.
    """
    lipschitz = 1 / (sigma * math.sqrt(math.e)) if squared else 1 / (2 * sigma)
    return lipschitz * dist_err + 2 * 5 * EPS


def test_gaussian_fs_is_eq_3_5_and_its_heat_kernel_variant(z):
    d = mf.fs_distance(z, z)  # entrywise: the exact distances to a few ulps
    tol = GEMM_TOL + ENTRYWISE_TOL
    k = gaussian_fs(z, z, sigma=0.3)
    np.testing.assert_allclose(k, np.exp(-d / 0.6), rtol=0, atol=kernel_tol(0.3, False, tol))
    k = gaussian_fs(z, z, sigma=0.3, squared=True)
    np.testing.assert_allclose(k, np.exp(-d**2 / 0.18), rtol=0, atol=kernel_tol(0.3, True, tol))
    k = gaussian_fs(z, z, sigma=30.0)  # Table 1
    assert np.all(np.isfinite(k)) and np.all(np.diag(k) == 1.0)
    np.testing.assert_allclose(k, k.T, rtol=0, atol=kernel_tol(30.0, False, 2 * GEMM_TOL))
    # projective invariance of the inputs: both within GEMM_TOL of the exact distances
    lam = np.exp(1j * np.arange(len(z)))[:, None] * 3.0
    np.testing.assert_allclose(gaussian_fs(lam * z, z, sigma=0.3), gaussian_fs(z, z, sigma=0.3),
                               rtol=0, atol=kernel_tol(0.3, False, 2 * GEMM_TOL))


@pytest.fixture(scope="module")
def z_near(z):
    """The quintic points plus near-duplicates of some of them (distances ~1e-9 .. 1e-3)."""
    rng = np.random.default_rng(3)
    w = rng.normal(size=(60, 5)) + 1j * rng.normal(size=(60, 5))
    eps = 10.0 ** rng.uniform(-9, -3, size=(60, 1))
    return np.concatenate([z, z[:60] + eps * np.abs(z[:60]).max() * w])


@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("sigma", [0.01, 0.1, 1.0])
def test_gaussian_fs_gemm_agrees_with_entrywise(z_near, sigma, squared):
    z1, z2 = z_near[:250], z_near
    fast = gaussian_fs(z1, z2, sigma=sigma, squared=squared)
    slow = gaussian_fs(z1, z2, sigma=sigma, squared=squared, method="entrywise")
    assert fast.shape == (250, len(z2)) and fast.dtype == np.float64
    np.testing.assert_allclose(fast, slow, rtol=0,
                               atol=kernel_tol(sigma, squared, GEMM_TOL + ENTRYWISE_TOL))
    # K(z, z): identical points are exactly at distance 0 (through the sine form), symmetric
    # up to the GEMM error of each entry
    K = gaussian_fs(z_near, z_near, sigma=sigma, squared=squared)
    assert np.all(np.diag(K) == 1.0)
    np.testing.assert_allclose(K, K.T, rtol=0, atol=kernel_tol(sigma, squared, 2 * GEMM_TOL))


def test_gaussian_fs_bad_method(z):
    with pytest.raises(ValueError, match="method"):
        gaussian_fs(z, z, sigma=0.1, method="blas")


def test_gaussian_fs_lazy_equals_in_memory(z):
    zd = da.from_array(z, chunks=(150, 5))
    lazy = gaussian_fs(zd, zd, sigma=0.2, squared=True)
    assert isinstance(lazy, da.Array)
    # GEMM tiles of other shapes: each entry within GEMM_TOL of the exact distance
    np.testing.assert_allclose(lazy.compute(), gaussian_fs(z, z, sigma=0.2, squared=True),
                               rtol=0, atol=kernel_tol(0.2, True, 2 * GEMM_TOL))
    assert gaussian_fs.inputs == "points"


@pytest.mark.parametrize("squared", [False, True])
def test_fs_kernels_are_psd_when_narrow_and_measurably_indefinite_when_wide(z, squared):
    """Neither exp(-d/(2 sigma)) (eq. 3.5 as written) nor exp(-d^2/(2 sigma^2)) is guaranteed PSD
    on a curved space.  Measured on quintic points (docs/paper-notes.md): PSD for sigma <= 0.3,
    indefinite for sigma >= 1 with min/max eigenvalue ratio ~ -1e-3 .. -1e-5 (Table 1's
    sigma = 30 included), so the flows must not assume a PSD kernel."""
    for sigma in (0.05, 0.3):
        ev = np.linalg.eigvalsh(gaussian_fs(z, z, sigma=sigma, squared=squared))
        assert ev.min() >= -1e-10 * ev.max(), sigma
    for sigma in (1.0, 30.0):
        ev = np.linalg.eigvalsh(gaussian_fs(z, z, sigma=sigma, squared=squared))
        assert -1e-2 < ev.min() / ev.max() < -1e-7, (sigma, ev.min() / ev.max())


def test_delta_kernel_is_the_nearest_train_point(z):
    train, test = z[:300], z[300:]
    k = delta(test, train)
    assert k.shape == (100, 300) and np.all(k.sum(axis=1) == 1)
    d = mf.fs_distance(test, train)
    assert np.array_equal(k.argmax(axis=1), d.argmin(axis=1))
    assert np.array_equal(nearest_index(test, train), d.argmin(axis=1))
    assert np.array_equal(delta(train, train), np.eye(300))  # local flow on the train set (2.14)


def test_rescaled_kernel_is_h_k_h_and_stays_psd(z):
    h = det_metric_rescaling(mf.fermat_quintic())
    k = rescaled(gaussian_fs, h)
    got = k(z, z, sigma=0.3)
    hz = mf.points_from_z(mf.fermat_quintic(), z).det_g_fs.values ** -0.25
    assert np.allclose(got, hz[:, None] * gaussian_fs(z, z, sigma=0.3) * hz[None, :], rtol=1e-13)
    ev = np.linalg.eigvalsh(got)
    assert ev.min() >= -1e-10 * ev.max()
    with pytest.raises(TypeError, match="callables"):
        rescaled(gaussian_fs, 3.0)


def test_bad_widths_are_refused(z):
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="sigma must be a positive"):
            gaussian_fs(z, z, sigma=bad)


def test_patch_features_are_projectively_invariant(z):
    x = patch_features(z)
    assert x.shape == (len(z), 10) and x.dtype == np.float64
    lam = (0.3 - 2j) * np.exp(1j * np.arange(len(z)))[:, None]
    assert np.allclose(patch_features(lam * z), x, atol=1e-15)
    assert np.allclose(np.abs(x[:, :5] + 1j * x[:, 5:]).max(axis=1), 1.0)
