"""Tests for the Fubini-Study geodesic distance (paper §3.1, eqs. 3.2 and 3.4).

The reference is the exact distance of the *stored* float64 vectors: every float64 coordinate is
converted exactly to mpmath (``mpmath.mpf(float)`` is exact) and the distance is evaluated with
50 significant digits, both with the arccos form (3.2) and with the sine form
2 asin(|u - lam v| / 2); the two references are cross-checked against each other.
"""

from __future__ import annotations

import math

import dask.array as da
import mpmath
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.stats import unitary_group

import mfarray
import mfarray.geometry.distance as distmod
from mfarray.geometry.distance import (
    NEAR_RADIUS,
    fs_distance,
    fs_distance_block,
    fs_distance_block_gemm,
    nearest,
    unit_vectors,
)

HALF_PI = np.pi / 2
ABS_TOL = 1e-15  # required absolute accuracy against the exact distance of the stored vectors
REL_TOL = 1e-6  # required relative accuracy for distances >= 1e-9


# ---------------------------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------------------------


def _mpc_vec(z):
    return [mpmath.mpc(float(x.real), float(x.imag)) for x in np.asarray(z, dtype=complex)]


def exact_fs(z1, z2, both=False):
    """Exact (50-digit) FS distance of two stored complex128 vectors; optionally both forms."""
    with mpmath.workdps(50):
        a, b = _mpc_vec(z1), _mpc_vec(z2)
        n1 = mpmath.fsum(x.real**2 + x.imag**2 for x in a)
        n2 = mpmath.fsum(x.real**2 + x.imag**2 for x in b)
        c = mpmath.fsum(mpmath.conj(x) * y for x, y in zip(a, b))
        cosd = min(abs(c) / mpmath.sqrt(n1 * n2), mpmath.mpf(1))
        d_acos = mpmath.acos(cosd)
        if not both:
            return d_acos
        u = [x / mpmath.sqrt(n1) for x in a]
        v = [y / mpmath.sqrt(n2) for y in b]
        lam = mpmath.conj(c) / abs(c) if c != 0 else mpmath.mpf(1)
        s = mpmath.sqrt(mpmath.fsum(abs(x - lam * y) ** 2 for x, y in zip(u, v)))
        d_sin = 2 * mpmath.asin(s / 2)
        return d_acos, d_sin


def naive_fs(z1, z2):
    """The paper's formula (3.2), evaluated literally in float64."""
    z1 = np.asarray(z1, dtype=complex)
    z2 = np.asarray(z2, dtype=complex)
    c12 = np.conj(z1) @ z2.T
    n1 = np.sum(np.abs(z1) ** 2, axis=-1)
    n2 = np.sum(np.abs(z2) ** 2, axis=-1)
    r = (c12 * np.conj(c12)).real / (n1[:, None] * n2[None, :])
    return np.arccos(np.sqrt(np.clip(r, 0.0, 1.0)))


def d1(z1, z2):
    """Scalar distance of two single vectors via the public API."""
    return float(fs_distance(np.asarray(z1)[None, :], np.asarray(z2)[None, :])[0, 0])


def random_points(rng, n, m, scale_spread=True):
    z = rng.normal(size=(n, m)) + 1j * rng.normal(size=(n, m))
    if scale_spread:
        z *= (10.0 ** rng.uniform(-4, 4, size=(n, 1))) * np.exp(2j * np.pi * rng.random((n, 1)))
    return z


def _orth_unit(rng, u):
    """A random unit vector Hermitian-orthogonal to the unit vector u."""
    w = rng.normal(size=u.shape) + 1j * rng.normal(size=u.shape)
    w = w - (np.vdot(u, w)) * u
    w = w - (np.vdot(u, w)) * u
    return w / np.linalg.norm(w)


def pair_at(rng, m, t, method):
    """A stored pair (z, z') whose FS distance is about t."""
    z = random_points(rng, 1, m)[0]
    u = z / np.linalg.norm(z)
    w = _orth_unit(rng, u)
    phase_scale = 10.0 ** rng.uniform(-3, 3) * np.exp(2j * np.pi * rng.random())
    if method == "rotate":
        if t > 1.0:  # near pi/2: cos t = sin(pi/2 - t), computed accurately
            ct, st_ = math.sin(HALF_PI - t), math.cos(HALF_PI - t)
        else:
            ct, st_ = math.cos(t), math.sin(t)
        z2 = (ct * u + st_ * w) * phase_scale
    else:  # "perturb": z' = z + eps |z| w, distance atan(eps) ~ eps
        z2 = z + math.tan(t) * np.linalg.norm(z) * w
    return z, z2


PRESCRIBED = [1e-12, 1e-11, 1e-10, 1e-9, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 0.5, 1.0]
NEAR_HALF_PI = [HALF_PI - 1e-3, HALF_PI - 1e-6, HALF_PI - 1e-9, HALF_PI - 1e-12]
DIMS = [2, 3, 5]  # P^1, P^2, P^4


def _accuracy_pairs():
    rng = np.random.default_rng(12345)
    pairs = []
    for m in DIMS:
        for t in PRESCRIBED:
            for method in ("rotate", "perturb"):
                for _ in range(2):
                    pairs.append((t, *pair_at(rng, m, t, method)))
        for t in NEAR_HALF_PI:
            for _ in range(3):
                pairs.append((t, *pair_at(rng, m, t, "rotate")))
        # exactly orthogonal and exactly equal points
        e = np.zeros(m, dtype=complex)
        f = e.copy()
        e[0], f[-1] = 1.0, 2.0 - 3.0j
        pairs.append((HALF_PI, e, f))
        z = random_points(rng, 1, m)[0]
        pairs.append((0.0, z, z))
        pairs.append((0.0, z, (-0.5 + 2.0j) * z))
    return pairs


ACC_PAIRS = _accuracy_pairs()


@pytest.fixture(scope="module")
def acc_data():
    z1 = [p[1] for p in ACC_PAIRS]
    z2 = [p[2] for p in ACC_PAIRS]
    ref = []
    for a, b in zip(z1, z2):
        d_acos, d_sin = exact_fs(a, b, both=True)
        ref.append((d_acos, d_sin))
    return z1, z2, ref


def _errors(values, ref):
    abs_err, rel_err = [], []
    for val, (r, _) in zip(values, ref):
        e = abs(mpmath.mpf(float(val)) - r)
        abs_err.append(float(e))
        if r >= 1e-9:
            rel_err.append(float(e / r))
    return np.array(abs_err), np.array(rel_err)


# ---------------------------------------------------------------------------------------------
# accuracy against mpmath
# ---------------------------------------------------------------------------------------------


def test_reference_forms_agree_and_pairs_cover_the_range(acc_data):
    _, _, ref = acc_data
    for (t, _, _), (d_acos, d_sin) in zip(ACC_PAIRS, ref):
        with mpmath.workdps(50):
            # 50 digits: the arccos form keeps ~1e-50 / d absolute accuracy, ample here
            assert abs(d_acos - d_sin) <= mpmath.mpf("1e-30")
        # the construction really produces the prescribed distance (up to storage rounding)
        assert abs(float(d_acos) - t) <= 1e-6 * t + 1e-15, (t, float(d_acos))


def test_fs_distance_accuracy_vs_mpmath(acc_data):
    z1, z2, ref = acc_data
    got = [d1(a, b) for a, b in zip(z1, z2)]
    abs_err, rel_err = _errors(got, ref)
    worst = int(np.argmax(abs_err))
    assert abs_err.max() <= ABS_TOL, (abs_err.max(), ACC_PAIRS[worst][0])
    assert rel_err.max() <= REL_TOL, rel_err.max()
    # identical / proportional points: exactly zero or within the absolute bound
    for (t, _, _), g in zip(ACC_PAIRS, got):
        if t == 0.0:
            assert 0.0 <= g <= ABS_TOL


def test_fs_distance_accuracy_matrix_form(acc_data):
    """Same check through the (n1, n2) matrix: every pair sits on the diagonal."""
    z1, z2, ref = acc_data
    for m in DIMS:
        idx = [k for k, a in enumerate(z1) if a.shape[0] == m]
        D = fs_distance(np.array([z1[k] for k in idx]), np.array([z2[k] for k in idx]))
        abs_err, rel_err = _errors(np.diag(D), [ref[k] for k in idx])
        assert abs_err.max() <= ABS_TOL
        assert rel_err.max() <= REL_TOL


def test_naive_arccos_formula_fails_the_accuracy_requirement(acc_data):
    """The paper's arccos (3.2) loses half the digits (eq. 3.4): this test's bound catches it."""
    z1, z2, ref = acc_data
    got = [naive_fs(a[None, :], b[None, :])[0, 0] for a, b in zip(z1, z2)]
    abs_err, rel_err = _errors(got, ref)
    assert abs_err.max() > 1e3 * ABS_TOL
    assert rel_err.max() > REL_TOL


def test_near_duplicates_tiny_distance_scaled_coordinates():
    rng = np.random.default_rng(7)
    for m in (2, 5):
        for eps in (1e-13, 1e-12, 1e-10, 1e-9):
            for scale in (1e-150, 1.0, 1e150):
                z, z2 = pair_at(rng, m, eps, "perturb")
                z, z2 = z * scale, z2 * scale
                r = exact_fs(z, z2)
                g = d1(z, z2)
                assert abs(mpmath.mpf(g) - r) <= ABS_TOL
                if r >= 1e-9:
                    assert abs(mpmath.mpf(g) - r) / r <= REL_TOL


# ---------------------------------------------------------------------------------------------
# metric properties (hypothesis)
# ---------------------------------------------------------------------------------------------

coord = st.one_of(
    st.just(0.0),
    st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False).filter(
        lambda x: x == 0.0 or abs(x) >= 1e-3
    ),
)


@st.composite
def points(draw, m=None, k=1):
    if m is None:
        m = draw(st.sampled_from([2, 3, 5]))
    out = []
    for _ in range(k):
        re = draw(st.lists(coord, min_size=m, max_size=m))
        im = draw(st.lists(coord, min_size=m, max_size=m))
        z = np.array(re) + 1j * np.array(im)
        assume(np.any(z != 0))
        out.append(z)
    return out


@st.composite
def point_pair(draw):
    m = draw(st.sampled_from([2, 3, 5]))
    return draw(points(m=m, k=2))


@st.composite
def point_triple(draw):
    m = draw(st.sampled_from([2, 3, 5]))
    return draw(points(m=m, k=3))


@st.composite
def near_pair(draw):
    """A point and a tiny perturbation of it (hypothesis-chosen direction and size)."""
    m = draw(st.sampled_from([2, 3, 5]))
    (z,) = draw(points(m=m, k=1))
    (w,) = draw(points(m=m, k=1))
    eps = draw(st.sampled_from([1e-14, 1e-12, 1e-10, 1e-8, 1e-6]))
    return z, z + eps * np.linalg.norm(z) / np.linalg.norm(w) * w


scales = st.builds(
    lambda mag, ph: mag * complex(math.cos(ph), math.sin(ph)),
    st.sampled_from([1e-150, 1e-20, 1e-3, 1.0, 7.5, 1e20, 1e150]),
    st.floats(min_value=0.0, max_value=2 * math.pi),
)

SETTINGS = settings(max_examples=150, deadline=None)


@SETTINGS
@given(point_pair())
def test_metric_basic_properties_and_exactness(pair):
    z1, z2 = pair
    d12 = d1(z1, z2)
    d21 = d1(z2, z1)
    assert 0.0 <= d12 <= HALF_PI
    assert abs(d12 - d21) <= 2 * ABS_TOL  # both within ABS_TOL of the same exact value
    assert d1(z1, z1) <= ABS_TOL
    assert d1(z2, z2) <= ABS_TOL
    assert abs(mpmath.mpf(d12) - exact_fs(z1, z2)) <= ABS_TOL


@SETTINGS
@given(near_pair())
def test_near_pairs_accuracy_property(pair):
    z1, z2 = pair
    r = exact_fs(z1, z2)
    g = d1(z1, z2)
    assert abs(mpmath.mpf(g) - r) <= ABS_TOL
    if r >= 1e-9:
        assert abs(mpmath.mpf(g) - r) / r <= REL_TOL


@SETTINGS
@given(point_triple())
def test_triangle_inequality(triple):
    a, b, c = triple
    D = fs_distance(np.array([a, b, c]))
    assert D[0, 2] <= D[0, 1] + D[1, 2] + 1e-14
    assert D[0, 1] <= D[0, 2] + D[2, 1] + 1e-14
    assert D[1, 2] <= D[1, 0] + D[0, 2] + 1e-14


@SETTINGS
@given(point_pair(), scales, scales)
def test_projective_invariance(pair, lam, mu):
    z1, z2 = pair
    lz1, mz2 = lam * z1, mu * z2
    assume(np.all(np.isfinite(lz1)) and np.all(np.isfinite(mz2)))
    # the scaled coordinates must not have underflowed away (nonzero entries stay nonzero)
    assume(np.all((lz1 != 0) == (z1 != 0)) and np.all((mz2 != 0) == (z2 != 0)))
    got = d1(lz1, mz2)
    assert np.isfinite(got)
    # rounding of lam*z moves the stored point by ~1e-16: allow twice the accuracy bound,
    # and also require the accuracy bound against the exact distance of the scaled vectors.
    assert abs(got - d1(z1, z2)) <= 2 * ABS_TOL
    assert abs(mpmath.mpf(got) - exact_fs(lz1, mz2)) <= ABS_TOL


@pytest.mark.parametrize("lam", [1e150, 1e-150, 1e150j, (1 - 1j) * 1e-150, 1e300, 1e-300])
def test_projective_invariance_extreme_scales_no_overflow(lam):
    rng = np.random.default_rng(3)
    z = random_points(rng, 6, 5, scale_spread=False)
    D0 = fs_distance(z)
    with np.errstate(all="raise"):
        D = fs_distance(lam * z, z)
        D2 = fs_distance(lam * z)
    assert np.all(np.isfinite(D))
    np.testing.assert_allclose(D, D0, rtol=0, atol=2 * ABS_TOL)
    np.testing.assert_allclose(D2, D0, rtol=0, atol=2 * ABS_TOL)
    assert np.all(np.diag(D2) <= ABS_TOL)


@settings(max_examples=80, deadline=None)
@given(point_pair(), st.integers(min_value=0, max_value=2**32 - 1))
def test_unitary_invariance(pair, seed):
    z1, z2 = pair
    m = z1.shape[0]
    U = unitary_group.rvs(m, random_state=seed)
    got = d1(U @ z1, U @ z2)
    # U z is rounded at ~m ulps of |z|: a few 1e-16 in the distance
    assert abs(got - d1(z1, z2)) <= 5 * ABS_TOL


@SETTINGS
@given(point_pair())
def test_agrees_with_paper_arccos_when_well_conditioned(pair):
    z1, z2 = pair
    naive = float(naive_fs(z1[None, :], z2[None, :])[0, 0])
    assume(naive > 0.1)
    assert abs(d1(z1, z2) - naive) <= 1e-13


def test_bounded_by_half_pi_for_orthogonal_points():
    """Orthogonal points are exactly at pi/2; the result must not exceed the float pi/2."""
    rng = np.random.default_rng(11)
    for m in (2, 3, 5):
        e = np.eye(m, dtype=complex)
        D = fs_distance(e)
        assert np.all(D <= HALF_PI), D.max() - HALF_PI
        np.testing.assert_allclose(D[~np.eye(m, dtype=bool)], HALF_PI, rtol=0, atol=ABS_TOL)
        z = random_points(rng, 40, m)
        assert fs_distance(z).max() <= HALF_PI


@pytest.mark.parametrize("dtype", [np.float32, np.complex64, np.float64, np.complex128, np.int64])
@pytest.mark.parametrize("method", ["entrywise", "gemm"])
def test_orthogonal_points_are_half_pi_in_every_precision(dtype, method):
    """|<u, v>|^2 = 0 is below any underflow guard: in single precision the guard itself must
    not round to zero (it did: 2^-1000 -> 0 in float32 gave 0/0 = NaN, and nearest() inf)."""
    e = np.eye(5).astype(dtype)
    D = fs_distance(e, e, method=method)
    np.testing.assert_allclose(D[~np.eye(5, dtype=bool)], HALF_PI, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.diag(D), 0.0)
    idx, dist = nearest(e[:1], e[1:])
    assert idx[0] in range(4) and abs(float(dist[0]) - HALF_PI) < 1e-6


def test_unit_vectors_are_unit_and_scale_free():
    rng = np.random.default_rng(2)
    z = random_points(rng, 10, 4)
    for s in (1e-200, 1.0, 1e200):
        u = unit_vectors(z * s)
        np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1.0, rtol=0, atol=4e-16)
    u = unit_vectors(z)
    D = fs_distance_block(u, u)
    np.testing.assert_allclose(D, fs_distance(z), rtol=0, atol=0)


def test_public_exports():
    assert mfarray.fs_distance is fs_distance
    assert mfarray.nearest is nearest


# ---------------------------------------------------------------------------------------------
# block and Dask paths
# ---------------------------------------------------------------------------------------------


def spy_on(monkeypatch, name):
    """Replace distance.<name>(u, v) by a wrapper that records the block shapes it gets."""
    calls, orig = [], getattr(distmod, name)

    def spy(u, v):
        calls.append((u.shape[0], v.shape[0]))
        return orig(u, v)

    monkeypatch.setattr(distmod, name, spy)
    return calls


@pytest.mark.parametrize("m", [2, 5])
def test_row_blocks_equal_one_block(m, monkeypatch):
    rng = np.random.default_rng(21)
    z1 = random_points(rng, 37, m)
    z2 = random_points(rng, 23, m)
    one = fs_distance(z1, z2)
    seen = spy_on(monkeypatch, "fs_distance_block")
    blocked = fs_distance(z1, z2, block_elements=50)  # 2 rows of 23 per block
    assert len(seen) >= 10
    assert all(r * c <= 50 for r, c in seen)
    np.testing.assert_array_equal(blocked, one)
    tiny = fs_distance(z1, z2, block_elements=1)  # one row per block
    np.testing.assert_array_equal(tiny, one)
    assert blocked.shape == (37, 23)


def test_z2_none_equals_self():
    rng = np.random.default_rng(4)
    z = random_points(rng, 19, 3)
    np.testing.assert_array_equal(fs_distance(z), fs_distance(z, z))
    np.testing.assert_array_equal(fs_distance(z, block_elements=20), fs_distance(z, z))
    D = fs_distance(z)
    np.testing.assert_allclose(D, D.T, rtol=0, atol=2 * ABS_TOL)
    assert np.all(np.diag(D) <= ABS_TOL)


@pytest.mark.parametrize("m", [2, 5])
def test_dask_inputs_same_matrix(m):
    rng = np.random.default_rng(31)
    z1 = random_points(rng, 29, m)
    z2 = random_points(rng, 17, m)
    ref = fs_distance(z1, z2)
    dz1 = da.from_array(z1, chunks=(6, 1))  # several chunks in both axes
    dz2 = da.from_array(z2, chunks=(5, 2))
    out = fs_distance(dz1, dz2)
    assert isinstance(out, da.Array)
    assert out.shape == (29, 17)
    assert out.numblocks[0] > 1 and out.numblocks[1] > 1
    res = out.compute()
    np.testing.assert_array_equal(res, ref)
    # mixed Dask / NumPy
    np.testing.assert_array_equal(fs_distance(dz1, z2).compute(), ref)
    np.testing.assert_array_equal(fs_distance(z1, dz2).compute(), ref)
    # z2=None with Dask
    np.testing.assert_array_equal(fs_distance(dz1).compute(), fs_distance(z1))


def test_dask_accuracy_near_duplicates(acc_data):
    z1, z2, ref = acc_data
    idx = [k for k, a in enumerate(z1) if a.shape[0] == 5]
    a = np.array([z1[k] for k in idx])
    b = np.array([z2[k] for k in idx])
    D = fs_distance(da.from_array(a, chunks=(7, 2)), da.from_array(b, chunks=(9, 5))).compute()
    abs_err, rel_err = _errors(np.diag(D), [ref[k] for k in idx])
    assert abs_err.max() <= ABS_TOL
    assert rel_err.max() <= REL_TOL


# ---------------------------------------------------------------------------------------------
# the GEMM tile (fs_distance_block_gemm, fs_distance(method="gemm"))
# ---------------------------------------------------------------------------------------------

EPS = 2.0**-53  # unit roundoff
# entries at d >= NEAR_RADIUS: the GEMM rounding of <u, v> in C^5 (<= 2 m eps for unit vectors)
# amplified by 1 / sin d <= 1 / sin(NEAR_RADIUS), plus one ulp of arccos (d < 2: <= 2^-52);
# entries at d < NEAR_RADIUS are the sine form's few ulps, well inside
GEMM_TOL = 2 * 5 * EPS / math.sin(NEAR_RADIUS) + 2.0**-52


@pytest.fixture(scope="module")
def gemm_data():
    """Points z1, z2 (n, 5) and the exact distance of every pair of z1 x z2 (mpf, (n, n)).

    The diagonal holds the P^4 accuracy pairs (prescribed distances 1e-12 .. pi/2, orthogonal,
    equal and proportional points), pairs straddling NEAR_RADIUS and basis vectors e_k against
    e_{4-k} (orthogonal, or equal up to a phase); off the diagonal are generic pairs.
    """
    rng = np.random.default_rng(77)
    pairs = [(a, b) for _, a, b in ACC_PAIRS if a.shape[0] == 5]
    pairs += [pair_at(rng, 5, t, "rotate") for t in (0.45, 0.49, 0.4999, 0.5001, 0.51, 0.6)]
    e = np.eye(5, dtype=complex)
    pairs += [(e[k], (1 - 2j) * e[4 - k]) for k in range(5)]
    z1 = np.array([a for a, _ in pairs])
    z2 = np.array([b for _, b in pairs])
    ref = np.array([[exact_fs(a, b) for b in z2] for a in z1], dtype=object)
    return z1, z2, ref


def _abs_errors_matrix(D, ref):
    return np.array([[float(abs(mpmath.mpf(float(g)) - r)) for g, r in zip(*row)]
                     for row in zip(D, ref)])


def test_gemm_tile_accuracy_vs_mpmath(gemm_data):
    z1, z2, ref = gemm_data
    u, v = unit_vectors(z1), unit_vectors(z2)
    D = fs_distance_block_gemm(u, v)
    assert D.shape == ref.shape and D.dtype == np.float64
    assert D.min() >= 0.0 and D.max() <= HALF_PI
    assert _abs_errors_matrix(D, ref).max() <= GEMM_TOL
    # the near entries come from the sine form: bit-identical to the entrywise tile, and every
    # pair well inside NEAR_RADIUS is one of them (equal points: exactly zero)
    near = D < NEAR_RADIUS
    assert np.all(near[ref.astype(float) < 0.49])
    np.testing.assert_array_equal(D[near], fs_distance_block(u, v)[near])
    same = np.all(z1 == z2, axis=1)
    assert same.any() and np.all(np.diag(D)[same] == 0.0)
    assert np.all(np.diag(fs_distance_block_gemm(u, u)) == 0.0)
    # without the sine path (near=0) the arccos misses the bound by orders of magnitude
    D0 = fs_distance_block_gemm(u, v, near=0.0)
    assert _abs_errors_matrix(D0, ref).max() > 1e3 * GEMM_TOL


@pytest.mark.parametrize("lam", [2 - 3j, 1e150, 1e-150, 1e150j, (1 - 1j) * 1e-150])
def test_gemm_projective_invariance(gemm_data, lam):
    z1, z2, _ = gemm_data
    D = fs_distance(z1, z2, method="gemm")
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        scaled = [(lam * z1, z2), (z1, lam * z2)]
        for a, b in scaled:
            Ds = fs_distance(a, b, method="gemm")
            # both within GEMM_TOL of exact distances that differ only by the rounding of lam z
            np.testing.assert_allclose(Ds, D, rtol=0, atol=2 * GEMM_TOL)
            exact = [exact_fs(x, y) for x, y in zip(a, b)]
            err = max(abs(mpmath.mpf(float(g)) - r) for g, r in zip(np.diag(Ds), exact))
            assert err <= GEMM_TOL


def test_gemm_dask_and_row_blocks_agree_with_in_memory(gemm_data, monkeypatch):
    z1, z2, _ = gemm_data
    one = fs_distance(z1, z2, method="gemm")
    calls = spy_on(monkeypatch, "fs_distance_block_gemm")
    lazy = fs_distance(da.from_array(z1, chunks=(20, 2)), da.from_array(z2, chunks=(25, 5)),
                       method="gemm")
    assert isinstance(lazy, da.Array) and lazy.numblocks[0] > 1 and lazy.numblocks[1] > 1
    n_blocks = lazy.numblocks[0] * lazy.numblocks[1]
    calls.clear()  # Dask's call on empty blocks to infer the meta
    lazy = lazy.compute(scheduler="synchronous")
    assert len(calls) == n_blocks and all(r <= 20 and c <= 25 for r, c in calls)
    calls.clear()
    blocked = fs_distance(z1, z2, method="gemm", block_elements=200)  # 2 rows per block
    assert len(calls) > 1 and all(r * c <= 200 for r, c in calls)
    for got in (lazy, blocked):
        # each entry within GEMM_TOL of the exact distance; the sine-form entries bit-identical
        np.testing.assert_allclose(got, one, rtol=0, atol=2 * GEMM_TOL)
        near = (got < NEAR_RADIUS) & (one < NEAR_RADIUS)
        np.testing.assert_array_equal(got[near], one[near])


@pytest.mark.parametrize("method", ["entrywise", "gemm"])
def test_empty_inputs(method):
    z = random_points(np.random.default_rng(8), 4, 5)
    empty = np.zeros((0, 5), complex)
    assert fs_distance(empty, z, method=method).shape == (0, 4)
    assert fs_distance(z, empty, method=method).shape == (4, 0)
    assert fs_distance(empty, method=method).shape == (0, 0)


# ---------------------------------------------------------------------------------------------
# nearest
# ---------------------------------------------------------------------------------------------


def _check_nearest(idx, dist, zq, zr):
    D = fs_distance(zq, zr)
    idx = np.asarray(idx)
    dist = np.asarray(dist)
    assert idx.shape == (zq.shape[0],) and dist.shape == (zq.shape[0],)
    assert np.issubdtype(idx.dtype, np.integer)
    np.testing.assert_allclose(dist, D.min(axis=1), rtol=0, atol=ABS_TOL)
    srt = np.sort(D, axis=1)
    untied = (srt[:, 1] - srt[:, 0]) > 1e-12 if D.shape[1] > 1 else np.ones(len(D), bool)
    np.testing.assert_array_equal(idx[untied], D.argmin(axis=1)[untied])
    # tied or not, the returned index attains the minimum
    np.testing.assert_allclose(D[np.arange(len(idx)), idx], dist, rtol=0, atol=ABS_TOL)


def _near_duplicate_queries(rng, zr, k, eps=1e-10):
    """k queries at FS distance ~eps from randomly chosen reference points."""
    targets = rng.choice(zr.shape[0], size=k, replace=False)
    q = []
    for j in targets:
        z = zr[j]
        w = _orth_unit(rng, z / np.linalg.norm(z))
        q.append((z + eps * np.linalg.norm(z) * w) * (2.0 - 1.5j))
    return targets, np.array(q)


@pytest.mark.parametrize("m", [2, 5])
@pytest.mark.parametrize("budget", [1, 7, 64, 1 << 21])
def test_nearest_in_memory(m, budget):
    rng = np.random.default_rng(100 + m)
    zr = random_points(rng, 60, m)
    zq = random_points(rng, 25, m)
    targets, qdup = _near_duplicate_queries(rng, zr, 8)
    zq_all = np.concatenate([zq, qdup])
    idx, dist = nearest(zq_all, zr, block_elements=budget)
    _check_nearest(idx, dist, zq_all, zr)
    # the near duplicates: the right reference point, at an accurate tiny distance
    np.testing.assert_array_equal(idx[25:], targets)
    for k, j in enumerate(targets):
        r = exact_fs(qdup[k], zr[j])
        assert 5e-11 < float(r) < 2e-10
        e = abs(mpmath.mpf(float(dist[25 + k])) - r)
        assert e <= ABS_TOL  # at 1e-10 the spec is absolute (relative <= 1e-5)


def test_nearest_never_forms_full_matrix(monkeypatch):
    rng = np.random.default_rng(5)
    zr = random_points(rng, 200, 3)
    zq = random_points(rng, 50, 3)
    seen = spy_on(monkeypatch, "fs_distance_block")
    idx, dist = nearest(zq, zr, block_elements=100)
    assert seen and all(r * c <= 100 or c == 1 for r, c in seen)
    assert all(c < 200 for _, c in seen)
    _check_nearest(idx, dist, zq, zr)
    seen.clear()
    di, dd = nearest(da.from_array(zq, chunks=(10, 3)), zr, block_elements=100)
    di, dd = da.compute(di, dd, scheduler="synchronous")
    assert seen and all(r * c <= 100 for r, c in seen)
    _check_nearest(di, dd, zq, zr)


@pytest.mark.parametrize("m", [2, 5])
@pytest.mark.parametrize("ref_dask", [False, True])
def test_nearest_dask(m, ref_dask):
    rng = np.random.default_rng(200 + m)
    zr = random_points(rng, 45, m)
    zq = random_points(rng, 30, m)
    targets, qdup = _near_duplicate_queries(rng, zr, 6)
    zq_all = np.concatenate([zq, qdup])
    dq = da.from_array(zq_all, chunks=(7, 2))
    ref = da.from_array(zr, chunks=(10, 1)) if ref_dask else zr
    idx, dist = nearest(dq, ref, block_elements=20)
    assert isinstance(idx, da.Array) and isinstance(dist, da.Array)
    idx, dist = da.compute(idx, dist)
    _check_nearest(idx, dist, zq_all, zr)
    np.testing.assert_array_equal(idx[30:], targets)
    for k, j in enumerate(targets):
        r = exact_fs(qdup[k], zr[j])
        e = abs(mpmath.mpf(float(dist[30 + k])) - r)
        assert e <= ABS_TOL  # at 1e-10 the spec is absolute (relative <= 1e-5)
    # agrees with the in-memory path
    i2, d2 = nearest(zq_all, zr, block_elements=20)
    np.testing.assert_array_equal(idx, i2)
    np.testing.assert_allclose(dist, d2, rtol=0, atol=ABS_TOL)


def test_nearest_exact_duplicate_distance_zero():
    rng = np.random.default_rng(9)
    zr = random_points(rng, 12, 4)
    idx, dist = nearest(zr * (3 - 4j), zr, block_elements=5)
    np.testing.assert_array_equal(idx, np.arange(12))
    assert np.all(dist <= ABS_TOL)


def test_nearest_single_reference_and_empty_query():
    rng = np.random.default_rng(10)
    zr = random_points(rng, 1, 3)
    zq = random_points(rng, 5, 3)
    idx, dist = nearest(zq, zr)
    np.testing.assert_array_equal(idx, 0)
    np.testing.assert_allclose(dist, fs_distance(zq, zr)[:, 0], rtol=0, atol=ABS_TOL)
    idx, dist = nearest(np.zeros((0, 3), complex), zr)
    assert idx.shape == (0,) and dist.shape == (0,)


def test_nearest_empty_reference_raises():
    zq = np.ones((3, 3), complex)
    with pytest.raises(ValueError, match="empty"):
        nearest(zq, np.zeros((0, 3), complex))
    with pytest.raises(ValueError, match="empty"):
        nearest(da.from_array(zq, chunks=2), da.zeros((0, 3), dtype=complex))


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------

pytestmark_bad = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

GOOD = np.array([[1.0 + 0j, 2.0, 0.5j], [0.3, -1.0, 2.0]])


@pytest.mark.parametrize(
    "bad",
    [np.ones(3, complex), np.ones((2, 3, 3), complex), np.array(1.0 + 0j)],
    ids=["1d", "3d", "0d"],
)
def test_wrong_ndim_raises(bad):
    with pytest.raises(ValueError, match="shape"):
        fs_distance(bad, GOOD)
    with pytest.raises(ValueError, match="shape"):
        fs_distance(GOOD, bad)
    with pytest.raises(ValueError, match="shape"):
        nearest(bad, GOOD)
    with pytest.raises(ValueError, match="shape"):
        nearest(GOOD, bad)


def test_bad_method_raises():
    for bad in ("blas", "GEMM", None):
        with pytest.raises(ValueError, match="method"):
            fs_distance(GOOD, method=bad)
        with pytest.raises(ValueError, match="method"):
            fs_distance(da.from_array(GOOD), method=bad)


def test_too_few_coordinates_raises():
    with pytest.raises(ValueError, match="coordinates"):
        fs_distance(np.ones((3, 1), complex))


def test_mismatched_n_raises():
    other = np.ones((4, 4), complex)
    with pytest.raises(ValueError, match="same P\\^n"):
        fs_distance(GOOD, other)
    with pytest.raises(ValueError, match="same P\\^n"):
        fs_distance(da.from_array(GOOD), da.from_array(other))
    with pytest.raises(ValueError, match="same P\\^n"):
        nearest(GOOD, other)


@pytest.mark.parametrize(
    "value,pattern",
    [(np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "inf"), (complex(0, np.nan), "NaN"),
     (complex(np.inf, 1.0), "inf")],
)
@pytestmark_bad
def test_nan_inf_raise(value, pattern):
    bad = GOOD.copy()
    bad[1, 2] = value
    for call in (
        lambda: fs_distance(bad, GOOD),
        lambda: fs_distance(GOOD, bad),
        lambda: fs_distance(bad),
        lambda: fs_distance(bad, GOOD, block_elements=1),
        lambda: fs_distance(da.from_array(bad, chunks=1), GOOD).compute(),
        lambda: nearest(bad, GOOD),
        lambda: nearest(GOOD, bad),
        lambda: da.compute(*nearest(da.from_array(bad, chunks=1), GOOD)),
    ):
        with pytest.raises(ValueError, match=pattern):
            call()


@pytestmark_bad
def test_zero_vector_raises():
    bad = GOOD.copy()
    bad[0] = 0
    for call in (
        lambda: fs_distance(bad, GOOD),
        lambda: fs_distance(GOOD, bad),
        lambda: fs_distance(da.from_array(bad, chunks=1), GOOD).compute(),
        lambda: nearest(bad, GOOD),
        lambda: nearest(GOOD, bad),
        lambda: da.compute(*nearest(da.from_array(bad, chunks=1), GOOD)),
    ):
        with pytest.raises(ValueError, match="zero vector"):
            call()


def test_fs_distance_pairs_equals_the_block_entries_bit_for_bit(monkeypatch):
    """fs_distance_pairs(u[i], v[j]) is fs_distance_block(u, v)[i, j] bit for bit (the screening
    of the local operators decides nearest points with it), in any chunking; shapes refused."""
    rng = np.random.default_rng(11)
    u = unit_vectors(rng.standard_normal((70, 5)) + 1j * rng.standard_normal((70, 5)))
    v = unit_vectors(rng.standard_normal((50, 5)) + 1j * rng.standard_normal((50, 5)))
    v[:5] = u[:5]  # identical points: distance exactly 0
    v[10:15] = u[10:15] * np.exp(0.7j)  # the same points of P^n up to rounding
    v[5:10] = unit_vectors(u[5:10] + 1e-9 * rng.standard_normal((5, 5)))  # near pairs
    D = fs_distance_block(u, v)
    i, j = np.meshgrid(np.arange(70), np.arange(50), indexing="ij")
    got = distmod.fs_distance_pairs(u[i.ravel()], v[j.ravel()]).reshape(70, 50)
    assert np.array_equal(got.view(np.uint64), D.view(np.uint64))
    monkeypatch.setattr(distmod, "_chunk_entries", lambda x: 7)
    again = distmod.fs_distance_pairs(u[i.ravel()], v[j.ravel()]).reshape(70, 50)
    assert np.array_equal(again.view(np.uint64), D.view(np.uint64))
    assert np.all(got[np.arange(5), np.arange(5)] == 0) and np.all(got[np.arange(10, 15), np.arange(10, 15)] < 1e-15)
    with pytest.raises(ValueError, match="paired unit vectors"):
        distmod.fs_distance_pairs(u[:3], v[:4])
