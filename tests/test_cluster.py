"""mfarray.cluster: the paper's batched clustering (§3.1, eq. 3.3), its quality and Figure 2."""

from __future__ import annotations

import dask
import numpy as np
import pytest
import xarray as xr

import mfarray as mf
from mfarray.cluster import (
    ClusterConfig,
    cluster,
    cluster_quality,
    figure2_data,
    k_nearest,
    max_distances,
    merge_assignment,
    merge_paper,
    plan_batches,
)
from mfarray.plots import plot_figure2
from mfarray.cluster.linkage import (
    average_linkage_labels,
    canonical_labels,
    condensed_distances,
    nn_chain_average,
    unit_points,
)


def _same_partition(a, b):
    """True iff labels a and b (n,) split the points into the same groups."""
    return np.array_equal(canonical_labels(a), canonical_labels(b))


def _groups(n_groups=4, per=150, noise=0.03, seed=5):
    """Points of P^4 near n_groups random centres (each coordinate moved by ~noise): well separated
    (within a group d_FS < 0.2, between groups > 0.6, checked)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_groups, 5)) + 1j * rng.standard_normal((n_groups, 5))
    truth = np.repeat(np.arange(n_groups), per)
    z = centres[truth] + noise * (rng.standard_normal((truth.size, 5)) + 1j * rng.standard_normal((truth.size, 5)))
    perm = rng.permutation(truth.size)
    z, truth = z[perm], truth[perm]
    d = mf.fs_distance(z)
    same = truth[:, None] == truth[None, :]
    assert d[same].max() < 0.2 and d[~same].min() > 0.6
    return xr.Dataset({"z": (("point", "ambient"), z)}, coords={"point": np.arange(truth.size)}), truth


# ------------------------------------------------------------------ one mini-batch
def test_batch_clustering_is_scikit_learns_average_linkage(quintic_points):
    from sklearn.cluster import AgglomerativeClustering

    z = quintic_points.z.values[:400]
    d = mf.fs_distance(z, method="gemm")
    for c in (1, 3, 8):
        ref = AgglomerativeClustering(n_clusters=c, metric="precomputed", linkage="average").fit_predict(d)
        got = average_linkage_labels(unit_points(z), c)
        assert np.array_equal(got, canonical_labels(ref))
        assert got[0] == 0 and set(got) == set(range(c))


def test_nn_chain_is_scipys_average_linkage_bit_for_bit(quintic_points):
    """The compiled reduction gives scipy's linkage matrix exactly: random distances with many
    ties (the chain's tie rule), tiny sets, quintic points; it consumes its input and refuses a
    wrong one by name; it runs without the GIL (two batches on two threads in parallel)."""
    from scipy.cluster.hierarchy import linkage

    from mfarray.cluster import linkage as lk

    rng = np.random.default_rng(3)
    for n in (2, 3, 17, 300):
        d = rng.random(n * (n - 1) // 2)
        d[::5] = d[0]  # ties
        np.testing.assert_array_equal(nn_chain_average(d.copy(), n), linkage(d, method="average"))
    D = condensed_distances(unit_points(quintic_points.z.values[:700]))
    np.testing.assert_array_equal(nn_chain_average(D.copy(), 700), linkage(D, method="average"))
    assert nn_chain_average(np.zeros(0), 1).shape == (0, 4)
    with pytest.raises(ValueError, match="condensed float64 distances of 5 points"):
        nn_chain_average(np.zeros(9), 5)
    if lk.numba is not None:
        assert lk._nn_chain.targetoptions["nogil"]


# ------------------------------------------------------------------ merge rules (eq. 3.3)
def test_paper_merge_follows_eq_3_3_greedily_and_assignment_is_optimal():
    # cost[alpha, beta]: the largest distance between first-batch cluster alpha and cluster beta.
    cost = np.array([[1.0, 2.0, 9.0],
                     [1.5, 10.0, 3.0],
                     [8.0, 2.5, 2.4]])
    # eq. 3.3 in the paper's order: alpha 0 takes beta 0 (1.0); alpha 1 the best remaining, beta 2
    # (3.0); alpha 2 what is left, beta 1 (2.5): total 6.5.
    assert merge_paper(cost).tolist() == [0, 2, 1]  # target[beta] = alpha
    # optimal one-to-one: 0 <- 1 (2.0), 1 <- 0 (1.5), 2 <- 2 (2.4): total 5.9
    assert merge_assignment(cost).tolist() == [1, 0, 2]
    assert merge_paper(np.ones((3, 3))).tolist() == [0, 1, 2]  # ties: the smaller beta
    with pytest.raises(ValueError, match="square"):
        merge_paper(np.ones((2, 3)))


def test_max_distances_equal_the_brute_force_maxima(quintic_points):
    u = unit_points(quintic_points.z.values[:300])
    rng = np.random.default_rng(0)
    la, lb = rng.integers(0, 4, 120), rng.integers(0, 4, 180)
    got = max_distances(u[:120], la, u[120:], lb, 4, block_elements=500)
    d = mf.fs_distance(u[:120], u[120:], method="gemm")
    ref = np.array([[d[np.ix_(la == a, lb == b)].max() for b in range(4)] for a in range(4)])
    np.testing.assert_allclose(got, ref, rtol=0, atol=4e-15)  # GEMM tiles: a few ulps


# ------------------------------------------------------------------ the procedure
@pytest.mark.parametrize("merge", ["paper", "assignment"])
def test_batched_clustering_recovers_well_separated_groups_exactly(merge):
    points, truth = _groups()
    out = cluster(points, size=150, batch=200, merge=merge)  # C = 4, 3 batches of 200
    assert out.attrs["cluster"]["n_batches"] == 3 and out.attrs["cluster"]["n_clusters"] == 4
    assert _same_partition(out.cluster.values, truth)


def test_every_point_is_in_exactly_one_cluster(quintic_points):
    pts = quintic_points.isel(point=slice(0, 1237))
    out = cluster(pts, size=100, batch=300)  # C = 12, 5 batches of 247-248
    lab = out.cluster.values
    assert lab.shape == (1237,) and lab.dtype == np.int64
    assert np.bincount(lab).size == 12 and np.all(np.bincount(lab) > 0)
    assert out.cluster.attrs["description"] and out.attrs["call"].startswith("mfarray.cluster(")
    xr.testing.assert_identical(out.drop_vars("cluster").drop_attrs(), pts.drop_attrs())
    plan = plan_batches(1237, ClusterConfig(size=100, batch=300))
    assert np.array_equal(np.sort(plan.order), np.arange(1237))


def test_quality_on_quintic_points_is_within_stated_factors_of_full_clustering(quintic_points):
    """2000 quintic points, C = 10: batched (4 batches of 500) against full (one batch).
    Measured (seed 1): mean intra-cluster distance 1.081 vs 1.018 (factor 1.06), 10-NN in own
    cluster 0.31 vs 0.61; random labels 1.142 and 0.097.  Stated: intra within 1.10x of full, the
    neighbour fraction at least 0.4x full's and 2x random labels'."""
    batched = cluster_quality(cluster(quintic_points, size=200, batch=500))
    full = cluster_quality(cluster(quintic_points, size=200, batch=2000))
    rng = np.random.default_rng(0)
    shuffled = quintic_points.assign(cluster=("point", rng.permutation(np.arange(2000) % 10)))
    random = cluster_quality(shuffled)
    assert float(full.mean_intra_distance) <= float(batched.mean_intra_distance)
    assert float(batched.mean_intra_distance) <= 1.10 * float(full.mean_intra_distance)
    assert float(batched.mean_intra_distance) < float(random.mean_intra_distance)
    assert float(batched.knn_in_cluster) >= 0.4 * float(full.knn_in_cluster)
    assert float(batched.knn_in_cluster) >= 2 * float(random.knn_in_cluster)


# ------------------------------------------------------------------ lazy stage, schedulers
def _refuse(*args, **kwargs):
    raise AssertionError("cluster computed something")


def test_lazy_in_lazy_out_and_the_same_labels_as_computed():
    lazy = mf.sample_points(mf.fermat_quintic(), 900, seed=3, chunk_size=400)
    with dask.config.set(scheduler=_refuse):
        out = cluster(lazy, size=100, batch=300)
    assert isinstance(out.cluster.data, dask.array.Array)
    assert out.cluster.data.chunks == lazy.z.data.chunks[:1]
    eager = cluster(lazy.compute(), size=100, batch=300)
    assert isinstance(eager.cluster.data, np.ndarray)
    np.testing.assert_array_equal(out.cluster.values, eager.cluster.values)


def test_threads_and_a_two_process_local_cluster_give_the_same_labels():
    from dask.distributed import Client, LocalCluster

    lazy = mf.sample_points(mf.fermat_quintic(), 800, seed=4, chunk_size=300)
    with dask.config.set(scheduler="threads"):
        ref = cluster(lazy, size=100, batch=250, merge="paper").cluster.values
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as lc, \
            Client(lc):
        got = cluster(lazy, size=100, batch=250, merge="paper").cluster.values
    np.testing.assert_array_equal(ref, got)


# ------------------------------------------------------------------ quality and Figure 2
def test_quality_equals_brute_force(quintic_points):
    pts = quintic_points.isel(point=slice(0, 300))
    lab = np.arange(300) % 3
    q = cluster_quality(pts.assign(cluster=("point", lab)), k=5)
    d = mf.fs_distance(pts.z.values, method="gemm")
    same = (lab[:, None] == lab[None, :]) & ~np.eye(300, dtype=bool)
    np.testing.assert_allclose(float(q.mean_intra_distance), d[same].mean(), rtol=1e-12)
    np.fill_diagonal(d, np.inf)
    nn = np.argsort(d, axis=1)[:, :5]
    np.testing.assert_allclose(float(q.knn_in_cluster), (lab[nn] == lab[:, None]).mean())
    assert q["size"].values.tolist() == [100, 100, 100]
    assert all(q[v].attrs["description"] for v in q.variables)
    sub = cluster_quality(pts.assign(cluster=("point", lab)), k=5, queries=50)
    assert sub.attrs["queries"] == 50


def test_k_nearest_streams_to_the_brute_force_neighbours(quintic_points):
    u = unit_points(quintic_points.z.values[:500])
    idx, dist = k_nearest(u[:70], u, 7, exclude=np.arange(70), block_elements=3000)
    d = mf.fs_distance(u[:70], u, method="gemm")
    d[np.arange(70), np.arange(70)] = np.inf
    # GEMM tiles of other shapes round c differently: a few ulps (distance.fs_distance_block_gemm)
    np.testing.assert_allclose(dist, np.sort(d, axis=1)[:, :7], rtol=0, atol=4e-15)
    np.testing.assert_allclose(np.take_along_axis(d, idx, 1), dist, rtol=0, atol=4e-15)


def test_figure2_data_reorders_one_distance_matrix(quintic_points):
    f = figure2_data(quintic_points, n=300, clusters=6, batches=3)
    assert f.distance.shape == (3, 300, 300) and list(f.order.values) == ["unclustered", "batched", "full"]
    base = f.distance.sel(order="unclustered").values
    where = {p: i for i, p in enumerate(f.point.sel(order="unclustered").values)}
    for order in ("batched", "full"):
        o = np.array([where[p] for p in f.point.sel(order=order).values])
        np.testing.assert_array_equal(f.distance.sel(order=order).values, base[np.ix_(o, o)])
        assert np.all(np.diff(f.cluster.sel(order=order).values) >= 0)
    import matplotlib

    matplotlib.use("Agg")
    axes = plot_figure2(f)
    assert [ax.get_title() for ax in axes] == ["unclustered", "batched", "full"]
    np.testing.assert_array_equal(axes[1].images[0].get_array(), f.distance.sel(order="batched").values)


# ------------------------------------------------------------------ errors name the argument
@pytest.mark.parametrize("kwargs, match", [
    ({"size": 0}, "size"), ({"size": -5}, "size"), ({"batch": 100, "size": 200}, "batch must be at least size"),
    ({"merge": "greedy"}, "merge"), ({"seed": -1}, "seed"),
])
def test_bad_settings_are_refused_by_name(quintic_points, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        cluster(quintic_points, **kwargs)


def test_a_point_set_without_z_is_refused(quintic_points):
    with pytest.raises(ValueError, match="points is not a point set: it has no z"):
        cluster(quintic_points.drop_vars("z"))
    with pytest.raises(TypeError, match="points must be a point set"):
        cluster(quintic_points.z)
    with pytest.raises(ValueError, match="raise size or batch"):
        cluster(quintic_points, size=2, batch=3)  # 667 batches of 3 points, C = 1000


def test_figure2_makes_the_clusters_it_records(quintic_points):
    """size = n // clusters made round(n / size) clusters: 50 for clusters=40 of n=100, recorded as 40."""
    for n, clusters in ((100, 25), (300, 60), (300, 6), (300, 7)):
        f = figure2_data(quintic_points, n=n, clusters=clusters, batches=1)
        assert f.attrs["clusters"] == clusters
        assert len(np.unique(f.cluster.sel(order="full").values)) == clusters
    for clusters in (30, 40):  # no whole target size gives them: 100 / 3 -> 33, 100 / 4 -> 25
        with pytest.raises(ValueError, match=rf"clusters={clusters} .* n=100"):
            figure2_data(quintic_points, n=100, clusters=clusters, batches=1)


def test_numpy_integer_settings_are_stored_as_ints(quintic_points, tmp_path):
    """mf.cluster(seed=np.int64(1)) copied the NumPy int into attrs, which to_zarr could not write."""
    out = cluster(quintic_points.isel(point=slice(0, 200)), size=np.int64(50), batch=np.int64(200), seed=np.int64(1))
    assert all(type(out.attrs["cluster"][k]) is int for k in ("size", "batch", "seed"))
    mf.to_zarr(out.compute(), tmp_path / "c.zarr")


def test_quality_refuses_labels_that_are_not_integers(quintic_points):
    """Labels 0.2 and 0.8 were cast to one cluster 0 and scored as a perfect clustering."""
    pts = quintic_points.isel(point=slice(0, 100))
    labels = np.where(np.arange(100) < 50, 0.2, 0.8)
    with pytest.raises(ValueError, match="integer labels"):
        cluster_quality(pts.assign(cluster=("point", labels)), k=3)
