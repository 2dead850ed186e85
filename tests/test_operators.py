"""Kernel operators (mfarray.kernels.operators) agree with the dense kernel matrix, stream
in bounded blocks, survive interrupted Zarr builds, and reject bad input clearly."""

from __future__ import annotations

import json
import threading
from functools import partial

import array_api_compat
import dask.array as da
import numpy as np
import pytest

from mfarray.kernels.operators import (
    BlockwiseOperator,
    DenseOperator,
    FactoredOperator,
    KernelOperator,
    ZarrOperator,
    as_operator,
)

BLOCK = 64
N_OUT, N_IN, D = 203, 157, 5  # neither is a multiple of BLOCK


def gaussian(x, y, s=1.0):
    """exp(-|x - y|^2 / (2 s^2)) on R^d, in the inputs' namespace (NumPy or CuPy)."""
    xp = array_api_compat.array_namespace(x, y)
    d2 = xp.sum(x * x, axis=1)[:, None] + xp.sum(y * y, axis=1)[None, :] - 2.0 * (x @ y.T)
    return xp.exp(-xp.clip(d2, 0.0, None) / (2.0 * s * s))


class Recorder:
    """A Gaussian kernel that records the block shapes it is called with; it refuses
    (raises) any block larger than ``limit x limit`` and optionally fails after
    ``fail_after`` calls (a simulated interruption)."""

    def __init__(self, limit=None, fail_after=None, s=1.0):
        self.limit, self.fail_after, self.s = limit, fail_after, s
        self.shapes = []
        self._lock = threading.Lock()

    def __call__(self, x, y):
        with self._lock:
            if self.fail_after is not None and len(self.shapes) >= self.fail_after:
                raise KeyboardInterrupt("simulated interruption")
            self.shapes.append((x.shape[0], y.shape[0]))
        if self.limit is not None and (x.shape[0] > self.limit or y.shape[0] > self.limit):
            raise AssertionError(f"kernel called on a {x.shape[0]} x {y.shape[0]} block > {self.limit}")
        return gaussian(x, y, self.s)

    @property
    def calls(self):
        return len(self.shapes)


@pytest.fixture(scope="module")
def points():
    rng = np.random.default_rng(7)
    x_out = rng.standard_normal((N_OUT, D))
    x_in = rng.standard_normal((N_IN, D))
    return x_out, x_in


def make_v(kind, n, seed=3):
    rng = np.random.default_rng(seed)
    if kind == "real":
        return rng.standard_normal((n, 9))
    a = rng.standard_normal((n, 3, 3)) + 1j * rng.standard_normal((n, 3, 3))
    return a + np.conj(np.swapaxes(a, 1, 2))  # Hermitian metrics


def rel_err(a, b):
    return np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b))


@pytest.fixture(scope="module")
def zarr_stores(points, tmp_path_factory):
    """Stores for (shape, dtype), built once."""
    x_out, x_in = points
    root = tmp_path_factory.mktemp("kernels")
    stores = {}
    for shape in ("square", "rect"):
        xi = x_out if shape == "square" else x_in
        for dt in ("float64", "float32"):
            path = root / f"{shape}-{dt}.zarr"
            ZarrOperator.build(partial(gaussian, s=1.0), x_out, xi, path, block=BLOCK, dtype=dt)
            stores[shape, dt] = path
    return stores


FORMS = ["dense", "blockwise", "blockwise-dask-x", "blockwise-dask-v", "zarr64", "zarr32", "zarr64-dask-v", "factored"]


def build(form, shape, points, zarr_stores):
    x_out, x_in = points
    xi = x_out if shape == "square" else x_in
    if form == "dense":
        return DenseOperator(gaussian(x_out, xi)), False
    if form == "blockwise":
        return BlockwiseOperator(gaussian, x_out, xi, block=BLOCK), False
    if form == "blockwise-dask-x":
        return BlockwiseOperator(gaussian, da.from_array(x_out, chunks=90), da.from_array(xi, chunks=50), block=BLOCK), True
    if form == "blockwise-dask-v":
        return BlockwiseOperator(gaussian, x_out, xi, block=BLOCK), "v"
    if form.startswith("zarr"):
        dt = "float32" if form.startswith("zarr32") else "float64"
        return ZarrOperator.open(zarr_stores[shape, dt]), ("v" if form.endswith("dask-v") else False)
    if form == "factored":
        # exact factorisation K = L L^T (square) / K = K I^T (rectangular)
        K = gaussian(x_out, xi)
        if shape == "square":
            w, U = np.linalg.eigh(K)
            L = U * np.sqrt(np.clip(w, 0, None))
            return FactoredOperator(L, L), False
        return FactoredOperator(K, np.eye(xi.shape[0])), False
    raise AssertionError(form)


@pytest.mark.parametrize("shape", ["square", "rect"])
@pytest.mark.parametrize("kind", ["real", "complex"])
@pytest.mark.parametrize("form", FORMS)
def test_matvec_agrees_with_dense(form, kind, shape, points, zarr_stores):
    x_out, x_in = points
    xi = x_out if shape == "square" else x_in
    K = gaussian(x_out, xi)
    op, lazy = build(form, shape, points, zarr_stores)
    assert isinstance(op, KernelOperator)
    assert op.shape == K.shape
    v = make_v(kind, K.shape[1])
    ref = np.einsum("ab,b...->a...", K, v)
    vin = da.from_array(v, chunks=40) if lazy == "v" else v
    out = op.matvec(vin)
    if lazy:
        assert isinstance(out, da.Array)  # lazy until computed
        out = out.compute()
    assert out.shape == ref.shape
    assert np.iscomplexobj(out) == (kind == "complex")
    tol = 1e-6 if form == "zarr32" else 1e-12
    assert rel_err(out, ref) < tol
    if kind == "complex":  # the real kernel maps Hermitian metrics to Hermitian metrics
        # (to the products' rounding: a float32 store multiplies in float32, and BLAS may round the
        # (i, k) and (k, i) columns differently; flows move real rows, Hermitian by construction)
        atol = 1e-10 if form != "zarr32" else 4 * np.finfo(np.float32).eps * np.abs(out).max()
        np.testing.assert_allclose(out, np.conj(np.swapaxes(out, 1, 2)), atol=atol)


@pytest.mark.parametrize("form", FORMS)
def test_transpose_diagonal_to_dense(form, points, zarr_stores):
    x_out, x_in = points
    tol = 1e-6 if form == "zarr32" else 1e-12
    for shape in ("square", "rect"):
        xi = x_out if shape == "square" else x_in
        K = gaussian(x_out, xi)
        op, _ = build(form, shape, points, zarr_stores)
        dense = op.to_dense()
        dense = dense.compute() if isinstance(dense, da.Array) else np.asarray(dense)
        assert rel_err(dense, K) < tol
        u = make_v("real", K.shape[0], seed=5)
        out = op.T.matvec(u)
        out = out.compute() if isinstance(out, da.Array) else out
        assert op.T.shape == K.T.shape
        assert rel_err(out, K.T @ u) < tol
        if shape == "square":
            d = op.diagonal()
            d = d.compute() if isinstance(d, da.Array) else d
            np.testing.assert_allclose(d, np.diagonal(K), rtol=tol, atol=tol)
        else:
            with pytest.raises(ValueError, match="square"):
                op.diagonal()


def test_vector_and_integer_v(points):
    x_out, x_in = points
    K = gaussian(x_out, x_in)
    op = BlockwiseOperator(gaussian, x_out, x_in, block=BLOCK)
    v = np.arange(N_IN)  # 1-D integer: promoted to float64, shape (n_out,)
    out = op.matvec(v)
    assert out.shape == (N_OUT,) and out.dtype == np.float64
    assert rel_err(out, K @ v) < 1e-12


# ------------------------------------------------------------------ bounded blocks


@pytest.mark.parametrize("inputs", ["numpy", "dask-x-big-chunks", "dask-v"])
def test_blockwise_never_exceeds_block(inputs, points):
    x_out, x_in = points
    rec = Recorder(limit=BLOCK)
    v = make_v("complex", N_IN)
    if inputs == "numpy":
        op, vin = BlockwiseOperator(rec, x_out, x_in, block=BLOCK), v
    elif inputs == "dask-x-big-chunks":  # one chunk each: the operator must re-tile
        op = BlockwiseOperator(rec, da.from_array(x_out, chunks=-1), da.from_array(x_in, chunks=-1), block=BLOCK)
        vin = da.from_array(v, chunks=-1)
    else:
        op, vin = BlockwiseOperator(rec, x_out, x_in, block=BLOCK), da.from_array(v, chunks=-1)
    out = op.matvec(vin)
    if isinstance(out, da.Array):
        assert rec.calls == 0  # nothing computed while building the graph
        out = out.compute()
    nb = -(-N_OUT // BLOCK) * -(-N_IN // BLOCK)
    assert rec.calls == nb  # every tile exactly once, none larger than block x block
    assert max(max(s) for s in rec.shapes) <= BLOCK
    assert rel_err(out, np.einsum("ab,b...->a...", gaussian(x_out, x_in), v)) < 1e-12


def test_dask_graph_has_one_task_per_tile_and_tree_reduction(points):
    x_out, x_in = points
    op = BlockwiseOperator(gaussian, da.from_array(x_out, chunks=-1), x_in, block=BLOCK)
    out = op.matvec(make_v("real", N_IN))
    nrow, ncol = -(-N_OUT // BLOCK), -(-N_IN // BLOCK)
    assert out.chunks[0] == (BLOCK,) * (nrow - 1) + (N_OUT - BLOCK * (nrow - 1),)
    names = {k[0] if isinstance(k, tuple) else k for k in dict(out.__dask_graph__())}
    partial_layer = [n for n in names if "partial_kernel_product" in n]
    assert len(partial_layer) == 1
    tiles = [k for k in dict(out.__dask_graph__()) if isinstance(k, tuple) and k[0] == partial_layer[0]]
    assert len(tiles) == nrow * ncol


# ------------------------------------------------------------------ Zarr


def test_zarr_build_resumes_after_interruption(points, tmp_path):
    x_out, x_in = points
    nb = -(-N_OUT // BLOCK) * -(-N_IN // BLOCK)
    # uninterrupted reference
    ref = ZarrOperator.build(Recorder(), x_out, x_in, tmp_path / "ref.zarr", block=BLOCK, dtype="float64")
    # interrupted after 5 blocks
    path = tmp_path / "k.zarr"
    with pytest.raises(KeyboardInterrupt):
        ZarrOperator.build(Recorder(fail_after=5), x_out, x_in, path, block=BLOCK, dtype="float64")
    with pytest.raises(ValueError, match="incomplete.*5/"):
        ZarrOperator.open(path)
    partial_op = ZarrOperator.open(path, require_complete=False)
    assert partial_op.progress == (5, nb) and not partial_op.complete
    assert np.isnan(partial_op.to_dense()).any()  # unwritten blocks are NaN, never silent zeros
    # rerun: only the missing blocks are computed
    rec = Recorder()
    seen = []
    op = ZarrOperator.build(rec, x_out, x_in, path, block=BLOCK, dtype="float64", callback=lambda *a: seen.append(a))
    # the missing blocks, and first the value probe: a kernel object's state (its call record, a
    # lock) cannot be shown equal without calling it, so its values on the probe decide (issue 9)
    assert rec.calls == nb - 5 + 1 and rec.shapes[0] == (8, 8)
    assert seen[-1][2:] == (nb, nb)
    assert op.complete
    np.testing.assert_array_equal(ZarrOperator.open(path).to_dense(), ref.to_dense())
    # a third run computes nothing (the same points as Dask arrays: same fingerprint)
    rec = Recorder()
    ZarrOperator.build(rec, da.from_array(x_out, chunks=50), da.from_array(x_in), path, block=BLOCK, dtype="float64")
    assert rec.shapes == [(8, 8)]  # the value probe only


def test_zarr_failed_write_is_never_marked_done(points, tmp_path, monkeypatch):
    import zarr

    x_out, x_in = points
    real_setitem = zarr.Array.__setitem__
    writes = []

    def flaky_setitem(self, key, value):
        if len(writes) == 4:
            raise OSError("disk full (simulated)")
        real_setitem(self, key, value)
        writes.append(key)

    path = tmp_path / "w.zarr"
    monkeypatch.setattr(zarr.Array, "__setitem__", flaky_setitem)
    with pytest.raises(OSError, match="disk full"):
        ZarrOperator.build(Recorder(), x_out, x_in, path, block=BLOCK, dtype="float64")
    monkeypatch.setattr(zarr.Array, "__setitem__", real_setitem)
    assert ZarrOperator.open(path, require_complete=False).progress[0] == 4
    rec = Recorder()
    op = ZarrOperator.build(rec, x_out, x_in, path, block=BLOCK, dtype="float64")
    assert rec.calls == op.progress[1] - 4 + 1  # + the value probe (a kernel object with state)
    np.testing.assert_allclose(op.to_dense(), gaussian(x_out, x_in), rtol=1e-13, atol=1e-15)


def test_zarr_interruption_with_threads_and_symmetry(points, tmp_path):
    x_out, _ = points
    nrow = -(-N_OUT // BLOCK)
    n_upper = nrow * (nrow + 1) // 2
    path = tmp_path / "sym.zarr"
    with pytest.raises(KeyboardInterrupt):
        ZarrOperator.build(Recorder(fail_after=3), x_out, None, path, block=BLOCK, dtype="float64", symmetric=True, workers=2)
    done, total = ZarrOperator.open(path, require_complete=False).progress
    assert 0 < done < total
    rec = Recorder()
    op = ZarrOperator.build(rec, x_out, None, path, block=BLOCK, dtype="float64", symmetric=True, workers=2)
    assert rec.calls == n_upper - 3 + 1  # only the missing upper blocks, and the value probe
    np.testing.assert_allclose(op.to_dense(), gaussian(x_out, x_out), rtol=1e-13, atol=1e-15)


def test_zarr_rejects_a_mismatched_rerun(points, tmp_path):
    x_out, x_in = points
    path = tmp_path / "m.zarr"
    ZarrOperator.build(gaussian, x_out, x_in, path, block=BLOCK)
    with pytest.raises(ValueError, match="x_in_sha256"):
        ZarrOperator.build(gaussian, x_out, x_in + 1.0, path, block=BLOCK)
    with pytest.raises(ValueError, match="block"):
        ZarrOperator.build(gaussian, x_out, x_in, path, block=BLOCK + 1)
    with pytest.raises(ValueError, match="kernel"):
        ZarrOperator.build(partial(gaussian, s=2.0), x_out, x_in, path, block=BLOCK)
    op = ZarrOperator.build(partial(gaussian, s=2.0), x_out, x_in, path, block=BLOCK, overwrite=True)
    assert rel_err(op.to_dense(), gaussian(x_out, x_in, 2.0)) < 1e-6


def test_zarr_metadata_is_json_and_compressed_store(points, tmp_path):
    import zarr

    x_out, x_in = points
    k = partial(gaussian, s=1.5)
    k_c = partial(k)  # nested partial still exposes the keywords
    path = tmp_path / "c.zarr"
    op = ZarrOperator.build(
        k_c, x_out, x_in, path, block=BLOCK, dtype="float64", compressors=zarr.codecs.BloscCodec(),
        params={"s": 1.5, "phase": 1 + 2j},
    )  # fmt: skip
    attrs = op.attrs
    json.dumps(dict(zarr.open_array(path, mode="r").attrs))  # JSON only
    assert attrs["kernel"]["params"] == {"s": 1.5, "phase": {"real": 1.0, "imag": 2.0}}
    assert attrs["kernel"]["name"].endswith("gaussian")
    assert (attrs["n_out"], attrs["n_in"], attrs["block"], attrs["dtype"]) == (N_OUT, N_IN, BLOCK, "float64")
    arr = zarr.open_array(path, mode="r")
    assert arr.chunks == (BLOCK, BLOCK) and arr.shape == (N_OUT, N_IN)
    assert rel_err(op.to_dense(), gaussian(x_out, x_in, 1.5)) < 1e-14
    # default metadata from a functools.partial
    op2 = ZarrOperator.build(k, x_out, x_in, tmp_path / "d.zarr", block=BLOCK)
    assert op2.attrs["kernel"]["params"] == {"s": 1.5}
    assert op2.dtype == np.float64  # float64 by default (issue 9: float32 moved a flow's sigma by ~1e-9)
    lazy = op2.to_dask()
    assert lazy.chunks[0][0] == BLOCK
    v = make_v("real", N_IN)
    assert rel_err(op2.matvec(da.from_array(v, chunks=50)).compute(), gaussian(x_out, x_in, 1.5) @ v) < 1e-6


# ------------------------------------------------------------------ factored, mixing, as_operator


def test_factored_equals_phi_phi_t():
    rng = np.random.default_rng(1)
    phi = rng.standard_normal((120, 17))
    op = FactoredOperator(phi)
    np.testing.assert_allclose(op.to_dense(), phi @ phi.T, rtol=1e-13)
    np.testing.assert_allclose(op.diagonal(), np.sum(phi**2, axis=1), rtol=1e-13)
    v = make_v("complex", 120)
    assert rel_err(op.matvec(v), np.einsum("ab,b...->a...", phi @ phi.T, v)) < 1e-12
    lazy = FactoredOperator(da.from_array(phi, chunks=50)).matvec(v)
    assert isinstance(lazy, da.Array) and rel_err(lazy.compute(), op.matvec(v)) < 1e-12
    assert op.rank == 17


def test_random_fourier_features_converge_to_gaussian():
    rng = np.random.default_rng(2)
    d, s, R = 3, 1.3, 40000
    x = rng.standard_normal((40, d))
    W = rng.standard_normal((d, R)) / s
    b = rng.uniform(0, 2 * np.pi, R)

    def phi(z):
        return np.sqrt(2.0 / R) * np.cos(z @ W + b)

    op = as_operator(phi, x, method="factored")
    assert isinstance(op, FactoredOperator)
    err = np.abs(op.to_dense() - gaussian(x, x, s)).max()
    assert err < 0.05  # Monte-Carlo error ~ 1/sqrt(R)


def test_mixing_dense_operator():
    rng = np.random.default_rng(4)
    M = rng.standard_normal((30, 20, 9, 9))
    v = make_v("complex", 20)
    op = DenseOperator(M)
    assert op.components == 9 and op.shape == (30, 20)
    ref = np.einsum("abik,bk->ai", M, v.reshape(20, 9)).reshape(30, 3, 3)
    assert rel_err(op.matvec(v), ref) < 1e-12
    u = make_v("real", 30)
    assert rel_err(op.T.matvec(u), np.einsum("abik,ai->bk", M, u)) < 1e-12
    with pytest.raises(ValueError, match="components"):
        op.matvec(np.ones((20, 4)))
    sq = DenseOperator(rng.standard_normal((5, 5, 2, 2)))
    np.testing.assert_array_equal(sq.diagonal()[3], sq.matrix[3, 3])


def test_as_operator(points, tmp_path):
    x_out, x_in = points
    K = gaussian(x_out, x_in)
    assert isinstance(as_operator(gaussian, x_out, x_in), DenseOperator)
    assert isinstance(as_operator(gaussian, x_out, x_in, dense_max_bytes=0), BlockwiseOperator)
    assert isinstance(as_operator(gaussian, da.from_array(x_out), x_in), BlockwiseOperator)
    dense_lazy = as_operator(gaussian, da.from_array(x_out), x_in, method="dense")
    assert rel_err(dense_lazy.to_dense().compute(), K) < 1e-14
    zop = as_operator(gaussian, x_out, x_in, method="zarr", path=tmp_path / "a.zarr", block=BLOCK, dtype="float64")
    assert isinstance(zop, ZarrOperator)
    assert isinstance(as_operator(str(tmp_path / "a.zarr")), ZarrOperator)
    assert as_operator(zop, x_out, x_in) is zop
    assert isinstance(as_operator(K), DenseOperator)
    sq = as_operator(gaussian, x_out, method="blockwise", block=BLOCK)
    assert sq.shape == (N_OUT, N_OUT)


# ------------------------------------------------------------------ bad input


def test_bad_input_names_the_argument(points, tmp_path):
    x_out, x_in = points
    with pytest.raises(ValueError, match="x_in"):
        BlockwiseOperator(gaussian, x_out, x_in[:, :3])
    with pytest.raises(ValueError, match="x_out"):
        BlockwiseOperator(gaussian, x_out[:, 0], x_in)
    with pytest.raises(ValueError, match="block"):
        BlockwiseOperator(gaussian, x_out, x_in, block=0)
    with pytest.raises(ValueError, match="kernel"):
        BlockwiseOperator(None, x_out, x_in)
    op = BlockwiseOperator(gaussian, x_out, x_in, block=BLOCK)
    with pytest.raises(ValueError, match=r"v has 203 rows.*n_in = 157"):
        op.matvec(np.ones((N_OUT, 9)))
    with pytest.raises(ValueError, match="v has"):
        DenseOperator(np.ones((4, 5))).matvec(np.ones(4))
    with pytest.raises(ValueError, match="matrix"):
        DenseOperator(np.ones((4, 5, 6)))
    with pytest.raises(ValueError, match="phi_in"):
        FactoredOperator(np.ones((4, 3)), np.ones((5, 2)))
    with pytest.raises(ValueError, match="phi_out"):
        FactoredOperator(np.ones(4))
    with pytest.raises(ValueError, match="kernel returned a block"):
        BlockwiseOperator(lambda a, b: a @ a.T, x_out, x_in, block=BLOCK).matvec(np.ones(N_IN))
    with pytest.raises(ValueError, match="dtype"):
        ZarrOperator.build(gaussian, x_out, x_in, tmp_path / "z.zarr", dtype="int32")
    with pytest.raises(ValueError, match="path"):
        ZarrOperator.build(gaussian, x_out, x_in)
    with pytest.raises(ValueError, match="x_in"):
        ZarrOperator.build(gaussian, x_out, x_in[:, :2], tmp_path / "z.zarr")
    with pytest.raises(ValueError, match="method"):
        as_operator(gaussian, x_out, method="magic")
    with pytest.raises(ValueError, match="x_out"):
        as_operator(gaussian)
    with pytest.raises(ValueError, match="shape"):
        as_operator(DenseOperator(np.ones((3, 3))), x_out, x_in)
    with pytest.raises(ValueError, match="symmetric"):
        BlockwiseOperator(gaussian, x_out, x_in, symmetric=True)
    with pytest.raises(ValueError, match="workers"):
        BlockwiseOperator(gaussian, x_out, x_in, workers=0)
    with pytest.raises(ValueError, match="cache_bytes"):
        BlockwiseOperator(gaussian, x_out, x_in, cache_bytes=-1)


# ------------------------------------------------------------------ CuPy


@pytest.mark.gpu
def test_cupy_matches_numpy(points, zarr_stores):
    cp = pytest.importorskip("cupy")
    try:
        cp.cuda.runtime.getDeviceCount()
    except Exception:  # pragma: no cover - machine dependent
        pytest.skip("no GPU")
    x_out, x_in = points
    v = make_v("complex", N_IN)
    ref = np.einsum("ab,b...->a...", gaussian(x_out, x_in), v)
    xo, xi, vg = cp.asarray(x_out), cp.asarray(x_in), cp.asarray(v)
    for op in (
        BlockwiseOperator(gaussian, xo, xi, block=BLOCK),
        DenseOperator(gaussian(xo, xi)),
        FactoredOperator(gaussian(xo, xi), cp.eye(N_IN)),
        ZarrOperator.open(zarr_stores["rect", "float64"]),
    ):
        out = op.matvec(vg)
        assert isinstance(out, cp.ndarray)
        assert rel_err(out.get(), ref) < 1e-12


# ------------------------------------------------------------------ symmetric tiles, threads, cache


def test_symmetric_blockwise_computes_each_upper_tile_once(points):
    x = points[0]
    nb = -(-N_OUT // BLOCK)
    K = gaussian(x, x)
    for kind in ("real", "complex"):
        rec = Recorder(limit=BLOCK)
        op = BlockwiseOperator(rec, x, x, block=BLOCK)  # x_out is x_in: symmetric
        assert op.symmetric and op.T is op
        v = make_v(kind, N_OUT)
        out = op.matvec(v)
        assert rec.calls == nb * (nb + 1) // 2
        assert rel_err(out, np.einsum("ab,b...->a...", K, v)) < 1e-14
    full = BlockwiseOperator(gaussian, x, x, block=BLOCK).to_dense()
    assert np.array_equal(full, full.T) and rel_err(full, K) < 1e-14


def test_symmetric_false_for_a_kernel_that_is_not(points):
    x = points[0]
    w = np.arange(1, D + 1.0)

    def skew(a, b):  # k(a, b) = exp(a.w) * gaussian(a, b): not symmetric
        return np.exp(a @ w / 10)[:, None] * gaussian(a, b)

    K = skew(x, x)
    v = make_v("real", N_OUT)
    for method in ("blockwise", "dense"):  # x_out is x_in would mirror the upper triangle
        with pytest.raises(ValueError, match="not symmetric.*symmetric=False"):
            as_operator(skew, x, x, method=method, block=BLOCK).matvec(v)
    op = BlockwiseOperator(skew, x, x, block=BLOCK, symmetric=False)
    assert rel_err(op.matvec(v), K @ v) < 1e-14
    assert rel_err(op.T.matvec(v), K.T @ v) < 1e-14
    assert rel_err(op.to_dense(), K) < 1e-14


def test_threads_agree_with_one_thread(points):
    x_out, x_in = points
    v = make_v("complex", N_IN)
    one = BlockwiseOperator(gaussian, x_out, x_in, block=BLOCK, workers=1).matvec(v)
    for workers in (2, 3, 7):
        many = BlockwiseOperator(gaussian, x_out, x_in, block=BLOCK, workers=workers).matvec(v)
        assert np.array_equal(many, one)  # one order of every sum (test_operator_determinism.py)


def test_tile_cache_reuses_tiles_within_its_budget(points):
    x_out, x_in = points
    nrow, ncol = -(-N_OUT // BLOCK), -(-N_IN // BLOCK)
    v = make_v("real", N_IN)
    ref = gaussian(x_out, x_in) @ v
    rec = Recorder()
    op = BlockwiseOperator(rec, x_out, x_in, block=BLOCK, cache_bytes=1 << 30)
    a = op.matvec(v)
    assert rec.calls == nrow * ncol
    b = op.matvec(v)
    assert rec.calls == nrow * ncol  # everything came from the cache
    assert np.array_equal(b, a) and rel_err(a, ref) < 1e-14  # cached tiles: the same bits
    two_tiles = 2 * BLOCK * BLOCK * 8
    rec = Recorder()
    op = BlockwiseOperator(rec, x_out, x_in, block=BLOCK, cache_bytes=two_tiles, workers=1)
    op.matvec(v)
    op.matvec(v)
    assert rec.calls == 2 * nrow * ncol - 2  # two full tiles fit, the rest are recomputed
    assert op._cache.used <= two_tiles


def test_dense_symmetric_flag_and_tiled_build(points):
    x = points[0]
    K = gaussian(x, x)
    v = make_v("complex", N_OUT)
    op = as_operator(gaussian, x, x, method="dense", block=BLOCK)
    assert isinstance(op, DenseOperator) and op.symmetric and op.T is op
    assert rel_err(op.to_dense(), K) < 1e-14
    assert rel_err(op.matvec(v), np.einsum("ab,b...->a...", K, v)) < 1e-14
    assert not as_operator(gaussian, x, points[1], method="dense").symmetric
    with pytest.raises(ValueError, match="symmetric"):
        DenseOperator(np.ones((3, 4)), symmetric=True)


def test_set_dependent_kernels_are_never_tiled(points):
    from mfarray.kernels import delta

    rng = np.random.default_rng(0)
    z_train = rng.standard_normal((150, 3)) + 1j * rng.standard_normal((150, 3))
    z_test = rng.standard_normal((40, 3)) + 1j * rng.standard_normal((40, 3))
    K = as_operator(delta, z_test, z_train, method="dense", block=16).to_dense()
    assert np.array_equal(K, delta(z_test, z_train))  # tiles would pick a neighbour per tile
    with pytest.raises(ValueError, match="pairwise"):
        BlockwiseOperator(delta, z_test, z_train)
    with pytest.raises(ValueError, match="pairwise"):
        as_operator(delta, z_test, z_train, method="zarr", path="unused.zarr")


def test_symmetric_dask_graph_computes_each_upper_tile_once(points):
    x = points[0]
    nb = -(-N_OUT // BLOCK)
    rec = Recorder(limit=BLOCK)
    xd = da.from_array(x, chunks=90)
    op = BlockwiseOperator(rec, xd, xd, block=BLOCK)
    v = make_v("complex", N_OUT)
    out = op.matvec(v)
    assert op.symmetric and isinstance(out, da.Array) and rec.calls == 0  # lazy
    out = out.compute()
    assert rec.calls == nb * (nb + 1) // 2
    assert rel_err(out, np.einsum("ab,b...->a...", gaussian(x, x), v)) < 1e-14
    w = np.arange(1, D + 1.0)
    skew = lambda a, b: np.exp(a @ w / 10)[:, None] * gaussian(a, b)  # noqa: E731
    with pytest.raises(ValueError, match="not symmetric"):
        BlockwiseOperator(skew, xd, xd, block=BLOCK).matvec(v).compute()


def test_empty_blockwise_operator_gives_zeros():
    x = np.ones((4, D))
    assert BlockwiseOperator(gaussian, x[:0], x).matvec(np.ones((4, 9))).shape == (0, 9)
    out = BlockwiseOperator(gaussian, x, x[:0]).matvec(np.ones((0, 3, 3)))
    assert out.shape == (4, 3, 3) and not out.any()


def test_as_operator_passes_options_to_the_right_operator(points, tmp_path):
    x = points[0]
    z = as_operator(gaussian, x, method="zarr", path=tmp_path / "s.zarr", block=BLOCK, workers=1, symmetric=True)
    assert isinstance(z, ZarrOperator) and z.complete and z.attrs["symmetric"] is True  # reached the build
    b = as_operator(gaussian, x, method="blockwise", block=BLOCK, workers=1, cache_bytes=10, symmetric=False)
    assert (b.workers, b.cache_bytes, b.symmetric) == (1, 10, False)
    with pytest.raises(ValueError, match="dtype"):
        as_operator(gaussian, x, method="blockwise", dtype="float32")


# ------------------------------------------------------------------ symmetric=True is checked, options refused


def _skew_kernels():
    w = np.arange(1, D + 1.0)

    def skew(a, b):  # k(a, b) = exp(a.w) * gaussian(a, b): not symmetric
        return np.exp(a @ w / 10)[:, None] * gaussian(a, b)

    from mfarray.kernels import Kernel

    return skew, Kernel(skew, inputs="features", symmetric=False, name="skew")


def test_symmetric_true_for_a_kernel_that_is_not_is_refused_by_every_tiled_build(points, tmp_path):
    """symmetric=True with a kernel that is not symmetric (declared symmetric=False, or not declared at
    all) mirrors a wrong half: the blockwise operator and the Zarr build refuse it alike, before a
    block is stored, and the message names what said symmetric=True (the argument or the spec)."""
    x = points[0]
    v = make_v("real", N_OUT)
    plain, declared = _skew_kernels()
    K = plain(x, x)
    for kernel in (plain, declared):
        with pytest.raises(ValueError, match="not symmetric.*symmetric=True was passed.*symmetric=False") as err:
            as_operator(kernel, x, method="blockwise", block=BLOCK, symmetric=True).matvec(v)
        assert ("spec says symmetric=True" in str(err.value)) is (kernel is plain)
        path = tmp_path / f"{kernel is declared}.zarr"
        with pytest.raises(ValueError, match="not symmetric.*symmetric=True was passed.*symmetric=False"):
            as_operator(kernel, x, method="zarr", path=path, block=BLOCK, symmetric=True)
        assert not path.exists()  # refused before anything was written
    with pytest.raises(ValueError, match="not symmetric.*spec says symmetric=True.*symmetric=False"):
        as_operator(plain, x, method="blockwise", block=BLOCK).matvec(v)  # from the (neutral) spec
    with pytest.raises(ValueError, match="spec says symmetric=False"):
        as_operator(declared, x, method="blockwise", block=BLOCK, symmetric=True).matvec(v)
    # a full store of the right matrix is not resumed (mirrored) as a symmetric one
    path = tmp_path / "full.zarr"
    assert rel_err(as_operator(declared, x, method="zarr", path=path, block=BLOCK).to_dense(), K) < 1e-14
    with pytest.raises(ValueError, match="not symmetric.*symmetric=True was passed"):
        as_operator(declared, x, method="zarr", path=path, block=BLOCK, symmetric=True, workers=2)
    assert rel_err(ZarrOperator.open(path).to_dense(), K) < 1e-14
    # an interrupted full build is not finished as a symmetric one either
    path = tmp_path / "part.zarr"
    budget = [3]

    def interrupted(a, b):  # plain's values; KeyboardInterrupt after `budget` calls
        if budget[0] is not None:
            budget[0] -= 1
            if budget[0] < 0:
                raise KeyboardInterrupt("simulated interruption")
        return plain(a, b)

    from mfarray.kernels import Kernel
    kernel = Kernel(interrupted, inputs="features", symmetric=False, name="interrupted")
    with pytest.raises(KeyboardInterrupt):
        ZarrOperator.build(kernel, x, None, path, block=BLOCK)
    budget[0] = None
    with pytest.raises(ValueError, match="not symmetric"):
        ZarrOperator.build(kernel, x, None, path, block=BLOCK, symmetric=True)
    assert rel_err(ZarrOperator.build(kernel, x, None, path, block=BLOCK).to_dense(), K) < 1e-14
    # a symmetric kernel still builds half its blocks, and gives the same matrix
    sym = as_operator(gaussian, x, method="zarr", path=tmp_path / "sym.zarr", block=BLOCK, symmetric=True)
    assert rel_err(sym.to_dense(), gaussian(x, x)) < 1e-14
    f32 = tmp_path / "f32.zarr"  # and a float32 store of it resumes as symmetric (its rounding is not asymmetry)
    as_operator(gaussian, x, method="zarr", path=f32, block=BLOCK, dtype="float32")
    sym32 = as_operator(gaussian, x, method="zarr", path=f32, block=BLOCK, dtype="float32", symmetric=True)
    assert rel_err(sym32.to_dense(), gaussian(x, x)) < 1e-7


def test_options_a_method_does_not_take_are_refused_by_name(points, tmp_path):
    """as_operator never ignores an option: path only for method='zarr', each method its own
    options, symmetric a bool."""
    x = points[0]
    path = tmp_path / "never.zarr"
    for method in ("auto", "dense", "blockwise", "lowrank", "factored"):
        with pytest.raises(ValueError, match="path.*method='zarr'"):
            as_operator(gaussian, x, method=method, path=path)
    assert not path.exists()
    for method, options, name in (("zarr", {"cache_bytes": 1 << 20, "path": path}, "cache_bytes"),
                                  ("lowrank", {"workers": 2}, "workers"),
                                  ("blockwise", {"overwrite": True}, "overwrite"),
                                  ("dense", {"dtype": "float32"}, "dtype"),
                                  ("factored", {"block": 8}, "block")):
        with pytest.raises(ValueError, match=f"method='{method}'.*{name}"):
            as_operator(gaussian, x, method=method, **options)
    for method, extra in (("blockwise", {}), ("dense", {}), ("auto", {}), ("zarr", {"path": path})):
        for bad in ("yes", 1, 0.0, "False"):
            with pytest.raises(ValueError, match="symmetric must be True, False"):
                as_operator(gaussian, x, method=method, symmetric=bad, block=BLOCK, **extra)
    assert not path.exists()
    with pytest.raises(ValueError, match="symmetric must be True, False"):
        BlockwiseOperator(gaussian, x, x, symmetric="yes")
    with pytest.raises(ValueError, match="symmetric must be True, False"):
        ZarrOperator.build(gaussian, x, None, path, symmetric="yes")
    b = as_operator(gaussian, x, method="blockwise", symmetric=np.bool_(True))
    assert b.symmetric is True
    # an operator or a matrix passes through: build options would be ignored, so they are refused
    for obj in (DenseOperator(gaussian(x, x)), gaussian(x, x)):
        with pytest.raises(ValueError, match="block"):
            as_operator(obj, block=8)
        with pytest.raises(ValueError, match="workers"):
            as_operator(obj, workers=2)
