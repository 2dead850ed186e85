"""Lazy point-set stages: lazy in, lazy out, nothing computed twice, mixed lazy/computed inputs.

Every public function of ``mfarray.pointset`` that takes a point set accepts it lazy (Dask,
fresh from ``sample_points``, ``open_zarr`` or ``.persist()``) or computed, and metrics g as
NumPy, Dask or xarray DataArrays, in any mixture.
"""

import threading

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

import mfarray as mf
from mfarray import linalg, sampling
from mfarray.geometry import measures
from mfarray.pointset import (chart_counts, det_metric, eta, express_in_chart, kappa, points_from_z,
                              sample_points, select_chart, sigma_measure, split, to_chart)
from conftest import random_polynomial

N, CHUNK = 2000, 700


@pytest.fixture(scope="module")
def lazy():
    return sample_points(mf.fermat_quintic(), N, seed=1, chunk_size=CHUNK)


@pytest.fixture(scope="module")
def eager(lazy):
    return lazy.compute()


@pytest.fixture(scope="module")
def stored(lazy, tmp_path_factory):
    path = tmp_path_factory.mktemp("lazy") / "points.zarr"
    mf.to_zarr(lazy, path)
    return mf.open_zarr(path)


@pytest.fixture(scope="module")
def metric(eager):
    """A valid metric that is not a multiple of g_FS: g_FS (1 + |z_0|^2) + 0.1 v v^dagger."""
    z = eager.z.values
    v = z[:, 1:4]
    g = eager.g_fs.values * (1 + np.abs(z[:, 0]) ** 2)[:, None, None]
    return g + 0.1 * v[:, :, None] * np.conj(v[:, None, :])


def _reference(ds, g):
    """kappa, eta, sigma from NumPy by hand (B.10, B.11)."""
    det = np.linalg.det(g).real
    w, om = ds.weight.values, ds.omega2.values
    k = np.sum(w * det / om) / np.sum(w)
    e = det / (k * om)
    return k, e, np.sum(w * np.abs(1 - e)) / np.sum(w)


def _lazy(x):
    return dask.is_dask_collection(x.data if isinstance(x, xr.DataArray) else x)


def _ds(kind, request):
    if kind == "persisted":
        return request.getfixturevalue("lazy").persist()
    return request.getfixturevalue(kind)


G_KINDS = ["numpy", "dask", "xarray-numpy", "xarray-dask"]


def _g(kind, g, ds):
    if kind == "numpy":
        return g
    if kind == "dask":
        return da.from_array(g, chunks=(500, 3, 3))
    arr = xr.DataArray(g, dims=("point", "row", "col"))
    return arr.chunk({"point": 300}) if kind == "xarray-dask" else arr


# ------------------------------------------------------------------ 1. mixed inputs
@pytest.mark.parametrize("ds_kind", ["lazy", "eager", "stored", "persisted"])
@pytest.mark.parametrize("g_kind", G_KINDS)
def test_measures_accept_lazy_and_computed_inputs_mixed(ds_kind, g_kind, request, eager, metric):
    ds = _ds(ds_kind, request)
    g = _g(g_kind, metric, ds)
    k_ref, eta_ref, sigma_ref = _reference(eager, metric)
    s = sigma_measure(ds, g)
    assert isinstance(s, float) and s == pytest.approx(sigma_ref, rel=1e-10)
    k = kappa(ds, g)
    assert isinstance(k, float) and k == pytest.approx(k_ref, rel=1e-10)
    inputs_lazy = ds_kind != "eager" or "dask" in g_kind
    e = eta(ds, g)
    assert _lazy(e) == inputs_lazy
    assert np.allclose(e.values, eta_ref, rtol=1e-10)
    d = det_metric(ds, g)
    assert _lazy(d) == inputs_lazy
    assert np.allclose(d.values, np.linalg.det(metric).real, rtol=1e-10)
    assert np.array_equal(e.point.values, np.arange(N))


@pytest.mark.parametrize("ds_kind", ["lazy", "eager", "stored", "persisted"])
def test_fubini_study_measures_on_every_kind_of_set(ds_kind, request, eager):
    ds = _ds(ds_kind, request)
    k_ref, eta_ref, sigma_ref = _reference(eager, eager.g_fs.values)
    assert sigma_measure(ds) == pytest.approx(sigma_ref, rel=1e-10)
    assert sigma_measure(ds, ds.g_fs) == pytest.approx(sigma_ref, rel=1e-10)
    assert kappa(ds) == pytest.approx(k_ref, rel=1e-10)
    assert _lazy(eta(ds)) == (ds_kind != "eager")
    assert np.allclose(eta(ds).values, eta_ref, rtol=1e-10)


def test_eta_of_a_lazy_set_is_lazy_and_samples_once(monkeypatch):
    calls = _count_sampler(monkeypatch)
    ds = sample_points(mf.fermat_quintic(), 2000, seed=4, chunk_size=500)
    e = eta(ds)
    assert len(calls) == 0  # kappa is part of the graph, not computed on the way
    e.compute()
    assert len(calls) == 4


def test_metric_dataarray_must_match_the_point_coordinate(eager, metric):
    g = xr.DataArray(metric, dims=("point", "row", "col"), coords={"point": np.arange(N) + 1})
    with pytest.raises(ValueError, match="point coordinate"):
        sigma_measure(eager, g)
    with pytest.raises(ValueError, match="shape"):
        sigma_measure(eager, metric[:10])


# ------------------------------------------------------------------ 2. valid metrics only
def _invalid_metrics(g):
    lam, vec = np.linalg.eigh(g)
    two_negative = np.einsum("nab,nb,ncb->nac", vec, lam * np.array([-1, -1, 1]), np.conj(vec))
    non_hermitian = g.copy()
    non_hermitian[:, 0, 1] += 0.5 * np.abs(g[:, 0, 0])
    nan = g.copy()
    nan[7, 1, 1] = np.nan
    return {"-g_FS": -g, "two negative eigenvalues": two_negative, "non-Hermitian": non_hermitian,
            "NaN": nan}


@pytest.mark.parametrize("which", ["-g_FS", "two negative eigenvalues", "non-Hermitian", "NaN"])
@pytest.mark.parametrize("g_kind", G_KINDS)
def test_measures_refuse_invalid_metrics(which, g_kind, lazy, eager):
    bad = _invalid_metrics(eager.g_fs.values)[which]
    for ds in (lazy, eager):
        g = _g(g_kind, bad, ds)
        for f in (sigma_measure, kappa):
            with pytest.raises(ValueError, match="not valid"):
                f(ds, g)
        with pytest.raises(ValueError, match="not valid"):
            eta(ds, g).values
        with pytest.raises(ValueError, match="not valid"):
            det_metric(ds, g).values


def test_invalid_metric_message_counts_and_names_points(eager):
    g = eager.g_fs.values.copy()
    g[[3, 11]] *= -1
    with pytest.raises(ValueError, match=r"g: 2 of 2000 metrics are not valid.*\[3, 11\]"):
        sigma_measure(eager, g)


def test_det_of_a_given_metric_is_the_ldl_determinant(eager, metric):
    assert np.array_equal(det_metric(eager, metric).values, linalg.metrics(metric).det)


def test_bare_measures_refuse_mixed_namespaces(eager):
    d, o, w = (eager[v].values for v in ("det_g_fs", "omega2", "weight"))
    lazy_w = da.from_array(w, chunks=500)
    for f in (measures.sigma, measures.kappa):
        with pytest.raises(TypeError, match="one kind"):
            f(d, o, lazy_w)
        all_lazy = [da.from_array(x, chunks=500) for x in (d, o, w)]
        assert float(f(d, o, w)) == pytest.approx(float(f(*all_lazy)), rel=1e-13)


# ------------------------------------------------------------------ 3. select_chart computes once
def _count_sampler(monkeypatch):
    calls, lock = [], threading.Lock()
    real = sampling.sample_z

    def counting(surface, seed, start, stop):
        with lock:
            calls.append((start, stop))
        return real(surface, seed, start, stop)

    monkeypatch.setattr(sampling, "sample_z", counting)
    return calls


def test_select_chart_samples_once_per_chunk_and_stays_lazy(monkeypatch):
    calls = _count_sampler(monkeypatch)
    ds = sample_points(mf.fermat_quintic(), 4000, seed=3, chunk_size=1000)
    assert len(calls) == 0
    sub = select_chart(ds)
    assert len(calls) <= 4  # patch and elim computed once, together
    assert all(_lazy(sub[v]) for v in sub.data_vars)
    n_index = len(calls)
    assert sub.sizes["point"] > 0 and tuple(sub.attrs["chart"]) == (0, 1)
    assert len(calls) == n_index  # nothing more until the points are computed
    out = sub.compute()
    assert len(calls) <= n_index + 4
    ref = select_chart(ds.compute())
    xr.testing.assert_identical(out.drop_vars("weight"), ref.drop_vars("weight"))
    np.testing.assert_allclose(out.weight.values, ref.weight.values, rtol=1e-14)


def test_chart_counts_sample_once_per_chunk(monkeypatch):
    calls = _count_sampler(monkeypatch)
    counts = chart_counts(sample_points(mf.fermat_quintic(), 4000, seed=3, chunk_size=1000))
    assert sum(counts.values()) == 4000 and len(calls) <= 4


# ------------------------------------------------------------------ 4. a shared default chart
def test_default_chart_is_shared_by_independent_samples():
    X = mf.fermat_quintic()
    charts = set()
    for seed in range(5):
        ds = sample_points(X, 20_000, seed=seed)
        sub = select_chart(ds)
        charts.add(tuple(sub.attrs["chart"]))
        counts = chart_counts(ds)
        assert sub.sizes["point"] == counts[(0, 1)]
    assert charts == {(0, 1)}


def test_default_chart_rule_on_a_skewed_surface():
    X = random_polynomial(4, 5, 3)
    ds = sample_points(X, 6000, seed=0).compute()
    counts = chart_counts(ds)
    top = max(counts.values())
    key = tuple(select_chart(ds).attrs["chart"])
    assert counts[key] >= top / 2
    assert key == min(k for k, c in counts.items() if 2 * c >= top)
    # restricted to one patch: the same rule among that patch's charts
    in_patch = {k: c for k, c in counts.items() if k[0] == 3}
    key3 = tuple(select_chart(ds, patch=3).attrs["chart"])
    assert key3 == min(k for k, c in in_patch.items() if 2 * c >= max(in_patch.values()))


def test_select_chart_like_another_set(lazy, eager):
    a = select_chart(lazy, 2, 4)
    b = select_chart(sample_points(mf.fermat_quintic(), 3000, seed=9, chunk_size=1000), like=a)
    assert tuple(b.attrs["chart"]) == (2, 4) and np.all(b.patch.values == 2) and np.all(b.elim.values == 4)
    # a single-chart set without the attribute: its patch/elim decide
    c = select_chart(eager, 3, 1)
    del c.attrs["chart"]
    assert tuple(select_chart(lazy, like=c).attrs["chart"]) == (3, 1)
    with pytest.raises(ValueError, match="single chart"):
        select_chart(lazy, like=eager)
    with pytest.raises(ValueError, match="like"):
        select_chart(lazy, 2, like=a)
    with pytest.raises(TypeError, match="patch"):
        select_chart(lazy, patch="2")


# ------------------------------------------------------------------ 5. split
def test_split_is_lazy_disjoint_covering_and_deterministic(lazy, eager):
    train, test = split(lazy, test=0.25, seed=5)
    assert all(_lazy(part[v]) for part in (train, test) for v in part.data_vars)
    assert test.sizes["point"] == 500 and train.sizes["point"] == 1500
    a, b = train.point.values, test.point.values
    assert np.intersect1d(a, b).size == 0
    assert np.array_equal(np.sort(np.concatenate([a, b])), np.arange(N))
    for part in (train, test):
        assert float(part.weight.mean()) == pytest.approx(1.0, rel=1e-12)
        assert part.attrs["seed"] == 1 and part.attrs["surface_name"] == lazy.attrs["surface_name"]
        assert part.attrs["split"]["seed"] == 5 and part.attrs["split"]["test"] == 0.25
    assert train.attrs["split"]["part"] == "train" and test.attrs["split"]["part"] == "test"
    # same seed, same split, lazy or computed; another seed, another split
    train2, test2 = split(eager, test=0.25, seed=5)
    for got, want in ((train.compute(), train2), (test.compute(), test2)):
        # weights: mean 1 by a chunked (lazy) or a NumPy sum, equal to rounding
        xr.testing.assert_identical(got.drop_vars("weight"), want.drop_vars("weight"))
        np.testing.assert_allclose(got.weight.values, want.weight.values, rtol=1e-14)
    assert not np.array_equal(split(lazy, test=0.25, seed=6)[1].point.values, b)
    # z travels with its point
    assert np.array_equal(test2.z.values, eager.z.values[b])


def test_split_then_select_chart_share_the_chart(lazy):
    train, test = (select_chart(part) for part in split(lazy, test=0.5, seed=0))
    assert train.attrs["chart"] == test.attrs["chart"]
    assert train.attrs["split"]["part"] == "train"


@pytest.mark.parametrize("kw, exc, match", [
    ({"test": 0}, ValueError, "test"), ({"test": 1.0}, ValueError, "test"),
    ({"test": -0.5}, ValueError, "test"), ({"test": float("nan")}, ValueError, "test"),
    ({"test": True}, TypeError, "test"), ({"test": "0.2"}, TypeError, "test"),
    ({"test": 1e-9}, ValueError, "test"),
    ({"seed": -1}, ValueError, "seed"), ({"seed": True}, TypeError, "seed"),
    ({"seed": 1.0}, TypeError, "seed"), ({"seed": "1"}, TypeError, "seed"),
])
def test_split_refuses_bad_arguments(lazy, kw, exc, match):
    with pytest.raises(exc, match=match):
        split(lazy, **kw)


# ------------------------------------------------------------------ 6. the point coordinate
def test_point_coordinate_survives_every_stage(lazy, eager, tmp_path):
    for ds in (lazy, eager, points_from_z(mf.fermat_quintic(), eager.z.values[:50])):
        assert ds.point.dtype == np.int64
        assert np.array_equal(ds.point.values, np.arange(ds.sizes["point"]))
    sub = select_chart(lazy)
    idx = np.flatnonzero((eager.patch.values == 0) & (eager.elim.values == 1))
    assert np.array_equal(sub.point.values, idx)
    assert np.array_equal(lazy.isel(point=[5, 9]).point.values, [5, 9])
    train, test = split(sub, test=0.3, seed=1)
    assert set(train.point.values) | set(test.point.values) == set(idx)
    mf.to_zarr(test, tmp_path / "test.zarr")
    back = mf.open_zarr(tmp_path / "test.zarr")
    assert back.point.dtype == np.int64 and np.array_equal(back.point.values, test.point.values)
    assert back.attrs["chart"] == [0, 1] and back.attrs["split"]["part"] == "test"
    assert sigma_measure(back) == pytest.approx(sigma_measure(test), rel=1e-12)
    e = express_in_chart(test, 2, 3)
    assert np.array_equal(e.point.values, test.point.values)


def test_point_coordinate_does_not_depend_on_chunking():
    X = mf.fermat_quintic()
    a = sample_points(X, 3001, seed=7, chunk_size=3001).compute()
    b = sample_points(X, 3001, seed=7, chunk_size=777).compute()
    # identical, weights included; only the attributes recording the chunking (issue 9) differ
    assert (a.attrs.pop("chunk_size"), b.attrs.pop("chunk_size")) == (3001, 777)
    assert a.attrs.pop("call").endswith("chunk_size=3001)") and b.attrs.pop("call").endswith("chunk_size=777)")
    xr.testing.assert_identical(a, b)


# ------------------------------------------------------------------ 8. charts on lazy sets
def test_to_chart_and_express_in_chart_stay_lazy_with_mixed_metrics(lazy, eager, metric):
    # points where chart (4, 3) is tame (|z_4| and |dp/dz_3| not small), as in test_sampling
    X = mf.surface_of(eager)
    za, dp = np.abs(eager.z.values), np.abs(X.gradient(eager.z.values))
    tame = np.flatnonzero((za[:, 4] > 0.2) & (dp[:, 3] / dp.max(axis=1) > 0.05))
    lazy_sub, eager_sub, g_sub = lazy.isel(point=tame), eager.isel(point=tame), metric[tame]
    ref = to_chart(eager_sub, g_sub, 4, 3)
    for ds in (lazy_sub, eager_sub):
        for g_kind in G_KINDS:
            out = to_chart(ds, _g(g_kind, g_sub, ds), 4, 3)
            assert _lazy(out) == (ds is lazy_sub or "dask" in g_kind)
            assert np.array_equal(out.point.values, tame)
            np.testing.assert_allclose(out.values, ref.values, rtol=1e-12)
    e = express_in_chart(lazy_sub, 4, 3)
    assert all(_lazy(e[v]) for v in ("z", "omega2", "g_fs", "det_g_fs"))
    xr.testing.assert_allclose(e.compute(), express_in_chart(eager_sub, 4, 3), rtol=1e-12)
    assert np.array_equal(e.point.values, tame)


# ------------------------------------------------------------------ 9. distributed
def _pipeline():
    ds = select_chart(sample_points(mf.fermat_quintic(), 20_000, seed=21, chunk_size=5000))
    train, test = split(ds, test=0.25, seed=3)
    return train.compute(), test.compute(), sigma_measure(train), sigma_measure(test, test.g_fs * 2.0)


def test_pipeline_on_a_distributed_cluster_equals_threads():
    """select_chart, split and sigma_measure on 2 worker processes give exactly the threaded
    result (about 12 s on 2 busy cores, mostly starting the cluster)."""
    from dask.distributed import Client, LocalCluster

    with dask.config.set(scheduler="threads"):
        ref = _pipeline()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster):
        got = _pipeline()
    for a, b in zip(ref[:2], got[:2]):
        xr.testing.assert_identical(a, b)
    assert ref[2:] == got[2:]
    assert ref[0].sizes["point"] > 600 and ref[0].attrs["chart"] == [0, 1]
