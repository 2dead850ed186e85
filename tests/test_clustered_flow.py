"""Per-cluster flows (mfarray.flows.clustered, issue 10 "Per-cluster flows as stages")."""

from __future__ import annotations

import numpy as np
import pytest

import mfarray as mf
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
    got = mf.clustered_flow(clustered, delta, steps=6, test=test, loss=loss, kappa=kappa, **FIXED, **extra)
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
    got = mf.clustered_flow(clustered, delta, steps=3, **FIXED)
    _no_halvings(ref, got)
    assert np.abs(got.g_train.values - ref.g_train.values).max() > 1e-6


def test_test_points_go_to_the_cluster_of_their_nearest_train_point(sets):
    train, test, clustered = sets
    got = mf.clustered_flow(clustered, delta, steps=1, test=test, **FIXED)
    d = mf.fs_distance(test["z"].values, train["z"].values)  # small: the reference check only
    labels = clustered["cluster"].values
    np.testing.assert_array_equal(got.cluster_test.values, labels[np.argmin(d, axis=1)])
    np.testing.assert_array_equal(got.cluster_train.values, labels)
    np.testing.assert_array_equal(got.cluster_size_test.values,
                                  np.bincount(got.cluster_test.values, minlength=3))


def test_threaded_and_distributed_give_the_same_result(sets):
    distributed = pytest.importorskip("distributed")
    _, test, clustered = sets
    kwargs = {"steps": 3, "test": test, "loss": "sigma_squared"}
    local = mf.clustered_flow(clustered, delta, **kwargs)
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as lc, \
            distributed.Client(lc):
        remote = mf.clustered_flow(clustered, delta, **kwargs)
    for name in ("g_train", "g_test", "cluster_loss", "cluster_lr", "sigma_train_final", "sigma_test_final"):
        np.testing.assert_array_equal(remote[name].values, local[name].values)
    np.testing.assert_array_equal(remote.cluster_test.values, local.cluster_test.values)


def test_missing_cluster_variable_is_refused(sets):
    train, _, _ = sets
    with pytest.raises(ValueError, match=r"train.*mf\.cluster"):
        mf.clustered_flow(train, delta, steps=1)
    with pytest.raises(ValueError, match="kappa"):
        mf.clustered_flow(sets[2], delta, steps=1, kappa="mine")
