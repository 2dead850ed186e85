r"""Training phi-networks (:mod:`mfarray.kahler.network`) with Adam on a sigma loss, with
per-epoch Zarr checkpoints that an interrupted run resumes from.

One epoch: the train points in the mini-batches of :func:`mfarray.optim.epoch_batches`
(``seed``, epoch), and per batch one Adam step (:func:`mfarray.optim.adam`, learning rate
``lr * lr_decay**(epoch - 1)``) on the mean loss

    L_batch = (1/b) sum_{x in batch} l(x),   l = w |1 - eta|  ("sigma", B.11)  or
                                             l = w (1 - eta)^2 ("sigma_squared", B.14),
    eta = det g / (kappa |Omega|^2),  g = g_FS + i dd-bar phi  (in each point's own chart),

with the point set's own Monte-Carlo weights w and kappa FIXED at its value for the initial
metric g_FS on the train set (:func:`mfarray.losses.loss_data`; the Kähler class does not move).
The gradient is :func:`mfarray.kahler.network.metric_and_pullback` of the per-point loss
gradients G = dl/dg (:mod:`mfarray.losses`).  A point whose metric is not valid (not positive
definite, :func:`mfarray.linalg.metrics`) has no loss gradient: it is left out of its batch's
gradient (still counted in the 1/b) and counted in ``skipped``.

After every epoch: sigma (B.11, kappa of the current metric, :func:`mfarray.geometry.measures.sigma`)
over the WHOLE train set and test set, each point in its own chart, no rejection sampling;
points whose metric is not positive definite are counted (``invalid_*``) and still enter sigma
with their (possibly negative) determinant.

Parallelism and reproducibility: a batch is cut into blocks (:func:`block_size`), computed
on ``threads`` threads (default: the cores, :func:`mfarray.backend.cores`) with BLAS held to one
thread, and the block gradients are summed in block order: the numbers do not depend on the
number of threads.

Checkpoints: with ``checkpoint=path`` (a local path or fsspec URL) the run keeps two Zarr
stores, ``path/even.zarr`` and ``path/odd.zarr`` (:func:`mfarray.io.to_zarr`), and after epoch e
writes the whole state (history, parameters, Adam moments and step) to the one of e's parity,
so a complete checkpoint survives a kill at any moment (one that kills the write of a slot
leaves a store the next write replaces: :func:`mfarray.io.to_zarr`).
A later call with the same arguments (``epochs`` may be larger) resumes from the last complete
epoch and gives the same numbers as an uninterrupted run (except the timings ``time``,
``cpu_time``, ``eval_time``); a checkpoint of another run (other data, config, batch, lr,
lr_decay, loss or seed) is refused.

Cost (3 x 64 network, Fermat quintic, 2-core AMD EPYC shared with other jobs, load 4-6): one
epoch over 10^5 points with batch 128 took 9.6 s wall (9.4 CPU seconds); the sigma evaluation of
10^5 points 3-4 s (benchmarks/bench_phi_network.py).  NumPy arrays (point sets are loaded to the
host); the network functions themselves also take CuPy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import xarray as xr

from .. import backend, io, linalg, losses, optim
from ..geometry import measures
from ..geometry.hypersurface import Hypersurface
from . import network
from .algebraic import point_arrays
from .sections import section_exponents, section_frame

__all__ = ["LOSSES", "BLOCK", "block_size", "train_phi_network", "phi_network_metric", "read_checkpoint"]

LOSSES = {"sigma": losses.sigma_loss, "sigma_squared": losses.sigma_squared_loss}
BLOCK = 128
"""Largest block (thread task) of a batch, in points: one block's jets stay in cache.  A batch of
b points is cut into blocks of min(BLOCK, max(32, ceil(b / 2))) points, a function of b alone (so
that the numbers do not depend on the thread count) giving two cores work from b = 64 on."""


def block_size(batch: int) -> int:
    """Points per block of a batch of ``batch`` points (see :data:`BLOCK`)."""
    return min(BLOCK, max(32, -(-batch // 2)))

SLOTS = ("even.zarr", "odd.zarr")
FORMAT = "mfarray-phi-network-checkpoint-1"


# ----------------------------------------------------------------------------- inputs
class _Points:
    """A point set's arrays (NumPy) and its section frame in its own charts; ``surface`` (when
    given) the hypersurface the points must lie on, named ``against`` in the error."""

    def __init__(self, ds: xr.Dataset, name: str, config: network.PhiNetwork, surface: Hypersurface | None,
                 against: str = "the train points"):
        if not isinstance(ds, xr.Dataset):
            raise TypeError(f"{name} must be a point set (xarray.Dataset from mfarray.sample_points); "
                            f"got {type(ds).__name__}")
        names = ("z", "patch", "elim", "omega2", "weight")
        missing = [v for v in names if v not in ds.variables]
        if missing:
            raise ValueError(f"{name} lacks {', '.join(missing)}: pass a point set of a Calabi-Yau hypersurface "
                             f"(mfarray.sample_points), which has |Omega|^2 and MC weights")
        arrays = point_arrays(ds, names, surface, what=name, against=against)  # empty, other surface, not finite
        self.surface = Hypersurface.from_attrs(ds.attrs)
        self.z, self.patch, self.elim, self.omega2, self.weight = (
            np.asarray(backend.to_numpy(a), dtype=t)
            for a, t in zip(arrays, (np.complex128, np.int64, np.int64, np.float64, np.float64)))
        self.n = self.z.shape[0]
        exps = section_exponents(self.surface, config.k)
        self.frame = section_frame(self.surface, self.z, exps, self.patch, self.elim)

    def token(self) -> bytes:
        h = hashlib.sha256()
        for a in (self.z, self.patch, self.elim, self.omega2, self.weight):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.digest()


def _check_int(name, value, lo):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}; got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------- one step
def _workspace(local):
    """This thread's :class:`~mfarray.kahler.network.Workspace` (one per thread and run)."""
    ws = getattr(local, "ws", None)
    if ws is None:
        ws = local.ws = network.Workspace()
    return ws


def _block_gradient(config, params, frame, omega2, weight, kappa, loss, ws):
    """(sum of the losses, gradient of their sum (P,), number of points left out) of one block."""
    g, pullback = network.metric_and_pullback(config, params, frame, workspace=ws)
    m = linalg.metrics(g)
    skipped = 0
    if not m.all_valid:
        ok = m.valid
        skipped = int(np.count_nonzero(~ok))
        if skipped == len(ok):
            return 0.0, np.zeros_like(params), skipped
        m = linalg.metrics(g[ok])
        omega2, weight = omega2[ok], weight[ok]
    if not weight.sum() > 0:  # passive (zero-weight) points only
        return 0.0, np.zeros_like(params), skipped
    data = losses.LossData(omega2=omega2, weight=weight, kappa=kappa)
    values = loss.values_at(m, data)
    G = losses.gradient(loss, m, data)
    if skipped:
        full = np.zeros(g.shape, dtype=G.dtype)
        full[ok] = G
        G = full
    return float(values.sum()), pullback(G), skipped


def _batch_gradient(pool, local, config, params, pts, idx, kappa, loss):
    """Mean loss and its gradient over the batch ``idx``, in blocks (summed in block order)."""
    size = block_size(len(idx))
    blocks = [idx[i:i + size] for i in range(0, len(idx), size)]

    def task(b):
        return _block_gradient(config, params, pts.frame.take(b), pts.omega2[b], pts.weight[b], kappa, loss,
                               _workspace(local))

    results = list(pool.map(task, blocks)) if pool is not None else [task(b) for b in blocks]
    total, grad, skipped = 0.0, np.zeros_like(params), 0
    for value, gr, sk in results:
        total += value
        grad += gr
        skipped += sk
    n = len(idx)
    grad /= n
    return total / n, grad, skipped


def _metric(pool, local, config, params, frame):
    """g at every point of ``frame``, in blocks on the pool."""
    n = frame.s.shape[0]
    chunk = 1024
    slices = [slice(i, min(i + chunk, n)) for i in range(0, n, chunk)]

    def task(sl):
        return network.metric(config, params, frame.take(sl), chunk=256, workspace=_workspace(local))

    parts = list(pool.map(task, slices)) if pool is not None else [task(sl) for sl in slices]
    return np.concatenate(parts)


def _evaluate(pool, local, config, params, pts):
    """(sigma, number of metrics that are not valid) over all points of ``pts``."""
    g = _metric(pool, local, config, params, pts.frame)
    det = linalg.hermitian_det(g)
    invalid = int(np.count_nonzero(~linalg.metrics(g).valid))
    return float(measures.sigma(det, pts.omega2, pts.weight)), invalid


# ----------------------------------------------------------------------------- records
def _history(n_epochs: int, has_test: bool) -> dict:
    names = ["loss", "sigma_train", "invalid_train", "skipped", "time", "cpu_time", "eval_time"]
    if has_test:
        names += ["sigma_test", "invalid_test"]
    return {name: np.full(n_epochs + 1, np.nan) for name in names}


def _dataset(hist, done, params, state, attrs, with_state):
    """The result (epochs 0..done) as a Dataset; with the Adam state for a checkpoint."""
    data = {name: ("epoch", values[:done + 1].copy()) for name, values in hist.items()}
    data["params"] = ("param", np.asarray(params).copy())
    if with_state:
        data["adam_m"] = ("param", np.asarray(state.m).copy())
        data["adam_v"] = ("param", np.asarray(state.v).copy())
    ds = xr.Dataset(data, coords={"epoch": np.arange(done + 1)})
    ds.attrs = {**attrs, "epochs": int(done)}
    if with_state:
        ds.attrs["adam_step"] = int(state.step)
    for name, text in _DOCS.items():
        if name in ds:
            ds[name].attrs["description"] = text
    return ds


_DOCS = {
    "epoch": "epochs done (0: the initial metric g_FS, before any step)",
    "adam_m": "Adam's first-moment estimate (checkpoints only)",
    "adam_v": "Adam's second-moment estimate (checkpoints only)",
    "loss": "mean training loss over the epoch's batches (NaN at epoch 0)",
    "sigma_train": "sigma (B.11) over the whole train set after the epoch (epoch 0: g_FS)",
    "sigma_test": "sigma (B.11) over the whole test set after the epoch (epoch 0: g_FS)",
    "invalid_train": "train points whose metric is not positive definite after the epoch",
    "invalid_test": "test points whose metric is not positive definite after the epoch",
    "skipped": "train-point visits in the epoch left out of the gradient (metric not positive definite)",
    "time": "wall-clock seconds of the epoch's training steps",
    "cpu_time": "CPU seconds (all threads of the process) of the epoch's training steps",
    "eval_time": "wall-clock seconds of the epoch's sigma evaluations",
    "params": "flat parameters after the last epoch (mfarray.kahler.network, networks.flatten order)",
}


def _slot_paths(checkpoint) -> list[str]:
    base = str(checkpoint).rstrip("/")
    return [f"{base}/{slot}" for slot in SLOTS]


def read_checkpoint(checkpoint: str | os.PathLike) -> xr.Dataset | None:
    """The latest complete checkpoint under ``checkpoint`` (loaded into memory), or None."""
    best = None
    for path in _slot_paths(checkpoint):
        try:
            ds = io.open_zarr(path)
        except (FileNotFoundError, ValueError):  # absent, or an interrupted write: the other slot counts
            continue
        if ds.attrs.get("format") != FORMAT:
            raise ValueError(f"{path} is not a phi-network checkpoint (no format {FORMAT!r}): "
                             f"choose another checkpoint path")
        if best is None or ds.attrs["epochs"] > best.attrs["epochs"]:
            best = ds
    return None if best is None else best.load()


# ----------------------------------------------------------------------------- training
def train_phi_network(train: xr.Dataset, config: network.PhiNetwork, epochs: int, batch: int, lr: float,
                      loss: str = "sigma", test: xr.Dataset | None = None, seed: int = 0,
                      checkpoint: str | os.PathLike | None = None, progress: bool = False, *,
                      lr_decay: float = 1.0, threads: int | None = None) -> xr.Dataset:
    """Train a phi-network g = g_FS + i dd-bar phi with Adam (module docstring).

    Parameters
    ----------
    train, test : point sets (``mfarray.sample_points``) of one Calabi-Yau hypersurface; test optional.
    config : :class:`~mfarray.kahler.network.PhiNetwork` (its ``seed`` initialises the weights).
    epochs : int >= 1, passes over the train set.
    batch : int >= 1, mini-batch size (the last batch of an epoch may be smaller).
    lr : float > 0, Adam's learning rate (b1 = 0.9, b2 = 0.999, eps = 1e-8) in epoch 1; epoch e
        uses ``lr * lr_decay**(e - 1)``.  Adam moves every parameter by about lr per step, so in
        the NTK parameterisation (weights scaled by 1/sqrt(fan-in)) the rate is ~sqrt(width) times
        that of the standard one: for 3 x 64, batch 128, lr 3e-2 (NTK) or 4e-3 (standard) with
        lr_decay 0.85 reach test sigma 0.0065 / 0.0080 in 20 epochs over 2 x 10^4 points.
    loss : ``"sigma"`` (w |1 - eta|) or ``"sigma_squared"`` (w (1 - eta)^2), kappa fixed at g_FS.
    seed : int >= 0, the mini-batch order (:func:`mfarray.optim.epoch_batches`).
    checkpoint : path or URL (module docstring); None: no checkpoints.
    progress : a line per epoch on stderr.
    lr_decay : float in (0, 1], the per-epoch factor of the learning rate (1: constant).
    threads : worker threads (default: :func:`mfarray.backend.cores`); does not change the numbers.

    Returns
    -------
    xarray.Dataset with coordinate ``epoch`` = 0..epochs (0: the initial metric) and
    ``loss``, ``sigma_train``, ``sigma_test`` (with a test set), ``invalid_train``,
    ``invalid_test``, ``skipped``, ``time``, ``cpu_time``, ``eval_time`` per epoch, and ``params`` (param) the
    final flat parameters; attributes: the config (JSON), batch, lr, loss, seed, kappa, the surface.
    """
    if not isinstance(config, network.PhiNetwork):
        raise TypeError(f"config must be a PhiNetwork (mfarray.kahler.network); got {type(config).__name__}")
    epochs = _check_int("epochs", epochs, 1)
    batch = _check_int("batch", batch, 1)
    seed = _check_int("seed", seed, 0)
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {tuple(LOSSES)}; got {loss!r}")
    try:
        lr = float(lr)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"lr must be a positive number; got {lr!r}") from exc
    optim.adam(lr)  # its checks of lr, before any work
    try:
        lr_decay = float(lr_decay)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"lr_decay must be a number in (0, 1]; got {lr_decay!r}") from exc
    if not 0.0 < lr_decay <= 1.0:
        raise ValueError(f"lr_decay must lie in (0, 1] (the per-epoch factor of lr); got {lr_decay}")
    threads = backend.cores() if threads is None else _check_int("threads", threads, 1)
    loss_fn = LOSSES[loss]()

    tr = _Points(train, "train", config, None)
    per_epoch = optim.n_batches(tr.n, batch)
    init_fn, update = optim.adam(lr if lr_decay == 1.0 else (lambda step: lr * lr_decay ** (step // per_epoch)))
    te = None if test is None else _Points(test, "test", config, tr.surface)
    tr.surface.require_calabi_yau("phi-network training (the sigma loss needs |Omega|^2)")
    kappa = losses.loss_data(tr.omega2, tr.weight, tr.frame.g_fs).kappa

    settings = {"format": FORMAT, "config": json.dumps(config.to_attrs(), sort_keys=True), "batch": batch,
                "lr": lr, "lr_decay": lr_decay, "loss": loss, "seed": seed}
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    h.update(tr.token())
    h.update(b"test" + (te.token() if te is not None else b"none"))
    attrs = {**settings, "fingerprint": h.hexdigest(), "kappa": kappa, "n_train": tr.n,
             "n_test": 0 if te is None else te.n, **tr.surface.to_attrs()}

    hist = _history(epochs, te is not None)
    params = network.init(config, tr.surface)
    state = init_fn(params)
    start = 1
    ck = read_checkpoint(checkpoint) if checkpoint is not None else None
    if ck is not None:
        if ck.attrs.get("fingerprint") != attrs["fingerprint"]:
            raise ValueError(f"the checkpoint at {checkpoint} is of another run (other data, config, batch, lr, loss "
                             f"or seed): choose another checkpoint path, or repeat that run's arguments to resume it")
        done = int(ck.attrs["epochs"])
        if done > epochs:
            raise ValueError(f"the checkpoint at {checkpoint} has {done} epochs, more than epochs = {epochs}: "
                             f"pass epochs >= {done} (or another checkpoint path)")
        for name in hist:
            hist[name][:done + 1] = ck[name].values
        params = np.array(ck["params"].values, dtype=np.float64)
        state = optim.AdamState(step=int(ck.attrs["adam_step"]), m=np.array(ck["adam_m"].values, dtype=np.float64),
                                v=np.array(ck["adam_v"].values, dtype=np.float64))
        start = done + 1

    with contextlib.ExitStack() as stack:
        # small GEMMs: BLAS threads only add overhead (and change bits); the blocks are the parallelism
        stack.enter_context(backend.one_blas_thread())
        pool = stack.enter_context(ThreadPoolExecutor(threads)) if threads > 1 else None
        local = threading.local()  # a network.Workspace per thread
        if start == 1:  # epoch 0: the initial metric
            _record_eval(hist, 0, pool, local, config, params, tr, te)
            hist["time"][0] = hist["cpu_time"][0] = 0.0
            if progress:
                _report(hist, 0, epochs)
        for epoch in range(start, epochs + 1):
            t0, c0 = time.perf_counter(), time.process_time()
            params, state, hist["loss"][epoch], hist["skipped"][epoch] = optim.run_epoch(
                params, state, update, optim.epoch_batches(tr.n, batch, seed, epoch),
                lambda p, idx: _batch_gradient(pool, local, config, p, tr, idx, kappa, loss_fn))
            hist["time"][epoch] = time.perf_counter() - t0
            hist["cpu_time"][epoch] = time.process_time() - c0
            optim.require_finite_epoch("phi-network", epoch, hist["loss"][epoch], params, lr)
            _record_eval(hist, epoch, pool, local, config, params, tr, te)
            if checkpoint is not None:
                ds = _dataset(hist, epoch, params, state, attrs, with_state=True)
                io.to_zarr(ds, _slot_paths(checkpoint)[epoch % 2], overwrite=True)
            if progress:
                _report(hist, epoch, epochs)
    return _dataset(hist, epochs, params, state, attrs, with_state=False)


def _record_eval(hist, epoch, pool, local, config, params, tr, te):
    t0 = time.perf_counter()
    hist["sigma_train"][epoch], hist["invalid_train"][epoch] = _evaluate(pool, local, config, params, tr)
    if te is not None:
        hist["sigma_test"][epoch], hist["invalid_test"][epoch] = _evaluate(pool, local, config, params, te)
    hist["eval_time"][epoch] = time.perf_counter() - t0


def _report(hist, epoch, epochs):
    line = f"phi-network epoch {epoch}/{epochs}"
    if epoch:
        line += f" loss {hist['loss'][epoch]:.4g}"
    line += f" sigma_train {hist['sigma_train'][epoch]:.4g}"
    if "sigma_test" in hist:
        line += f" sigma_test {hist['sigma_test'][epoch]:.4g}"
    line += f" [{hist['time'][epoch]:.1f} s + eval {hist['eval_time'][epoch]:.1f} s]"
    print(line, file=sys.stderr, flush=True)


def phi_network_metric(result: xr.Dataset, points: xr.Dataset, *, threads: int | None = None) -> np.ndarray:
    """The trained metric g (N, kd, kd) of a :func:`train_phi_network` result (or checkpoint) at a
    point set's N points, each in its own chart (blocks on ``threads`` threads, one BLAS thread).
    Points that are not finite, or lie on another surface than the train points, are refused."""
    if not isinstance(result, xr.Dataset) or "params" not in result or "config" not in result.attrs:
        raise ValueError("result must be the Dataset returned by train_phi_network (with 'params' and a 'config' "
                         "attribute)")
    config = network.PhiNetwork.from_attrs(json.loads(result.attrs["config"]))
    pts = _Points(points, "points", config, Hypersurface.from_attrs(result.attrs), "the network's train points")
    params = np.asarray(result["params"].values, dtype=np.float64)
    threads = backend.cores() if threads is None else _check_int("threads", threads, 1)
    with backend.one_blas_thread(), ThreadPoolExecutor(threads) as pool:
        return _metric(pool if threads > 1 else None, threading.local(), config, params, pts.frame)
