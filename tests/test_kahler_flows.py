"""Kähler-potential flows: the orthonormal section basis, the phi-flows of Appendix B (B.20,
B.21) through the phi-NTK, and the sign of B.21."""

import functools

import numpy as np
import pytest

import mfarray as mf
from mfarray import linalg
from mfarray.flows.sites import materialize
from mfarray.kahler import (
    SectionPotential,
    orthonormal_basis,
    phi_features,
    section_exponents,
    section_frame,
)

QUINTIC = mf.fermat_quintic()


@functools.cache
def _points(n, seed):
    return mf.sample_points(QUINTIC, n, seed=seed).compute()


def test_orthonormal_basis_is_orthonormal_and_spans_the_same_phis():
    ds = _points(2000, 1)
    frame = section_frame(QUINTIC, ds.z.values, section_exponents(QUINTIC, 3), ds.patch.values, ds.elim.values)
    B = orthonormal_basis(frame, ds.weight.values)
    s = frame.s @ B
    w = ds.weight.values / ds.weight.values.sum()
    gram = (s * w[:, None]).T @ s.conj()
    np.testing.assert_allclose(gram, np.eye(35), atol=1e-12)
    # the same function space: a monomial-basis phi is an orthonormal-basis phi with H' = B^-1 H B^-dagger
    H = np.diag(np.linspace(0.1, 1, 35)).astype(complex)
    Binv = np.linalg.inv(B)
    H2 = Binv @ H @ Binv.conj().T
    mono, ortho = SectionPotential(3), SectionPotential(3, B)
    f1, f2 = (m.prepare(QUINTIC, ds.z.values, ds.patch.values, ds.elim.values) for m in (mono, ortho))
    np.testing.assert_allclose(mono.metric(linalg.hermitian_to_real(H), f1),
                               ortho.metric(linalg.hermitian_to_real(H2), f2), atol=1e-10)


def test_kahler_flow_records_its_basis_and_predicts_with_it():
    train, test = _points(500, 2), _points(300, 3)
    r = mf.kahler_flow(train, 3, steps=5, test=test)
    assert r["section_basis"].shape == (35, 35)
    np.testing.assert_allclose(mf.predict(r, test).values, r.g_test.values, atol=1e-13)


def test_a_velocity_moves_phi_by_the_phi_ntk():
    """One fixed step of a phi-flow: phi changes at any point x by lr sum_y Theta_phi(x, y) w(y) v_c(y) / N,
    with Theta_phi(x, y) = f(x) . f(y) (the features) and v_c the centred velocity."""
    train, test = _points(300, 4), _points(200, 5)
    v = lambda eta: 3.0 * eta**2 + 7.0
    lr = 1e-2
    r = mf.kahler_flow(train, SectionPotential(2), steps=1, test=test, velocity=v, lr=lr, adaptive=False,
                       normalize=False)
    tr, te = materialize(train, test, one_chart=False)
    pot = SectionPotential(2)
    F, Ft = (phi_features(pot.prepare(QUINTIC, s.z, s.patch, s.elim)) for s in (tr, te))
    eta = linalg.hermitian_det(tr.g_fs) / tr.omega2
    eta = eta / np.sum(tr.weight * eta) * np.sum(tr.weight)  # kappa
    vc = v(eta) - np.sum(tr.weight * v(eta)) / np.sum(tr.weight)
    dphi = lr * Ft @ (F.T @ (tr.weight * vc)) / tr.n
    np.testing.assert_allclose(Ft @ r.theta.values, dphi, rtol=1e-10, atol=1e-14)
    assert np.abs(dphi).max() > 1e-4


def test_a_constant_velocity_moves_nothing():
    train = _points(200, 6)
    r = mf.kahler_flow(train, 2, steps=3, velocity=lambda eta: 0 * eta + 5.0, adaptive=False, normalize=False)
    assert np.abs(r.theta.values).max() < 1e-12


def test_b21_as_printed_runs_eta_backwards_and_reversed_converges():
    """(B.21) d phi/dt = -2 (eta - 1) makes d eta/dt = -2 eta Delta eta, a backward heat flow:
    sigma grows.  Reversed it is a forward one and sigma falls; (B.20) as printed falls too."""
    train, test = _points(1500, 7), _points(1000, 8)
    kw = {"steps": 6, "test": test, "adaptive": False, "lr": 0.1}
    printed = mf.kahler_flow(train, 3, velocity="ultralocal", **kw)
    reversed_ = mf.kahler_flow(train, 3, velocity="ultralocal", sign=-1, **kw)
    b20 = mf.kahler_flow(train, 3, velocity="two_derivative", **kw)
    s0 = printed.sigma_train.values[0]
    assert printed.sigma_train.values[-1] > 1.5 * s0
    assert reversed_.sigma_train.values[-1] < 0.5 * s0 and reversed_.sigma_test.values[-1] < 0.6 * s0
    assert b20.sigma_train.values[-1] < 0.5 * s0


def test_velocity_arguments_are_checked():
    train = _points(50, 9)
    with pytest.raises(ValueError, match="velocity must be one of"):
        mf.kahler_flow(train, 1, steps=1, velocity="calabi")
    with pytest.raises(ValueError, match="sign must be"):
        mf.kahler_flow(train, 1, steps=1, velocity="B.21", sign=2)


def test_a_balanced_reference_starts_at_donaldsons_metric_and_predicts_from_it():
    train, test = _points(2000, 10), _points(1000, 11)
    r = mf.kahler_flow(train, 2, steps=4, test=test, reference="balanced")
    bal = mf.kahler.balanced_metric(QUINTIC, train, 2)
    assert abs(r.sigma_test.values[0] - mf.kahler.algebraic_sigma(QUINTIC, test, bal.H, 2)) < 1e-12
    assert r.sigma_test.values[0] < 0.33  # k = 2 balanced on 2000 points: 0.305, below g_FS (0.37)
    assert r.sigma_test.values[-1] < r.sigma_test.values[0]
    np.testing.assert_allclose(mf.predict(r, test).values, r.g_test.values, atol=1e-13)
    with pytest.raises(ValueError, match="reference must be"):
        mf.kahler_flow(train, 2, steps=1, reference="ricci-flat")


def test_a_kahler_result_round_trips_through_zarr_and_still_predicts(tmp_path):
    train, test = _points(500, 12), _points(300, 13)
    r = mf.kahler_flow(train, 2, steps=3, test=test, reference="balanced")
    mf.to_zarr(r, tmp_path / "phi.zarr")
    back = mf.open_zarr(tmp_path / "phi.zarr").compute()
    np.testing.assert_allclose(mf.predict(back, test).values, r.g_test.values, atol=1e-13)
    assert float(mf.evaluate(back).gain_test) == float(mf.evaluate(r).gain_test)


def test_a_phi_network_flows_through_the_one_integrator():
    """NetworkPotential: gradient descent (the evolving phi-NTK) and B.20 through the network's
    tangent kernel lower sigma; phi's parameter pull-back equals finite differences; predict
    rebuilds the network."""
    from mfarray.kahler import NetworkPotential, PhiNetwork, network

    train, test = _points(400, 14), _points(300, 15)
    pot = NetworkPotential(PhiNetwork(widths=(16, 16), zero_head=False, seed=3))
    frame = pot.prepare(QUINTIC, train.z.values, train.patch.values, train.elim.values)
    theta = pot.init(QUINTIC)
    c = np.random.default_rng(0).normal(size=400)
    d = np.random.default_rng(1).normal(size=theta.shape)
    h = 1e-6
    fd = (c @ pot.values(theta + h * d, frame) - c @ pot.values(theta - h * d, frame)) / (2 * h)
    assert abs(pot.values_vjp(theta, frame, c) @ d - fd) < 1e-6 * abs(fd)
    gd = mf.kahler_flow(train, pot, steps=5, test=test)
    # full-batch gradient descent moves a network slowly (0.374 -> 0.359 in 5 steps; Adam on
    # mini-batches is mfarray.kahler.train_phi_network): only the direction is checked
    assert np.all(np.diff(gd.sigma_train.values) < 0)
    np.testing.assert_allclose(mf.predict(gd, test).values, gd.g_test.values, atol=1e-13)
    b20 = mf.kahler_flow(train, pot, steps=5, test=test, velocity="B.20", adaptive=False, lr=0.05)
    assert b20.sigma_train.values[-1] < b20.sigma_train.values[0] - 0.01
    assert network.num_params(pot.config, QUINTIC) == gd.sizes["param"]


def test_the_initial_metrics_of_a_result_are_the_flows_start():
    train, test = _points(1500, 17), _points(500, 18)
    r = mf.kahler_flow(train, 2, steps=2, test=test, reference="balanced")
    ev = mf.evaluate(r)
    assert abs(float(ev.sigma_train_initial) - r.sigma_train.values[0]) < 1e-12
    assert abs(float(ev.sigma_test_initial) - r.sigma_test.values[0]) < 1e-12
    assert float(ev.sigma_test_initial) < 0.33  # the balanced start, not g_FS (0.37)


def test_a_linearised_phi_network_flows_its_frozen_empirical_ntk():
    """TangentPotential: its tangent kernel J J^T equals the phi-network's empirical metric-NTK
    built independently (per-point pull-backs, phi_network_ntk); kahler_flow with it lowers the
    loss, its metrics are g_FS + J delta, and predict rebuilds it."""
    from mfarray.experiments.phi_kernel import phi_network_ntk
    from mfarray.kahler import PhiNetwork, TangentPotential, network

    train, test = _points(300, 19), _points(200, 20)
    config = PhiNetwork(widths=(12, 10), zero_head=False, seed=4)
    at = network.init(config, QUINTIC) * 1.3
    pot = TangentPotential(config, at)
    probe = train.isel(point=slice(0, 14))
    frame = pot.prepare(QUINTIC, probe.z.values, probe.patch.values, probe.elim.values)
    K = phi_network_ntk(config, at, frame)  # (14, 14, 9, 9)
    rng = np.random.default_rng(3)
    a = rng.standard_normal((14, 3, 3)) + 1j * rng.standard_normal((14, 3, 3))
    G = a + np.conj(np.swapaxes(a, 1, 2))
    moved = linalg.hermitian_to_real(pot.ddbar(pot.vjp(None, frame, G), frame))
    expected = np.einsum("abij,bj->ai", K, linalg.hermitian_to_real(G))
    np.testing.assert_allclose(moved, expected, rtol=0, atol=1e-12 * np.abs(expected).max())
    assert np.array_equal(pot.metric(pot.init(QUINTIC), frame), 0.5 * (frame.g_fs + np.conj(np.swapaxes(frame.g_fs, 1, 2))))

    r = mf.kahler_flow(train, pot, steps=6, test=test)
    assert np.all(np.diff(r.loss.values) < 0)  # sigma_squared, judged by backtracking
    assert r.loss.values[-1] < 0.9 * r.loss.values[0]
    full = pot.prepare(QUINTIC, train.z.values, train.patch.values, train.elim.values)
    np.testing.assert_allclose(r.g_train.values, pot.metric(r.theta.values, full), atol=1e-13)
    np.testing.assert_allclose(mf.predict(r, test).values, r.g_test.values, atol=1e-13)
    np.testing.assert_array_equal(r["linearised_at"].values, at)
    with pytest.raises(ValueError, match="at must be"):
        TangentPotential(config, at[None])
    with pytest.raises(ValueError, match="parameters of this config"):
        TangentPotential(PhiNetwork(widths=(5,)), at).init(QUINTIC)


def test_phi_network_potentials_split_their_points_into_parts_on_threads(monkeypatch):
    """NetworkPotential and TangentPotential evaluate parts of PART points on threads: the same bits
    for one thread and two, and the bare one-call functions' numbers to rounding (sums in another
    order)."""
    from mfarray import backend
    from mfarray.kahler import NetworkPotential, PhiNetwork, TangentPotential, network, potentials

    ds = _points(2500, 21)  # three parts
    config = PhiNetwork(widths=(10, 8), zero_head=False, seed=2)
    theta = network.init(config, QUINTIC)
    rng = np.random.default_rng(4)
    G = rng.standard_normal((2500, 3, 3)) + 1j * rng.standard_normal((2500, 3, 3))
    G = G + np.conj(np.swapaxes(G, 1, 2))
    c, d = rng.standard_normal(2500), rng.standard_normal(theta.shape)
    for pot, arg in ((NetworkPotential(config), theta), (TangentPotential(config, theta), d)):
        frame = pot.prepare(QUINTIC, ds.z.values, ds.patch.values, ds.elim.values)
        runs = []
        for n in (1, 2):
            monkeypatch.setattr(backend, "cores", lambda n=n: n)
            runs.append((pot.ddbar(arg, frame), pot.vjp(arg, frame, G), pot.values(arg, frame),
                         pot.values_vjp(arg, frame, c)))
        for a, b in zip(*runs):
            np.testing.assert_array_equal(a, b)
        bare_vjp = network.metric_vjp(config, theta, frame, G)
        np.testing.assert_allclose(runs[0][1], bare_vjp, rtol=1e-12, atol=1e-12 * np.abs(bare_vjp).max())
    assert potentials.PART < 2500


def test_an_integer_degree_needs_as_many_train_points_as_sections(monkeypatch):
    """kahler_flow(train, k) makes the degree-k sections orthonormal on the train points: fewer
    points than sections (or too few with positive weight) is refused naming train and k, not
    a LinAlgError from the Cholesky inside; a degree out of [1, 12] is refused before any point
    is computed (k = 30 used to build a 7.6 GiB Gram matrix first)."""
    for n, k, n_s in ((20, 3, 35), (10, 2, 15), (1, 3, 35)):
        with pytest.raises(ValueError, match=rf"train has {n} point.* n_s = {n_s} sections.*more train points"):
            mf.kahler_flow(_points(n, 2), k, steps=1)
    ds = _points(40, 3).copy(deep=True)
    ds["weight"].values[5:] = 0.0  # 5 points carry the measure
    frame = section_frame(QUINTIC, ds.z.values, section_exponents(QUINTIC, 2), ds.patch.values, ds.elim.values)
    with pytest.raises(ValueError, match="do not determine the n_s = 15 sections"):
        orthonormal_basis(frame, ds.weight.values)
    with pytest.raises(ValueError, match="train has 40 point.*5 of positive weight.* n_s = 15 sections"):
        mf.kahler_flow(ds, 2, steps=1)

    def no_points(*args, **kwargs):
        raise AssertionError("the points were computed before the degree was checked")

    monkeypatch.setattr("mfarray.flows.kahler.materialize", no_points)
    for k in (0, 13, 30):
        with pytest.raises(ValueError, match=r"k must be an integer in \[1, 12\]"):
            mf.kahler_flow(_points(20, 2), k, steps=1)


def test_non_finite_parameters_are_refused_by_name():
    from mfarray.kahler import NetworkPotential, PhiNetwork, TangentPotential

    train = _points(50, 4)
    with pytest.raises(ValueError, match="theta0 has non-finite entries"):
        mf.kahler_flow(train, 1, steps=1, theta0=np.full(25, np.nan))
    config = PhiNetwork(widths=(6,))
    at = np.zeros(TangentPotential(config, np.zeros(3)).size(QUINTIC))
    at[2] = np.inf
    with pytest.raises(ValueError, match="at has non-finite entries"):
        TangentPotential(config, at)
    wild = NetworkPotential(PhiNetwork(widths=(8,), zero_head=False, sigma_w=5.0))
    with pytest.raises(ValueError, match="initial metrics of `model` at the train points"):
        mf.kahler_flow(_points(200, 4), wild, steps=1)


def test_sign_is_checked_before_any_point_is_computed(monkeypatch):
    """sign=-1.0 was accepted by the velocity and then failed formatting '{sign:+d}' after the points
    were computed; sign=5 without a velocity ran and recorded velocity_sign = 5."""
    from mfarray.flows import kahler as flows_kahler

    ds = _points(60, 2)
    r = mf.kahler_flow(ds, 2, steps=1, velocity="B.21", sign=-1.0, lr=0.1, normalize=True, adaptive=False)
    assert r.attrs["velocity_sign"] == -1
    monkeypatch.setattr(flows_kahler, "materialize", lambda *a, **k: (_ for _ in ()).throw(AssertionError("computed")))
    for sign, velocity in ((5, None), (0, "B.20"), (True, "B.20"), (-1, None)):
        with pytest.raises(ValueError, match="sign"):
            mf.kahler_flow(ds, 2, steps=1, velocity=velocity, sign=sign)
