"""Per-cluster flows (mfarray.flows.clustered, issue 10 "Per-cluster flows as stages")."""

from __future__ import annotations

import dask
import numpy as np
import pytest
import xarray as xr
from dask.callbacks import Callback

import mfarray as mf
from mfarray.backend import is_dask
from mfarray.kernels import delta

# fixed small steps: no halvings, so the step control couples no points (module docstring)
FIXED = {"lr": 0.002, "adaptive": False}


@pytest.fixture(scope="module")
def sets():
    """About 300 one-chart quintic points, split 4:1, the train part in 3 clusters (lazy)."""
    ds = mf.select_chart(mf.sample_points(mf.fermat_quintic(), 6000, seed=4, chunk_size=2000))
    train, test = mf.split(ds, 0.2, seed=0)
    n = train.sizes["point"]
    clustered = mf.cluster(train, size=n // 3, batch=n, seed=0)
    assert clustered.attrs["cluster"]["n_clusters"] == 3
    return train, test, clustered


def _no_halvings(*results):
    for r in results:
        for name in ("rejected", "cluster_rejected"):
            if name in r:
                assert int(r[name].sum()) == 0


@pytest.mark.parametrize("loss, kappa", [("sigma_squared", "global"), ("mse", "cluster")])
def test_block_diagonal_kernel_gives_the_unclustered_flow(sets, loss, kappa):
    train, test, clustered = sets
    extra = {}
    if loss == "mse":  # a pointwise loss without kappa: any target will do
        extra["target"] = 1.3 * train["g_fs"].values
    ref = mf.kernel_flow(train, delta, steps=6, test=test, loss=loss, **FIXED, **extra)
    got = mf.clustered_flow(clustered, delta, steps=6, test=test, loss=loss, kappa=kappa, **FIXED, **extra).compute()
    _no_halvings(ref, got)
    assert np.array_equal(got.point.values, ref.point.values)
    assert np.array_equal(got.test_point.values, ref.test_point.values)
    for name in ("g_train", "g_test", "g_train_initial", "g_test_initial"):
        np.testing.assert_allclose(got[name].values, ref[name].values, rtol=0, atol=1e-12)
    # the overall sigma of the combined metrics is the unclustered flow's last record and evaluate's
    np.testing.assert_allclose(got.sigma_train_final.item(), ref.sigma_train[-1].item(), rtol=1e-12)
    np.testing.assert_allclose(got.sigma_test_final.item(), ref.sigma_test[-1].item(), rtol=1e-12)
    assert got.sigma_train_final.item() < 0.99 * got.sigma_train_initial.item()  # the flow moved
    ev = mf.evaluate(got)
    assert ev.sigma_train_final.item() == got.sigma_train_final.item()
    assert got.sizes["cluster"] == 3 and got.cluster_loss.dims == ("cluster", "step")
    assert int(got.cluster_size_train.sum()) == train.sizes["point"]
    for name in got.variables:
        assert got[name].attrs.get("description"), name
    assert isinstance(got.attrs["clustering"], str) and isinstance(got.attrs["flow_options"], str)


def test_per_cluster_kappa_is_what_clustering_changes(sets):
    """sigma_squared with each cluster's own kappa: kappas differ, so the flow moves differently."""
    train, _, clustered = sets
    ref = mf.kernel_flow(train, delta, steps=3, **FIXED)
    got = mf.clustered_flow(clustered, delta, steps=3, **FIXED).compute()
    _no_halvings(ref, got)
    assert np.abs(got.g_train.values - ref.g_train.values).max() > 1e-6


def test_test_points_go_to_the_cluster_of_their_nearest_train_point(sets):
    train, test, clustered = sets
    got = mf.clustered_flow(clustered, delta, steps=1, test=test, **FIXED).compute()
    d = mf.fs_distance(test["z"].values, train["z"].values)  # small: the reference check only
    labels = clustered["cluster"].values
    np.testing.assert_array_equal(got.cluster_test.values, labels[np.argmin(d, axis=1)])
    np.testing.assert_array_equal(got.cluster_train.values, labels)
    np.testing.assert_array_equal(got.cluster_size_test.values,
                                  np.bincount(got.cluster_test.values, minlength=3))


def test_threaded_and_distributed_give_the_same_result(sets):
    """The lazy chain (the fixture's sample -> select_chart -> split -> cluster, then clustered_flow
    -> evaluate) computed on the threaded scheduler and on 2 worker processes: the same bits."""
    distributed = pytest.importorskip("distributed")
    _, test, clustered = sets
    got = mf.clustered_flow(clustered, delta, steps=3, test=test, loss="sigma_squared")
    ev = mf.evaluate(got)
    local, local_ev = dask.compute(got, ev, scheduler="threads")
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0") as lc, \
            distributed.Client(lc):
        remote, remote_ev = dask.compute(got, ev)
    for name in ("g_train", "g_test", "dual_cluster", "cluster_loss", "cluster_lr", "sigma_train_final",
                 "sigma_test_final", "cluster_size_test"):
        np.testing.assert_array_equal(remote[name].values, local[name].values)
    np.testing.assert_array_equal(remote.cluster_test.values, local.cluster_test.values)
    for name in ev.data_vars:
        assert remote_ev[name].item() == local_ev[name].item(), name
    assert local_ev.sigma_test_final.item() == local.sigma_test_final.item()


def test_missing_cluster_variable_is_refused(sets):
    train, _, _ = sets
    with pytest.raises(ValueError, match=r"train.*mf\.cluster"):
        mf.clustered_flow(train, delta, steps=1)
    with pytest.raises(ValueError, match="kappa"):
        mf.clustered_flow(sets[2], delta, steps=1, kappa="mine")


class Computes(Callback):
    """Counts the computes that start on a local scheduler while active."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def _start(self, dsk):
        self.count += 1


def _refuse(*args, **kwargs):
    raise AssertionError("a stage computed something before it was asked to")


def test_the_chain_is_lazy_until_asked_and_computes_once():
    with dask.config.set(scheduler=_refuse):
        ds = mf.sample_points(mf.fermat_quintic(), 4000, seed=5, chunk_size=1000)
    with Computes() as counted:  # the one eager pass of select_chart: which points are in the chart (data)
        ds = mf.select_chart(ds)
    assert counted.count <= 1
    with dask.config.set(scheduler=_refuse):
        train, test = mf.split(ds, 0.2, seed=1)
        clustered = mf.cluster(train, size=train.sizes["point"] // 2, batch=train.sizes["point"], seed=0)
        got = mf.clustered_flow(clustered, delta, steps=2, test=test, **FIXED)
        ev = mf.evaluate(got)
    assert all(is_dask(got[name].data) for name in got.data_vars)
    assert is_dask(got.cluster_test.data) and is_dask(got.cluster_train.data)
    assert all(is_dask(ev[name].data) for name in ev.data_vars)
    # shapes known before computing: point counts from the inputs, C from mf.cluster, steps from the call
    n, nt = train.sizes["point"], test.sizes["point"]
    assert got.g_train.shape == (n, 3, 3) and got.g_test.shape == (nt, 3, 3) and got.cluster_loss.shape == (2, 3)
    assert got.attrs["n_clusters"] == 2 and got.attrs["chart"] == ds.attrs["chart"]
    with Computes() as counted:
        result, summary = dask.compute(got, ev)
    assert counted.count == 1
    eager = mf.evaluate(result)
    for name in ev.data_vars:
        assert summary[name].item() == eager[name].item(), name
    assert summary.sigma_train_final.item() == result.sigma_train_final.item()
    assert summary.sigma_train_final.item() < summary.sigma_train_initial.item()
    assert int(result.cluster_size_train.sum()) == n and int(result.cluster_size_test.sum()) == nt
    np.testing.assert_array_equal(result.cluster_steps_done.values, [2, 2])
    assert isinstance(result.g_train.data, np.ndarray)


def test_computed_inputs_give_a_computed_result(sets):
    _, test, clustered = sets
    got = mf.clustered_flow(clustered.compute(), delta, steps=1, test=test.compute(), **FIXED)
    assert not any(is_dask(got[name].data) for name in got.variables)
    lazy = mf.clustered_flow(clustered, delta, steps=1, test=test, **FIXED).compute()
    xr.testing.assert_identical(got.drop_attrs(), lazy.drop_attrs())


def test_a_cluster_without_train_points_flows_nothing(sets):
    """Cluster ids come from mf.cluster's record (C = 3); a subset may leave one empty."""
    _, test, clustered = sets
    labels = clustered["cluster"].values
    subset = clustered.isel(point=np.flatnonzero(labels != 1))
    got = mf.clustered_flow(subset, delta, steps=2, test=test, **FIXED).compute()
    np.testing.assert_array_equal(got.cluster.values, [0, 1, 2])
    assert got.cluster_size_train.values[1] == 0 and got.cluster_size_test.values[1] == 0
    assert got.cluster_steps_done.values.tolist() == [2, 0, 2]
    assert np.isnan(got.cluster_loss.values[1]).all() and np.isfinite(got.cluster_loss.values[[0, 2]]).all()
    assert set(np.unique(got.cluster_test.values)) <= {0, 2}


def test_cluster_ids_without_mf_cluster_record(sets):
    """A cluster variable made by hand: its labels are computed at the call, the ids are its values."""
    _, _, clustered = sets
    labels = clustered["cluster"].values
    hand = clustered.assign(cluster=("point", np.where(labels == 2, 7, labels)))
    del hand.attrs["cluster"]
    got = mf.clustered_flow(hand, delta, steps=1, **FIXED).compute()
    np.testing.assert_array_equal(got.cluster.values, [0, 1, 7])
    np.testing.assert_array_equal(got.cluster_size_train.values, np.bincount(labels, minlength=3))


def test_labels_outside_the_recorded_clusters_are_refused_when_computed(sets):
    _, _, clustered = sets
    bad = clustered.assign(cluster=clustered["cluster"] + 1)  # 1..3 with n_clusters = 3 recorded
    got = mf.clustered_flow(bad, delta, steps=1, **FIXED)
    with pytest.raises(ValueError, match=r"train\.cluster has .* label\(s\) outside"):
        got.compute()


def test_bad_options_are_refused_at_the_call(sets):
    _, _, clustered = sets
    with dask.config.set(scheduler=_refuse):
        with pytest.raises(ValueError, match="lr"):
            mf.clustered_flow(clustered, delta, steps=1, lr=-1.0)
        with pytest.raises(ValueError, match="loss"):
            mf.clustered_flow(clustered, delta, steps=1, loss="nope")
        with pytest.raises(TypeError, match="kernel_flow does not take"):
            mf.clustered_flow(clustered, delta, steps=1, lrr=0.1)
        with pytest.raises(ValueError, match="steps"):
            mf.clustered_flow(clustered, delta, steps=-1)


def test_per_point_arrays_of_the_wrong_length_are_refused_at_the_call(sets):
    """A g0 with 10 rows too many was indexed by cluster positions and used silently; 10 too few
    was an IndexError inside a Dask task (kernel_flow refuses both)."""
    _, test, clustered = sets
    n, m = clustered.sizes["point"], test.sizes["point"]
    g = np.tile(np.eye(3, dtype=complex), (n + 10, 1, 1))
    with dask.config.set(scheduler=_refuse):
        for rows in (n + 10, n - 10):
            with pytest.raises(ValueError, match=rf"g0 must have shape \({n}, 3, 3\)"):
                mf.clustered_flow(clustered, delta, steps=1, g0=g[:rows])
        with pytest.raises(ValueError, match=rf"g0_test must have shape \({m}, 3, 3\)"):
            mf.clustered_flow(clustered, delta, steps=1, test=test, g0_test=g[:m + 1])
        with pytest.raises(ValueError, match="g0_test was given without a test set"):
            mf.clustered_flow(clustered, delta, steps=1, g0_test=g[:m])



def test_blas_threads_are_as_before_after_overlapping_cluster_tasks(sets):
    """Cluster tasks leave BLAS alone (module docstring): a threaded run keeps the thread count."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    _, _, clustered = sets
    small = mf.cluster(clustered.drop_vars("cluster"), size=20, batch=clustered.sizes["point"], seed=0)

    def blas():
        return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]

    before = blas()
    with dask.config.set(scheduler="threads", num_workers=4):
        mf.clustered_flow(small, delta, steps=1, **FIXED).compute()
    assert blas() == before


def test_a_flow_error_names_its_cluster_when_computed(sets):
    _, _, clustered = sets
    got = mf.clustered_flow(clustered, delta, steps=2, lr=1e3, adaptive=False, max_halvings=0)  # builds only
    with pytest.raises(mf.FlowError) as info:
        got.compute()
    assert info.value.cluster in (0, 1, 2)
    assert any("in clustered_flow: the flow of cluster" in note for note in info.value.__notes__)
