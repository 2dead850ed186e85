"""Newton projection onto X along the normal (issue 11, the noise study's projected variant):
mfarray.geometry.projection.project_to_hypersurface and fs_distance_rows."""

import numpy as np
import pytest

import mfarray as mf
from mfarray.geometry import fs_distance_rows, project_to_hypersurface

SURFACES = {"fermat_quintic": mf.fermat_quintic(), "dwork_quintic_0.5": mf.dwork_quintic(0.5),
            "quartic_k3": mf.quartic_k3(), "cubic_curve": mf.cubic_curve()}


@pytest.fixture(scope="module", params=sorted(SURFACES))
def surface_points(request):
    X = SURFACES[request.param]
    z = mf.sample_points(X, 400, seed=5).z.values
    rng = np.random.default_rng(7)
    xi = rng.standard_normal(z.shape) + 1j * rng.standard_normal(z.shape)
    return X, z, xi


def _unit(z):
    return z / np.linalg.norm(z, axis=-1, keepdims=True)


def test_residual_at_rounding_level_on_every_surface(surface_points):
    X, z, xi = surface_points
    for scale in (1e-8, 1e-4, 1e-2, 0.3, 1.0, 30.0):
        proj = project_to_hypersurface(X, z + scale * xi)
        assert proj.converged.all()
        assert proj.residual.max() <= 2e-15, (X.label, scale, proj.residual.max())
        assert np.array_equal(proj.residual, X.relative_residual(proj.z))
        assert proj.steps.max() <= 12 and proj.steps.min() >= 1


def test_points_on_x_do_not_move(surface_points):
    X, z, _ = surface_points
    proj = project_to_hypersurface(X, z)
    assert np.array_equal(proj.z, z) and (proj.steps == 0).all()  # within tol: untouched, bit for bit
    forced = project_to_hypersurface(X, z, tol=1e-300, steps=3, strict=False)  # Newton steps from X
    assert forced.steps.max() == 3  # (fewer where the residual becomes exactly 0)
    assert fs_distance_rows(forced.z, z).max() <= 1e-15
    np.testing.assert_allclose(np.linalg.norm(forced.z, axis=1), np.linalg.norm(z, axis=1), rtol=1e-15)


@pytest.mark.parametrize("lam", [3.7e5 * np.exp(0.3j), 1e-7 * np.exp(-2.1j), -1.0])
def test_projective_equivariance(surface_points, lam):
    X, z, xi = surface_points
    zn = z + 0.2 * xi
    base = project_to_hypersurface(X, zn)
    scaled = project_to_hypersurface(X, lam * zn)
    assert np.abs(base.steps - scaled.steps).max() <= 1  # rounding may cross tol one step apart
    assert fs_distance_rows(base.z, scaled.z).max() <= 1e-14
    # the same representative, lambda times: the phase and scale of the input are kept
    err = np.linalg.norm(scaled.z - lam * base.z, axis=1) / np.linalg.norm(lam * base.z, axis=1)
    assert err.max() <= 1e-13


def test_displacement_is_normal_to_x(surface_points):
    """To first order the move is along the normal: its tangential part is O(eps) of it."""
    X, z, xi = surface_points
    eps = 1e-6
    proj = project_to_hypersurface(X, z + eps * xi)
    v = _unit(proj.z)
    u = _unit(z + eps * xi)
    c = np.sum(np.conj(v) * u, axis=1)
    delta = u * (np.conj(c) / np.abs(c))[:, None] - v  # noised minus projected, phase aligned
    delta -= np.sum(np.conj(v) * delta, axis=1)[:, None] * v  # horizontal at v
    normal = np.conj(X.gradient(v))
    normal -= np.sum(np.conj(v) * normal, axis=1)[:, None] * v
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    tangential = delta - np.sum(np.conj(normal) * delta, axis=1)[:, None] * normal
    ratio = np.linalg.norm(tangential, axis=1) / np.linalg.norm(delta, axis=1)
    assert ratio.max() <= 1e-4
    # the noise itself is not normal: the test could fail
    raw = eps * xi - np.sum(np.conj(_unit(z)) * eps * xi, axis=1)[:, None] * _unit(z)
    assert np.median(np.linalg.norm(raw - np.sum(np.conj(normal) * raw, axis=1)[:, None] * normal, axis=1)
                     / np.linalg.norm(raw, axis=1)) > 0.5


@pytest.mark.parametrize("scale", [1e-9, 1e-6, 1e-3])
def test_distance_moved_is_of_the_order_of_the_noise(surface_points, scale):
    X, z, xi = surface_points
    zn = z + scale * xi
    proj = project_to_hypersurface(X, zn)
    moved = fs_distance_rows(zn, proj.z)
    noise = fs_distance_rows(zn, z)  # the source is a point of X at this distance
    assert (moved <= noise * (1 + 1e-3) + 1e-15).all()  # no farther than the source (nearest point of X)
    assert moved.mean() >= 0.2 * noise.mean()  # the normal part of the noise is removed
    assert noise.mean() <= 5 * scale


def test_failures_are_flagged_never_returned_as_points_of_x():
    X = mf.fermat_quintic()
    z = np.array([[1, 0, 0, 0, 0], [1, -1, 0.3, 0, 0.1]], dtype=complex)  # a critical point of |p|/|z|^5; a start
    with pytest.raises(ValueError, match=r"1 of 2 point\(s\) did not reach X .*strict=False"):
        project_to_hypersurface(X, z)
    proj = project_to_hypersurface(X, z, strict=False)
    assert proj.converged.tolist() == [False, True]
    assert proj.residual[0] > 0.5 and proj.residual[1] <= 2e-15
    none = project_to_hypersurface(X, z, steps=0, strict=False)
    assert not none.converged.any() and np.array_equal(none.z, z)


@pytest.mark.parametrize("kwargs, match", [
    ({"z": np.ones((3, 4))}, "z must have shape"),
    ({"z": np.ones(5)}, "z must have shape"),
    ({"z": np.array([[np.nan, 1, 0, 0, 0]])}, "NaN or inf"),
    ({"z": np.zeros((1, 5))}, "zero vectors"),
    ({"z": np.array([["a"] * 5])}, "numeric"),
    ({"steps": -1}, "steps"),
    ({"steps": 2.5}, "steps"),
    ({"tol": 0.0}, "tol"),
    ({"tol": np.nan}, "tol"),
    ({"max_move": -1.0}, "max_move"),
    ({"polish": -1}, "polish"),
])
def test_bad_inputs_are_named(kwargs, match):
    args = {"z": np.array([[1, -1, 0.3, 0, 0.1]], dtype=complex), **kwargs}
    z = args.pop("z")
    with pytest.raises(ValueError, match=match):
        project_to_hypersurface(mf.fermat_quintic(), z, **args)
    with pytest.raises(TypeError, match="surface"):
        project_to_hypersurface("quintic", np.ones((1, 5)))


def test_fs_distance_rows_is_the_diagonal_of_fs_distance():
    z = mf.sample_points(mf.fermat_quintic(), 50, seed=2).z.values
    w = np.roll(z, 1, axis=0) * 1.7j
    np.testing.assert_allclose(fs_distance_rows(z, w), np.diag(mf.fs_distance(z, w)), rtol=0, atol=1e-15)
    assert (fs_distance_rows(z, z) == 0).all() and (fs_distance_rows(z, 3.0 * z) <= 1e-15).all()
    with pytest.raises(ValueError, match="same shape"):
        fs_distance_rows(z, w[:3])
