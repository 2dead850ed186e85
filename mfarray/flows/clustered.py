"""Per-cluster frozen-kernel flows (§3.1) as a lazy stage: each cluster flows alone, cross-cluster
terms neglected.

:func:`clustered_flow` takes a train set with an integer ``cluster`` variable
(:func:`mfarray.cluster`), sends each test point to the cluster of its nearest train point (FS
distance, :func:`mfarray.geometry.distance.nearest`, streamed in tiles) and runs
:func:`~mfarray.flows.frozen.kernel_flow` on every cluster as one independent Dask task.

The stage is lazy (lazy in, lazy out): it builds a Dask graph and computes nothing; the result's
arrays are Dask arrays, computed when asked (``result.compute()``, ``.values``,
``mfarray.evaluate(result).compute()``), in parallel on the threaded scheduler or on a
``dask.distributed`` client when one is active.  The graph, for C clusters:

- ``labels``: the train set's ``cluster`` variable, checked (every label one of the C ids);
- the whole train set (and test set) as one task each, shared by the tasks below;
- test assignment: one task per chunk of test points (nearest train point in FS distance, its
  label);
- ``kappa="global"``: one task (kappa of all train points);
- one task per cluster id: ``kernel_flow`` on that cluster's train and test points (a cluster
  without train points flows nothing: size 0, NaN histories);
- one task assembling the per-point results in the input order, the per-cluster histories and
  the sigma of the combined metrics; every variable of the result is a piece of it.

Shapes are known without computing: the train and test point counts and k from the inputs, the
steps from ``steps`` (a flow records step 0 and every step, and a cluster that cannot take a
step raises), and C from the cluster stage: ``train.attrs["cluster"]["n_clusters"]``, which
:func:`mfarray.cluster` records (C = round(N / size), labels 0..C-1, each holding train points).
Per-cluster sizes are data: variables, never shapes.  Two things are eager, only when the
input does not record them: the cluster ids (a ``cluster`` variable not made by
:func:`mfarray.cluster`: its labels are computed at the call, and the ids are its distinct
values) and the chart (a train set without a ``chart`` attribute, which
:func:`mfarray.select_chart` and :func:`mfarray.express_in_chart` set: patch and elim are
computed at the call).  Computed inputs (no Dask array in train, test or the per-point options)
give a computed result, as before.  The cluster tasks leave BLAS threads as they are: holding
them to one thread per task (:func:`mfarray.backend.one_blas_thread`), entered and left in
overlapping scheduler threads, was measured to leave OpenBLAS at one thread for the rest of the
process.

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
import inspect
import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import dask
import numpy as np
import xarray as xr

from .. import backend, losses
from ..geometry.distance import nearest
from ..kernels.features import patch_features
from ..pointset.provenance import (
    G_CONVENTION,
    describe,
    format_call,
    json_attrs,
    provenance,
)
from .evaluate import sigma_of
from .frozen import _json_safe, kernel_flow, kernel_spec, resolve_loss
from .integrate import FlowError, StepControl, check_steps
from .results import RESULT_DOCS, SET_DROPPED, SET_PROVENANCE
from .sites import _require_point_set, point_index

if TYPE_CHECKING:
    from ..kernels.operators import KernelOperator

__all__ = ["CLUSTERED_DOCS", "clustered_flow"]

Array = Any

# variables of each cluster's result along ``step``, stacked along ``cluster`` as cluster_<name>
HISTORY = ("loss", "sigma_train", "sigma_test", "lr", "rejected", "rejected_test")
# per-point keyword arguments of kernel_flow: split by cluster (train or test points)
TRAIN_ARRAYS = ("g0", "target")
TEST_ARRAYS = ("g0_test",)
# kernel_flow's keyword defaults (what a cluster's flow uses where an option is not given)
FLOW_DEFAULTS = {name: p.default for name, p in inspect.signature(kernel_flow).parameters.items()
                 if p.kind is p.KEYWORD_ONLY and p.default is not p.empty}
CONTROL = ("lr", "adaptive", "normalize", "clip", "grow", "max_halvings")


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


# ------------------------------------------------------------------ the tasks (NumPy in, NumPy out)
def _checked_labels(labels: Array, ids: np.ndarray) -> np.ndarray:
    """train.cluster (N,) as int64, every label one of the cluster ids (ValueError otherwise)."""
    labels = np.asarray(backend.to_numpy(labels)).astype(np.int64, copy=False)
    bad = ~np.isin(labels, ids)
    if bad.any():
        raise ValueError(f"train.cluster has {int(bad.sum())} label(s) outside the {ids.size} cluster ids "
                         f"(e.g. {labels[bad][:4].tolist()}; train.attrs['cluster']['n_clusters'] = {ids.size}): "
                         "cluster the set again with mfarray.cluster rather than editing its labels")
    return labels


def _assign(z_test: Array, z_train: Array, labels: np.ndarray) -> np.ndarray:
    """Cluster (nt,) of each test point of a block z_test (nt, n+1): that of its nearest train point."""
    if z_test.shape[0] == 0:
        return np.zeros((0,), dtype=np.int64)
    return labels[np.asarray(backend.to_numpy(nearest(z_test, z_train)[0]))]


def _global_kappa(train: xr.Dataset, g0: Any) -> float:
    """kappa (B.10) of all train points' initial metrics (g_fs, or the given g0)."""
    g = train["g_fs"].values if g0 is None else backend.to_numpy(getattr(g0, "values", g0))
    omega2 = train["omega2"].values if "omega2" in train else None
    return losses.loss_data(omega2, train["weight"].values, g).kappa


def _flow_one(c: int, train: xr.Dataset, labels: np.ndarray, test: xr.Dataset | None, test_labels: np.ndarray | None,
              kernel: Any, steps: int, kappa: float | None, options: dict, arrays: dict) -> dict | None:
    """One cluster's kernel_flow (a Dask task): its per-point results and histories as NumPy arrays
    with the positions ``idx`` / ``tidx`` of its points; None for a cluster without train points.
    A FlowError says which cluster."""
    idx = np.flatnonzero(labels == c)
    if not idx.size:
        return None
    tidx = None if test_labels is None else np.flatnonzero(test_labels == c)
    opts = dict(options)
    for key in TRAIN_ARRAYS:
        if arrays.get(key) is not None:
            opts[key] = arrays[key][idx]
    if arrays.get("g0_test") is not None and tidx is not None and tidx.size:
        opts["g0_test"] = arrays["g0_test"][tidx]
    if isinstance(opts.get("operator_options"), dict) and "path" in opts["operator_options"]:
        opts["operator_options"] = {**opts["operator_options"], "path": f"{opts['operator_options']['path']}.cluster{c}"}
    if kappa is not None:
        opts["loss"] = _with_kappa(opts.get("loss", FLOW_DEFAULTS["loss"]), kappa)
    test_c = None if tidx is None or not tidx.size else test.isel(point=tidx)
    try:
        r = kernel_flow(train.isel(point=idx), kernel, steps=steps, test=test_c, **opts)
    except FlowError as err:
        err.cluster = c
        err.add_note(f"in clustered_flow: the flow of cluster {c} ({idx.size} train points)")
        raise
    out = {"idx": idx, "tidx": tidx, "steps_done": int(r.attrs["steps_done"])}
    out.update({name: r[name].values for name in r.data_vars})
    return out


def _per_point_names(part: str, has_omega: bool) -> list[str]:
    names = [f"g_{part}", f"g_{part}_initial", f"weight_{part}", f"z_{part}"]
    names += [f"omega2_{part}"] if has_omega else []
    return names + (["dual"] if part == "train" else [])


def _assemble(flows: list, ids: np.ndarray, labels: np.ndarray, test_labels: np.ndarray | None, specs: dict,
              history: tuple, has_omega: bool, global_kappa: float | None) -> dict[str, np.ndarray]:
    """Every variable of the result (a Dask task): per-point arrays in the input order, the
    per-cluster histories (C, steps + 1), sizes, steps done, the sigma of the combined metrics."""
    out = {name: np.zeros(shape, dtype=dtype) for name, (_, shape, dtype) in specs.items()}
    if global_kappa is not None:
        out["global_kappa"][()] = global_kappa
    parts = [("train", "idx")] + ([("test", "tidx")] if test_labels is not None else [])
    for part, where in parts:
        for name in _per_point_names(part, has_omega):
            for f in flows:
                if f is not None and f[where] is not None and f[where].size:
                    out["dual_cluster" if name == "dual" else name][f[where]] = f[name]
    for name in history:
        rows = out[f"cluster_{name}"]
        rows[:] = np.nan
        for i, f in enumerate(flows):
            if f is not None and name in f:
                rows[i, : f[name].shape[0]] = f[name]
    out["cluster_steps_done"][:] = [0 if f is None else f["steps_done"] for f in flows]
    position = np.searchsorted(ids, labels)
    out["cluster_size_train"][:] = np.bincount(position, minlength=ids.size)
    if test_labels is not None:
        out["cluster_size_test"][:] = np.bincount(np.searchsorted(ids, test_labels), minlength=ids.size)
    if has_omega:
        for part, _ in parts:
            args = (out[f"omega2_{part}"], out[f"weight_{part}"])
            out[f"sigma_{part}_initial"][()] = sigma_of(out[f"g_{part}_initial"], *args, f"g_{part}_initial")
            out[f"sigma_{part}_final"][()] = sigma_of(out[f"g_{part}"], *args, f"g_{part}")
    return out


# ------------------------------------------------------------------ the stage
def _labels(train: xr.Dataset) -> xr.DataArray:
    if not isinstance(train, xr.Dataset) or "cluster" not in train.variables:
        raise ValueError("train has no integer 'cluster' variable: cluster it first, "
                         "train = mfarray.cluster(train, size=..., batch=...) (mf.cluster)")
    var = train["cluster"]
    if var.dims != ("point",) or not np.issubdtype(var.dtype, np.integer):
        raise ValueError(f"train.cluster must be an integer variable along 'point' (mf.cluster); "
                         f"got dims {var.dims}, dtype {var.dtype}")
    return var


def _cluster_ids(train: xr.Dataset, labels: xr.DataArray) -> np.ndarray:
    """The cluster ids (C,): 0..C-1 from mf.cluster's record, else the labels' distinct values
    (computed here: the one eager step of a cluster variable not made by mf.cluster)."""
    record = train.attrs.get("cluster")
    if isinstance(record, Mapping) and "n_clusters" in record:
        n = record["n_clusters"]
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"train.attrs['cluster']['n_clusters'] must be a positive integer (mf.cluster); got {n!r}")
        return np.arange(int(n), dtype=np.int64)
    return np.unique(np.asarray(backend.to_numpy(labels.values), dtype=np.int64))


def _chart(train: xr.Dataset, test: xr.Dataset | None) -> list[int]:
    """[patch, elim] of the train set: its ``chart`` attribute, else computed from patch/elim."""
    chart = train.attrs.get("chart")
    if chart is None:
        patch, elim = dask.compute(train["patch"].data, train["elim"].data)
        pairs = np.unique(np.stack([backend.to_numpy(patch), backend.to_numpy(elim)], 1), axis=0)
        if len(pairs) != 1:
            raise ValueError(f"train points are in {len(pairs)} charts: select one with mfarray.select_chart")
        chart = pairs[0]
    chart = [int(v) for v in chart]
    if test is not None and test.attrs.get("chart") is not None and [int(v) for v in test.attrs["chart"]] != chart:
        raise ValueError(f"train and test points are in different charts {[chart, list(test.attrs['chart'])]}: select "
                         f"the test chart with mfarray.select_chart(test_set, like=train)")
    return chart


def _check_options(options: dict) -> None:
    """kernel_flow's options, checked now rather than inside the cluster tasks."""
    unknown = sorted(set(options) - set(FLOW_DEFAULTS))
    if unknown:
        raise TypeError(f"clustered_flow got keyword(s) {unknown} that kernel_flow does not take; its options are "
                        f"{sorted(FLOW_DEFAULTS)}")
    StepControl(**{k: options.get(k, FLOW_DEFAULTS[k]) for k in CONTROL})
    resolve_loss(options.get("loss", FLOW_DEFAULTS["loss"]))
    ops = options.get("operator_options")
    if ops is not None and not isinstance(ops, Mapping):
        raise TypeError(f"operator_options must be a dict of options of the operator or None; got {type(ops).__name__}")
    if options.get("features") is not None and not callable(options["features"]):
        raise TypeError(f"features must be a function z -> (N, d) real features or None; "
                        f"got {type(options['features']).__name__}")


def _lazy(data: Any) -> bool:
    data = getattr(data, "data", data)
    return backend.is_dask(data)


def clustered_flow(train: xr.Dataset, kernel: Callable[..., Array] | KernelOperator, *, steps: int,
                   test: xr.Dataset | None = None, kappa: str = "cluster",
                   **kernel_flow_options: Any) -> xr.Dataset:
    """The frozen-kernel flow (2.12) run on each cluster of ``train`` alone (the paper's §3.1), lazily.

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
        metrics, the variable ``global_kappa``; matters for the "sigma" and "sigma_squared"
        losses only).
    kernel_flow_options : the other keywords of kernel_flow (lr, loss, adaptive, method, ...);
        per-point arrays ``g0``, ``target`` (train order) and ``g0_test`` (test order) are split
        by cluster; an ``operator_options["path"]`` gets the suffix ``.cluster<c>``.

    Returns one Dataset (:data:`CLUSTERED_DOCS` describes every variable), Dask-backed with
    nothing computed where any input is lazy (module docstring; computed for computed inputs):
    the per-point variables of the flow result schema (``g_train``, ``g_train_initial``,
    ``weight_train``, ``omega2_train``, ``z_train`` (point, ...) and the same for test on
    ``test_point``) in the input point order, with the coordinates ``cluster_train`` (point) and
    ``cluster_test`` (test_point); ``dual_cluster`` (point, row, col) (each point's dual
    coefficients in its own cluster's flow); the per-cluster histories ``cluster_loss``,
    ``cluster_sigma_train``, ... (cluster, step), ``cluster_size_train`` / ``_test`` and
    ``cluster_steps_done`` (cluster,); and the sigma (B.11) of the combined metrics over all
    points, ``sigma_train_initial`` / ``sigma_train_final`` (and test), as
    :func:`~mfarray.flows.evaluate.evaluate` computes them.  ``evaluate(result)`` works on it
    (lazily); ``predict`` does not (attribute model = "clustered kernel").  A FlowError in one
    cluster is raised, when computed, with ``err.cluster`` set.
    """
    if kappa not in ("cluster", "global"):
        raise ValueError(f"kappa must be 'cluster' or 'global'; got {kappa!r}")
    if hasattr(kernel, "matvec"):
        raise TypeError("clustered_flow needs a kernel spec (a kernel operator covers the whole train set and "
                        "cannot be split by cluster)")
    if "test" in kernel_flow_options:
        raise TypeError("pass test= once")
    labels_var = _labels(train)
    _require_point_set(train, "train")
    if test is not None and test.sizes.get("point", 0):
        _require_point_set(test, "test")
    steps = check_steps(steps)
    kernel_spec(kernel)
    options = dict(kernel_flow_options)
    _check_options(options)
    chart = _chart(train, test)
    ids = _cluster_ids(train, labels_var)
    test = None if test is None or test.sizes.get("point", 0) == 0 else test

    n, k = train.sizes["point"], train.sizes["row"]
    has_omega = "omega2" in train.variables
    arrays = {key: options.pop(key) for key in TRAIN_ARRAYS + TEST_ARRAYS if options.get(key) is not None}
    n_test = 0 if test is None else test.sizes["point"]
    for key, value in arrays.items():  # split by cluster position later: the length must be exact now
        if key in TEST_ARRAYS and test is None:
            raise ValueError(f"{key} was given without a test set: pass test=...")
        rows, part = (n, "train") if key in TRAIN_ARRAYS else (n_test, "test")
        if tuple(getattr(value, "shape", ())) != (rows, k, k):
            raise ValueError(f"{key} must have shape {(rows, k, k)} (one {k}x{k} metric per {part} point, in the "
                             f"{part} set's order); got {tuple(getattr(value, 'shape', ()))}")
    lazy = any(_lazy(v) for v in (*train.variables.values(), *arrays.values())) or (
        test is not None and any(_lazy(v) for v in test.variables.values()))

    delayed = dask.delayed
    labels = delayed(_checked_labels, pure=True)(labels_var.data, ids)
    train_d = delayed(train.drop_vars("cluster"))
    arrays_d = {key: delayed(value) for key, value in arrays.items()}
    test_d = test_labels = test_labels_d = None
    if test is not None:
        import dask.array as da

        test_d = delayed(test)
        z_train = delayed(train["z"].transpose("point", ...).data)
        zq = test["z"].transpose("point", ...).data
        zq = (zq if backend.is_dask(zq) else da.from_array(zq, chunks=-1)).rechunk({1: -1})
        assign = delayed(_assign, pure=True)
        test_labels = da.concatenate([
            da.from_delayed(assign(block, z_train, labels), shape=(rows,), dtype=np.int64)
            for block, rows in zip(zq.to_delayed()[:, 0], zq.chunks[0])])
        test_labels_d = delayed(test_labels)
    kappa_d = delayed(_global_kappa, pure=True)(train_d, arrays_d.get("g0")) if kappa == "global" else None
    flow = delayed(_flow_one, pure=False)
    flows = [flow(int(c), train_d, labels, test_d, test_labels_d, kernel, steps, kappa_d, options, arrays_d)
             for c in ids]

    specs = _specs(n, n_test, k, train.sizes.get("ambient"), ids.size, steps, has_omega, test is not None, kappa)
    history = tuple(name for name in HISTORY if f"cluster_{name}" in specs)
    parts = delayed(_assemble, pure=False)(flows, ids, labels, test_labels_d, specs, history, has_omega, kappa_d)
    ds = _dataset(parts, specs, train, test, labels_var, test_labels, ids, steps)
    ds.attrs = _attrs(train, test, kernel, steps, kappa, options, arrays, ids, chart)
    ds = describe(ds, CLUSTERED_DOCS)
    return ds if lazy else ds.compute()


def _specs(n: int, n_test: int, k: int, ambient: int, c: int, steps: int, has_omega: bool, has_test: bool,
           kappa: str) -> dict[str, tuple[tuple, tuple, Any]]:
    """(dims, shape, dtype) of every variable of the result: all known before anything is computed."""
    specs = {}
    for part, dim, size in (("train", "point", n),) + ((("test", "test_point", n_test),) if has_test else ()):
        specs[f"g_{part}"] = specs[f"g_{part}_initial"] = ((dim, "row", "col"), (size, k, k), np.complex128)
        specs[f"weight_{part}"] = ((dim,), (size,), np.float64)
        if has_omega:
            specs[f"omega2_{part}"] = ((dim,), (size,), np.float64)
        specs[f"z_{part}"] = ((dim, "ambient"), (size, ambient), np.complex128)
        specs[f"cluster_size_{part}"] = (("cluster",), (c,), np.int64)
        if has_omega:
            specs[f"sigma_{part}_initial"] = specs[f"sigma_{part}_final"] = ((), (), np.float64)
    specs["dual_cluster"] = (("point", "row", "col"), (n, k, k), np.complex128)
    for name in HISTORY:
        if name.startswith("sigma") and not has_omega or name == "sigma_test" and not has_test:
            continue
        specs[f"cluster_{name}"] = (("cluster", "step"), (c, steps + 1), np.float64)
    specs["cluster_steps_done"] = (("cluster",), (c,), np.int64)
    if kappa == "global":
        specs["global_kappa"] = ((), (), np.float64)
    return specs


def _dataset(parts: Any, specs: dict, train: xr.Dataset, test: xr.Dataset | None, labels: xr.DataArray,
             test_labels: Any, ids: np.ndarray, steps: int) -> xr.Dataset:
    """The result Dataset: each variable a Dask piece of the assembling task ``parts``."""
    import dask.array as da

    variables = {name: (dims, da.from_delayed(parts[name], shape=shape, dtype=dtype))
                 for name, (dims, shape, dtype) in specs.items()}
    coords = {"cluster": ("cluster", ids), "step": ("step", np.arange(steps + 1, dtype=np.int64)),
              "point": ("point", point_index(train)),
              "cluster_train": ("point", labels.data.astype(np.int64))}
    if test is not None:
        coords["test_point"] = ("test_point", point_index(test))
        coords["cluster_test"] = ("test_point", test_labels)
    return xr.Dataset(variables, coords=coords)


def _attrs(train: xr.Dataset, test: xr.Dataset | None, kernel: Any, steps: int, kappa: str, options: dict,
           arrays: dict, ids: np.ndarray, chart: list[int]) -> dict:
    """The result's attributes, all known at the call: those a cluster's kernel_flow result has in
    common with every other cluster's (the train set's, the kernel, loss, step control, operator
    method), then the clustered flow's own."""
    get = lambda key: options.get(key, FLOW_DEFAULTS[key])
    attrs = {key: value for key, value in json_attrs(train.attrs).items()
             if key not in SET_PROVENANCE + SET_DROPPED + ("cluster",) and not key.endswith("_version")}
    attrs.update(json_attrs({f"train_{key}": train.attrs[key] for key in SET_PROVENANCE if key in train.attrs}))
    features = get("features")
    attrs.update({
        "loss": resolve_loss(get("loss")).name, "kernel": json.dumps(kernel_spec(kernel).describe()),
        "step_control": json.dumps(StepControl(**{key: get(key) for key in CONTROL}).describe()),
        "features": getattr(features or patch_features, "__qualname__", repr(features)),
        "method": get("method"), "operator_options": json.dumps(_json_safe(get("operator_options") or {})),
        "steps": int(steps), "chart": chart})
    call = format_call("mfarray.clustered_flow", train, kernel, steps=steps, test=test, kappa=kappa,
                       **{k: v for k, v in {**options, **arrays}.items() if k != "loss" or isinstance(v, str)})
    attrs.update(json_attrs({
        "title": "mfarray clustered flow result: per-cluster frozen-kernel flows (2.12, section 3.1)",
        "flow": "per-cluster frozen-kernel flows (2.12), cross-cluster kernel terms neglected (section 3.1)",
        "model": "clustered kernel", "n_clusters": int(ids.size),
        "clustering": json.dumps(train.attrs.get("cluster", {}), default=repr),
        "test_assignment": "cluster of the nearest train point (FS distance)",
        "kappa": kappa,
        "flow_options": json.dumps({k: (v if isinstance(v, (int, float, str, bool, type(None), dict)) else repr(v))
                                    for k, v in {**options, **arrays}.items()}, default=repr),
        **provenance(call)}))
    if test is not None:
        attrs.update(json_attrs({f"test_{k}": test.attrs[k] for k in ("seed", *SET_PROVENANCE) if k in test.attrs}))
    return {k: v for k, v in attrs.items() if v is not None}


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
    docs["cluster"] = {"description": "cluster id (a label of train.cluster, mfarray.cluster) of each per-cluster "
                                      "flow",
                       "convention": "0..C-1 with C = train.attrs['cluster']['n_clusters'] (mfarray.cluster), else "
                                     "the distinct labels; a cluster without train points has size 0 and NaN "
                                     "histories"}
    docs["cluster_train"] = {"description": "cluster of each train point (its flow), from train.cluster",
                             "convention": "a value of the cluster coordinate"}
    docs["cluster_test"] = {"description": "cluster of each test point: that of its nearest train point in FS "
                                           "distance (3.2)", "convention": "a value of the cluster coordinate"}
    docs["dual_cluster"] = {"description": "dual coefficients A of each train point in its own cluster's flow: "
                                           "g(x) = g_initial(x) - sum_y Theta(x, y) A(y) over the train points y of "
                                           "x's cluster only (cross-cluster kernel terms neglected)",
                            "convention": "Hermitian complex matrices (point, row, col), indexed as g_train"}
    docs["cluster_steps_done"] = {"description": "steps done by each cluster's flow (a flow that cannot take a step "
                                                 "raises FlowError, so steps, or 0 for a cluster without train points)",
                                  "convention": "count"}
    docs["global_kappa"] = {"description": "kappa (B.10) of all train points' initial metrics, used by every "
                                           "cluster's loss (kappa='global')",
                            "convention": "E_w[det g0 / |Omega|^2] with the MC weights weight_train"}
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
                                   "convention": base["convention"] + "; NaN for a cluster without train points "
                                                                      "(and sigma_test for one without test points)"}
    return docs


CLUSTERED_DOCS: dict[str, dict[str, str]] = _docs()
