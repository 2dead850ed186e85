"""BlockwiseOperator's eager mat-vec is deterministic: the same bits on every run, for any
number of threads, any thread timing and any tile-cache state, equal bit for bit to its
documented serial order (row block I: the products c_IJ added in increasing J), and for a
symmetric operator to the lazy Dask graph; a blockwise flow repeats to the bit."""

from __future__ import annotations

import threading
import time

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

import mfarray as mf
from mfarray import backend
from mfarray.kernels import Kernel, gaussian_fs
from mfarray.kernels.operators import BlockwiseOperator, as_operator, tiled
from mfarray.kernels.operators.protocol import apply_block, bounds

BLOCK = 32
N_OUT, N_IN, D = 203, 157, 5  # neither is a multiple of BLOCK: ragged edge tiles
RUNS = 20


def gaussian(x, y, s=1.0):
    d2 = np.sum(x * x, axis=1)[:, None] + np.sum(y * y, axis=1)[None, :] - 2.0 * (x @ y.T)
    return np.exp(-np.clip(d2, 0.0, None) / (2.0 * s * s))


class Jitter:
    """``fn(x, y)`` after a random pause of up to ``pause`` seconds (its own lock-guarded
    generator): tiles finish in a different order on every run."""

    def __init__(self, fn, pause=2e-3, seed=0):
        self.fn, self.pause = fn, pause
        self._rng, self._lock = np.random.default_rng(seed), threading.Lock()

    def __call__(self, x, y, **kw):
        with self._lock:
            t = self._rng.uniform(0.0, self.pause)
        time.sleep(t)
        return self.fn(x, y, **kw)


JITTERY = Kernel(Jitter(gaussian), inputs="features", symmetric=True)


@pytest.fixture(scope="module")
def points():
    rng = np.random.default_rng(11)
    return rng.standard_normal((N_OUT, D)), rng.standard_normal((N_IN, D))


def make_v(kind, n, seed=5):
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, 3, 3))
    return v if kind == "real" else v + 1j * rng.standard_normal((n, 3, 3))


def serial_order(x_out, x_in, v, block, symmetric):
    """The documented order, one tile at a time in this thread with one BLAS thread: row
    block I is ((c_I0 + c_I1) + c_I2) + ..., c_IJ = apply_block(K_IJ, v_J), and for a symmetric
    operator below the diagonal c_IJ = apply_block(K_JI, v_J, transpose=True)."""
    v2 = v.reshape(v.shape[0], -1)
    rb, cb = bounds(len(x_out), block), bounds(len(x_in), block)
    pieces = []
    with backend.one_blas_thread():
        for i, (r0, r1) in enumerate(rb):
            acc = None
            for j, (c0, c1) in enumerate(cb):
                if symmetric and j < i:
                    c = apply_block(gaussian(x_in[c0:c1], x_out[r0:r1]), v2[c0:c1], transpose=True)
                else:
                    c = apply_block(gaussian(x_out[r0:r1], x_in[c0:c1]), v2[c0:c1])
                acc = c.copy() if acc is None else acc + c
            pieces.append(acc)
    return np.concatenate(pieces).reshape((len(x_out), *v.shape[1:]))


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(np.uint8), b.view(np.uint8))


@pytest.mark.parametrize("shape", ["symmetric", "rect", "rect-transposed"])
@pytest.mark.parametrize("kind", ["real", "complex"])
def test_blockwise_matvec_same_bits_every_run_and_thread_count(points, shape, kind, monkeypatch):
    x_out, x_in = points
    if shape == "symmetric":
        make, n_in = (lambda **kw: BlockwiseOperator(JITTERY, x_out, x_out, block=BLOCK, **kw)), N_OUT
    elif shape == "rect":
        make, n_in = (lambda **kw: BlockwiseOperator(JITTERY, x_out, x_in, block=BLOCK, **kw)), N_IN
    else:  # the transposed operator (kernel(b, a).T tiles)
        make, n_in = (lambda **kw: BlockwiseOperator(JITTERY, x_in, x_out, block=BLOCK, **kw).T), N_IN
    v = make_v(kind, n_in)
    ref = make(workers=1).matvec(v)
    assert make().symmetric == (shape == "symmetric")
    for workers in (2, 3, 7):
        op = make(workers=workers)
        for _ in range(RUNS if workers == 3 else 3):
            assert same_bits(op.matvec(v), ref), f"workers={workers}"
    for ncores in (1, 4):  # the default thread count follows backend.cores()
        monkeypatch.setattr(backend, "cores", lambda n=ncores: n)
        assert same_bits(make().matvec(v), ref), f"cores={ncores}"


@pytest.mark.parametrize("shape", ["symmetric", "rect"])
@pytest.mark.parametrize("kind", ["real", "complex"])
def test_blockwise_matvec_is_the_documented_serial_order(points, shape, kind):
    x_out, x_in = points
    x_in = x_out if shape == "symmetric" else x_in
    v = make_v(kind, len(x_in))
    ref = serial_order(x_out, x_in, v, BLOCK, symmetric=shape == "symmetric")
    for workers in (1, 3):
        out = BlockwiseOperator(JITTERY, x_out, x_in, block=BLOCK, workers=workers).matvec(v)
        assert same_bits(out, ref), f"workers={workers}"


@pytest.mark.parametrize("kind", ["real", "complex"])
def test_symmetric_blockwise_equals_the_dask_graph_bit_for_bit(points, kind):
    x = points[0]
    v = make_v(kind, N_OUT)
    eager = BlockwiseOperator(JITTERY, x, x, block=BLOCK, workers=3).matvec(v)
    with dask.config.set(scheduler="threads"):
        lazy = BlockwiseOperator(JITTERY, x, x, block=BLOCK).matvec(da.from_array(v, chunks=(BLOCK, 3, 3)))
        lazy = lazy.compute()
    assert same_bits(eager, lazy)


@pytest.mark.parametrize("shape", ["symmetric", "rect"])
def test_tile_cache_gives_the_same_bits(points, shape):
    x_out, x_in = points
    x_in = x_out if shape == "symmetric" else x_in
    v = make_v("complex", len(x_in))
    ref = BlockwiseOperator(JITTERY, x_out, x_in, block=BLOCK, workers=1).matvec(v)
    full = BlockwiseOperator(JITTERY, x_out, x_in, block=BLOCK, workers=3, cache_bytes=1 << 30)
    part = BlockwiseOperator(JITTERY, x_out, x_in, block=BLOCK, workers=3, cache_bytes=3 * BLOCK * BLOCK * 8)
    for op in (full, part):
        for _ in range(3):  # filling the cache, then from it (all of it, or three tiles)
            assert same_bits(op.matvec(v), ref)
    n_tiles = len(full._tiles())
    assert len(full._cache.tiles) == n_tiles and len(part._cache.tiles) == 3


def test_at_most_ahead_times_workers_tiles_wait_to_be_added(points):
    """A slow first tile: the other threads run ahead by at most AHEAD * workers tiles (the
    bound on the results waiting to be added), then wait for it."""
    x = points[0]
    workers, seen, lock = 2, [], threading.Lock()
    calls = [0]

    def slow_first(a, b):
        with lock:
            calls[0] += 1
            first = calls[0] == 1
        if first:
            time.sleep(0.3)
            with lock:
                seen.append(calls[0])  # kernel calls begun while the first tile was pending
        return gaussian(a, b)

    op = BlockwiseOperator(Kernel(slow_first, inputs="features"), x, x, block=BLOCK, workers=workers)
    n_tiles = len(op._tiles())
    assert n_tiles > tiled.AHEAD * workers + 2
    out = op.matvec(make_v("real", N_OUT))
    assert seen and seen[0] <= tiled.AHEAD * workers
    assert same_bits(out, serial_order(x, x, make_v("real", N_OUT), BLOCK, symmetric=True))


def test_a_failing_tile_stops_the_mat_vec(points):
    x_out, x_in = points
    calls, lock, workers = [0], threading.Lock(), 2

    def fails_third(a, b):
        with lock:
            calls[0] += 1
            k = calls[0]
        if k == 3:
            raise RuntimeError("tile failed")
        return gaussian(a, b)

    op = BlockwiseOperator(Kernel(fails_third, inputs="features"), x_out, x_in, block=BLOCK, workers=workers)
    with pytest.raises(RuntimeError, match="tile failed"):
        op.matvec(make_v("real", N_IN))
    assert calls[0] <= 3 + tiled.AHEAD * workers < len(op._tiles())  # the rest were cancelled


def test_blockwise_kernel_flow_repeats_bit_for_bit():
    """A 20-step flow on blockwise train-train and test-train operators (threads, jittered
    tile timing) run twice: identical data variables."""
    ds = mf.select_chart(mf.sample_points(mf.fermat_quintic(), 5000, seed=3).compute())
    train, test = ds.isel(point=slice(0, 160)), ds.isel(point=slice(160, 220))
    kern = Kernel(Jitter(gaussian_fs, pause=1e-3), inputs="points", hyper={"sigma": 0.05, "squared": True})
    kw = {"steps": 20, "lr": 0.05, "test": test, "method": "blockwise",
          "operator_options": {"block": BLOCK, "workers": 3}}
    a, b = (mf.kernel_flow(train, kern, **kw) for _ in range(2))
    assert a.sizes["step"] == 21  # the initial state and 20 steps
    xr.testing.assert_identical(xr.Dataset(a.data_vars), xr.Dataset(b.data_vars))  # attrs record the call
    dense = mf.kernel_flow(train, kern, **{**kw, "method": "dense"})
    np.testing.assert_allclose(a.g_train.values, dense.g_train.values, rtol=1e-12, atol=1e-14)


def test_as_operator_blockwise_is_deterministic_across_worker_options(points):
    x = points[0]
    v = make_v("complex", N_OUT)
    outs = [as_operator(JITTERY, x, method="blockwise", block=BLOCK, workers=w).matvec(v) for w in (1, 2, 5)]
    assert all(same_bits(o, outs[0]) for o in outs[1:])
