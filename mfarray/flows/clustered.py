"""Per-cluster frozen-kernel flows (§3.1): each cluster flows alone, cross-cluster terms neglected.

:func:`clustered_flow` takes a train set with an integer ``cluster`` variable
(:func:`mfarray.cluster`), sends each test point to the cluster of its nearest train point (FS
distance, :func:`mfarray.geometry.distance.nearest`, streamed in tiles) and runs
:func:`~mfarray.flows.frozen.kernel_flow` on every cluster as one independent Dask task
(``dask.delayed``), all computed by one ``dask.compute``: in parallel on the threaded scheduler,
or on a ``dask.distributed`` client when one is active.

What "neglecting cross-cluster terms" changes, besides dropping the kernel entries K(x, x')
between clusters:

- the step control: each cluster has its own step size, halvings and (with backtracking) its
  own total loss to decrease, so points are coupled only within their cluster;
- kappa (B.10): the fixed kappa of the "sigma" and "sigma_squared" losses is each cluster's
  own E_w[det g0 / |Omega|^2] over its train points (``kappa="cluster"``, what kernel_flow on
  the cluster alone does), or that of all train points (``kappa="global"``);
  "sigma_dynamic" recomputes kappa within the cluster;
- the loss normalisation: each cluster's loss is a mean over its own points.

So for a kernel that is block-diagonal in the clusters (e.g. ``delta``), a pointwise loss
(``mse``, or ``sigma``/``sigma_squared`` with ``kappa="global"``) and a fixed step size with no
halvings, the clustered flow equals the unclustered one (tested).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import dask
import numpy as np
import xarray as xr

from .. import backend, losses
from ..geometry.distance import nearest
from ..pointset.provenance import (
    G_CONVENTION,
    describe,
    format_call,
    json_attrs,
    provenance,
)
from .evaluate import sigma_of
from .frozen import kernel_flow, resolve_loss
from .integrate import FlowError
from .results import RESULT_DOCS, SET_PROVENANCE
from .sites import point_index

if TYPE_CHECKING:
    from ..kernels.operators import KernelOperator

__all__ = ["CLUSTERED_DOCS", "clustered_flow"]

Array = Any

# variables of each cluster's result along ``step``, stacked along ``cluster`` as cluster_<name>
HISTORY = ("loss", "sigma_train", "sigma_test", "lr", "rejected", "rejected_test")
# per-point keyword arguments of kernel_flow: split by cluster (train or test points)
TRAIN_ARRAYS = ("g0", "target")
TEST_ARRAYS = ("g0_test",)
# attributes of one cluster's result that describe that cluster's flow only
PER_FLOW_ATTRS = ("title", "call", "steps_done", "operators", "flow", "model", "cluster")


def _with_kappa(loss: Any, kappa: float) -> losses.PointwiseLoss:
    """``loss`` evaluated with a given fixed kappa instead of the train set's own."""
    inner = resolve_loss(loss)
    cache: dict[int, tuple] = {}

    def swap(data):
        hit = cache.get(id(data))
        if hit is None or hit[0] is not data:
            cache.clear()
            hit = cache[id(data)] = (data, dataclasses.replace(data, kappa=kappa))
        return hit[1]

    def wrap(f):
        return None if f is None else (lambda m, data: f(m, swap(data)))

    on = None if not getattr(inner, "on_metrics", None) else tuple(wrap(f) for f in inner.on_metrics)
    return losses.PointwiseLoss(inner.name, lambda g, data: inner.value(g, swap(data)),
                                lambda g, data: inner.gradient(g, swap(data)), on_metrics=on)


def _flow_one(c, train, kernel, steps, test, kappa, options):
    """One cluster's kernel_flow (a Dask task); a FlowError says which cluster."""
    if kappa is not None:
        options = {**options, "loss": _with_kappa(options.get("loss", "sigma_squared"), kappa)}
    try:
        return kernel_flow(train, kernel, steps=steps, test=test, **options)
    except FlowError as err:
        err.cluster = c
        err.add_note(f"in clustered_flow: the flow of cluster {c} ({train.sizes['point']} train points)")
        raise


def _labels(train: xr.Dataset) -> np.ndarray:
    if not isinstance(train, xr.Dataset) or "cluster" not in train.variables:
        raise ValueError("train has no integer 'cluster' variable: cluster it first, "
                         "train = mfarray.cluster(train, size=..., batch=...) (mf.cluster)")
    var = train["cluster"]
    if var.dims != ("point",) or not np.issubdtype(var.dtype, np.integer):
        raise ValueError(f"train.cluster must be an integer variable along 'point' (mf.cluster); "
                         f"got dims {var.dims}, dtype {var.dtype}")
    return var


def clustered_flow(train: xr.Dataset, kernel: Callable[..., Array] | KernelOperator, *, steps: int,
                   test: xr.Dataset | None = None, kappa: str = "cluster",
                   **kernel_flow_options: Any) -> xr.Dataset:
    """The frozen-kernel flow (2.12) run on each cluster of ``train`` alone (the paper's §3.1).

    Parameters
    ----------
    train : point set with an integer ``cluster`` variable (:func:`mfarray.cluster`), lazy or
        computed, in one chart.
    kernel, steps : as :func:`~mfarray.flows.frozen.kernel_flow` (a kernel spec; an operator
        over the whole train set cannot be split by cluster).
    test : optional point set in the same chart; each test point is predicted by the flow of the
        cluster of its nearest train point (FS distance, streamed).
    kappa : "cluster" (each cluster's loss keeps the kappa of its own train points, as
        ``kernel_flow(train[cluster == c])``) or "global" (kappa of all train points' initial
        metrics; matters for the "sigma" and "sigma_squared" losses only).
    kernel_flow_options : the other keywords of kernel_flow (lr, loss, adaptive, method, ...);
        per-point arrays ``g0``, ``target`` (train order) and ``g0_test`` (test order) are split
        by cluster; an ``operator_options["path"]`` gets the suffix ``.cluster<c>``.

    Returns one Dataset (:data:`CLUSTERED_DOCS` describes every variable): the per-point
    variables of the flow result schema (``g_train``, ``g_train_initial``, ``weight_train``,
    ``omega2_train``, ``z_train`` and the same for test) in the input point order, with the
    coordinates ``cluster_train`` (point) and ``cluster_test`` (test_point); ``dual_cluster``
    (each point's dual coefficients in its own cluster's flow); the per-cluster histories
    ``cluster_loss``, ``cluster_sigma_train``, ... (cluster, step) and sizes; and the sigma of
    the combined metrics over all points, ``sigma_train_initial`` / ``sigma_train_final`` (and
    test), as :func:`~mfarray.flows.evaluate.evaluate` computes them.  ``evaluate(result)``
    works on it; ``predict`` does not (attribute model = "clustered kernel").  A FlowError in
    one cluster is raised with ``err.cluster`` set.
    """
    if kappa not in ("cluster", "global"):
        raise ValueError(f"kappa must be 'cluster' or 'global'; got {kappa!r}")
    if hasattr(kernel, "matvec"):
        raise TypeError("clustered_flow needs a kernel spec (a kernel operator covers the whole train set and "
                        "cannot be split by cluster)")
    if "test" in kernel_flow_options:
        raise TypeError("pass test= once")
    labels_var = _labels(train)
    z_train = train["z"].transpose("point", ...).data
    z_test = None if test is None else test["z"].transpose("point", ...).data
    if z_test is not None and z_test.shape[0] > 0:
        nearest_index = nearest(z_test, z_train)[0]
        labels, nearest_index = dask.compute(labels_var.data, nearest_index)
    else:
        (labels,), nearest_index = dask.compute(labels_var.data), None
    labels = np.asarray(backend.to_numpy(labels), dtype=np.int64)
    test_labels = None if nearest_index is None else labels[np.asarray(backend.to_numpy(nearest_index))]
    clusters = np.unique(labels)

    options = dict(kernel_flow_options)
    global_kappa = None
    if kappa == "global":
        g0 = options.get("g0")
        arrays = dask.compute(*(train[v].data for v in ("weight", "g_fs", "omega2") if v in train))
        weight, g_fs = backend.to_numpy(arrays[0]), backend.to_numpy(arrays[1])
        omega2 = backend.to_numpy(arrays[2]) if len(arrays) > 2 else None
        global_kappa = losses.loss_data(omega2, weight, g_fs if g0 is None else backend.to_numpy(g0)).kappa

    flow = dask.delayed(_flow_one, pure=False)
    tasks, members, test_members = [], [], []
    train_flow = train.drop_vars("cluster")
    for c in clusters:
        idx = np.flatnonzero(labels == c)
        tidx = None if test_labels is None else np.flatnonzero(test_labels == c)
        opts = {k: v for k, v in options.items() if k not in TRAIN_ARRAYS + TEST_ARRAYS}
        for key in TRAIN_ARRAYS:
            if options.get(key) is not None:
                opts[key] = options[key][idx]
        if options.get("g0_test") is not None and tidx is not None and tidx.size:
            opts["g0_test"] = options["g0_test"][tidx]
        if isinstance(opts.get("operator_options"), dict) and "path" in opts["operator_options"]:
            opts["operator_options"] = {**opts["operator_options"],
                                        "path": f"{opts['operator_options']['path']}.cluster{int(c)}"}
        test_c = None if tidx is None or not tidx.size else test.isel(point=tidx)
        tasks.append(flow(int(c), train_flow.isel(point=idx), kernel, steps, test_c, global_kappa, opts))
        members.append(idx)
        test_members.append(tidx)
    results = dask.compute(*tasks)
    return _combine(train, test, clusters, members, test_members, labels, test_labels, results,
                    kappa=kappa, global_kappa=global_kappa, steps=steps, options=options, kernel=kernel)


def _combine(train, test, clusters, members, test_members, labels, test_labels, results, *, kappa, global_kappa,
             steps, options, kernel):
    data, coords = {}, {"cluster": ("cluster", clusters.astype(np.int64))}
    n = labels.size
    parts = [("train", "point", members, "point")]
    if test_labels is not None:
        parts.append(("test", "test_point", test_members, "test_point"))
    for part, dim, idx_of, rdim in parts:
        names = [f"g_{part}", f"g_{part}_initial", f"weight_{part}", f"omega2_{part}", f"z_{part}"]
        if part == "train":
            names.append("dual")
        size = n if part == "train" else test_labels.size
        for name in names:
            pieces = [(idx, r[name]) for idx, r in zip(idx_of, results) if idx is not None and idx.size and name in r]
            if not pieces:
                continue
            first = pieces[0][1]
            out = np.zeros((size, *first.shape[1:]), dtype=first.dtype)
            for idx, var in pieces:
                out[idx] = var.transpose(rdim, ...).values
            data["dual_cluster" if name == "dual" else name] = ((dim, *first.dims[1:]), out)
        coords[dim] = (dim, point_index(train if part == "train" else test))
        coords[f"cluster_{part}"] = (dim, labels if part == "train" else test_labels)
        data[f"cluster_size_{part}"] = ("cluster", np.array([0 if i is None else i.size for i in idx_of], np.int64))
    for name in HISTORY:
        if any(name in r for r in results):
            stacked = xr.concat([r[name] if name in r else xr.full_like(r["loss"], np.nan) for r in results],
                                dim="cluster", join="outer")
            data[f"cluster_{name}"] = (("cluster", "step"), stacked.values)
            coords["step"] = ("step", stacked["step"].values)
    for part, _, _, _ in parts:
        if f"omega2_{part}" in data:
            args = (data[f"omega2_{part}"][1], data[f"weight_{part}"][1])
            data[f"sigma_{part}_initial"] = ((), sigma_of(data[f"g_{part}_initial"][1], *args, f"g_{part}_initial"))
            data[f"sigma_{part}_final"] = ((), sigma_of(data[f"g_{part}"][1], *args, f"g_{part}"))
    first = results[0]
    attrs = {k: v for k, v in first.attrs.items() if k not in PER_FLOW_ATTRS and not k.startswith("test_")}
    call = format_call("mfarray.clustered_flow", train, kernel, steps=steps, test=test, kappa=kappa,
                       **{k: v for k, v in options.items() if k != "loss" or isinstance(v, str)})
    attrs.update(json_attrs({
        "title": "mfarray clustered flow result: per-cluster frozen-kernel flows (2.12, section 3.1)",
        "flow": "per-cluster frozen-kernel flows (2.12), cross-cluster kernel terms neglected (section 3.1)",
        "model": "clustered kernel", "n_clusters": int(clusters.size),
        "clustering": json.dumps(train.attrs.get("cluster", {}), default=repr),
        "test_assignment": "cluster of the nearest train point (FS distance)",
        "kappa": kappa, "global_kappa": global_kappa,
        "flow_options": json.dumps({k: (v if isinstance(v, (int, float, str, bool, type(None), dict)) else repr(v))
                                    for k, v in options.items()}, default=repr),
        "steps_done": json.dumps([int(r.attrs["steps_done"]) for r in results]),
        "cluster_operators": json.dumps([r.attrs.get("operators") for r in results]),
        **provenance(call)}))
    if test is not None:
        attrs.update(json_attrs({f"test_{k}": test.attrs[k] for k in ("seed", *SET_PROVENANCE) if k in test.attrs}))
    attrs = {k: v for k, v in attrs.items() if v is not None}
    ds = xr.Dataset(data, coords=coords, attrs=attrs)
    return describe(ds, CLUSTERED_DOCS)


def _docs() -> dict[str, dict[str, str]]:
    docs = {k: v for k, v in RESULT_DOCS.items() if k.endswith(("_train", "_test", "_initial")) or k in
            ("point", "test_point", "step")}
    for name in ("sigma_train", "sigma_test", "theta", "theta_initial"):
        docs.pop(name, None)
    docs["g_train"] = {"description": "metrics at the train points at the last recorded step of their cluster's "
                                      "flow, in the flow's chart (attribute chart = [patch, elim])",
                       "convention": G_CONVENTION}
    docs["g_test"] = {"description": "metrics at the test points predicted by the flow of their cluster (the "
                                     "cluster of the nearest train point), in the flow's chart",
                      "convention": G_CONVENTION}
    docs["cluster"] = {"description": "cluster label (train.cluster, mfarray.cluster) of each per-cluster flow",
                       "convention": "0-based labels that have train points"}
    docs["cluster_train"] = {"description": "cluster of each train point (its flow), from train.cluster",
                             "convention": "a value of the cluster coordinate"}
    docs["cluster_test"] = {"description": "cluster of each test point: that of its nearest train point in FS "
                                           "distance (3.2)", "convention": "a value of the cluster coordinate"}
    docs["dual_cluster"] = {"description": "dual coefficients A of each train point in its own cluster's flow: "
                                           "g(x) = g_initial(x) - sum_y Theta(x, y) A(y) over the train points y of "
                                           "x's cluster only (cross-cluster kernel terms neglected)",
                            "convention": "Hermitian complex matrices (point, row, col), indexed as g_train"}
    for part in ("train", "test"):
        docs[f"cluster_size_{part}"] = {"description": f"number of {part} points of each cluster",
                                        "convention": "count"}
        sigma = f"E_w[|1 - eta|] with the MC weights weight_{part}, kappa (B.10) of the same metrics over all points"
        docs[f"sigma_{part}_initial"] = {"description": f"sigma measure (B.11) of the initial metrics g_{part}_initial "
                                                        f"over all {part} points (every cluster together)",
                                         "convention": sigma}
        docs[f"sigma_{part}_final"] = {"description": f"sigma measure (B.11) of the combined final metrics g_{part} "
                                                      f"over all {part} points (every cluster together)",
                                       "convention": sigma}
    for name in HISTORY:
        base = RESULT_DOCS[name]
        docs[f"cluster_{name}"] = {"description": f"per cluster: {base['description']}, of that cluster's flow alone"
                                                  + (" (kappa and mean over that cluster's points)"
                                                     if name.startswith(("sigma", "loss")) else ""),
                                   "convention": base["convention"] + "; NaN after a cluster's last record"}
    return docs


CLUSTERED_DOCS: dict[str, dict[str, str]] = _docs()
