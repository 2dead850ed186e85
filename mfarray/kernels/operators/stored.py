"""A kernel matrix stored on disk (Zarr v3), built resumably and applied out of core.

``K (n_out, n_in)``, ``K[a, b] = k(x_out[a], x_in[b])`` -- the scalar kernel of the Kronecker
metric-NTK, eq. (2.23) -- is written once in ``block x block`` chunks (:meth:`ZarrOperator.build`,
resumable: each chunk is recorded as done only after it is written) and then applied to
``v (n_in, *trailing)`` (the flow's mat-vec, eq. 2.12) one chunk at a time.  The array's
attributes record what was built: shapes, block, dtype, fingerprints of the points and the
kernel's identity (:mod:`.record`), so that a rerun with other inputs is refused instead of
mixing two matrices.  The identity includes the kernel's values on a fixed probe (issue 9), so
that two closures of one name with other captured hyper-parameters are told apart, and a build
holds an exclusive lock file ``<path>.lock`` (pid, host, kernel fingerprint), so that two writers
can never interleave their blocks in one store.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import array_api_compat
import numpy as np

from ... import backend
from .graph import matrix_matvec
from .protocol import (
    apply_block,
    bounds,
    check_flag,
    check_pair,
    check_positive,
    check_square,
    check_symmetric_tile,
    check_tileable,
    concat_rows,
    flatten,
    is_complex_dtype,
    kernel_block,
    tile_text,
    unflatten,
)
from .record import (
    ATTR_DONE,
    ATTR_META,
    check_probe,
    check_rerun,
    code_token,
    fingerprint,
    kernel_record,
    probe_record,
    probe_shape,
)

from .lock import KernelStoreLockedError, exclusive as _exclusive  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    import dask.array as da
    from zarr.storage import StoreLike

Array = Any  # a NumPy, CuPy or Dask array


def _open_existing(path):
    """The kernel store at ``path`` (opened ``r+``), or None when nothing is there (a missing
    path or an empty directory).  Anything else -- a file, a foreign directory, a Zarr group
    (e.g. a point set), an array without the kernel record -- raises ValueError naming the
    path, so that neither a resume nor ``overwrite=True`` touches what :meth:`ZarrOperator.build`
    did not write."""
    import zarr

    local = isinstance(path, (str, os.PathLike))
    if local:
        p = Path(path)
        if not os.path.lexists(p) or (p.is_dir() and not any(p.iterdir())):
            return None
        if not p.is_dir():
            raise ValueError(f"path {path!s} is a file, not a kernel store; choose another path")
    try:
        arr = zarr.open_array(store=path, mode="r+")
    except FileNotFoundError:
        if not local:
            return None
        raise ValueError(f"path {path!s} is a directory that is not a Zarr store; refusing to use it for a "
                         f"kernel matrix: choose another path") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:  # a group (a point set), bad metadata
        raise ValueError(f"path {path!s} is not an mfarray kernel store ({type(exc).__name__}: {exc}); "
                         f"refusing to open or overwrite it: choose another path") from None
    meta = dict(arr.attrs).get(ATTR_META)
    if not isinstance(meta, dict) or meta.get("kind") != "kernel_matrix":
        raise ValueError(f"path {path!s} holds a Zarr array that is not an mfarray kernel store (no "
                         f"{ATTR_META} record); refusing to open or overwrite it: choose another path")
    return arr


def _run_tasks(tasks, compute, record, workers):
    """``record(compute(*t))`` for every task, on ``workers`` threads; on the first error the
    tasks not started are cancelled, those finished still recorded, and the error raised."""
    if workers == 1:
        for t in tasks:
            record(compute(*t))
        return
    with ThreadPoolExecutor(workers) as pool:
        pending = {pool.submit(compute, *t) for t in tasks}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
            error = None
            for f in finished:
                if f.exception() is None:
                    record(f.result())
                else:
                    error = error or f.exception()
            if error is not None:
                for f in pending:
                    f.cancel()
                for f in wait(pending)[0]:
                    if not f.cancelled() and f.exception() is None:
                        record(f.result())
                raise error


def _build_locked(kernel, xo, xi, path, meta, symmetric, overwrite, compressors, workers, callback, progress):
    """The body of :meth:`ZarrOperator.build`, run while holding the store's lock: open or
    create the array, check that a resumed store holds this kernel (description, then values on
    the probe), write the missing blocks.  Returns the zarr array."""
    import zarr

    n_out, n_in, block, dtype = meta["n_out"], meta["n_in"], meta["block"], np.dtype(meta["dtype"])
    rb, cb = bounds(n_out, block), bounds(n_in, block)
    ncol = len(cb)
    n_total = len(rb) * ncol
    pr, pc = probe_shape(n_out, n_in, block)

    def compute(i, j):
        (i0, i1), (j0, j1) = rb[i], cb[j]
        K = kernel_block(kernel, xo[i0:i1], xi[j0:j1], tile_text(rb[i], cb[j], (n_out, n_in)))
        if is_complex_dtype(K.dtype):
            raise ValueError("kernel returned complex values; ZarrOperator stores real kernels")
        if symmetric and i == j:  # every diagonal block (three passes over a block each): as BlockwiseOperator
            check_symmetric_tile(K, kernel=kernel, passed=True)
        return np.asarray(backend.to_numpy(K))

    arr = _open_existing(path)  # refuses anything but a kernel store, even with overwrite
    if arr is not None and not overwrite:
        check_rerun(arr, meta, path)
    K00 = None  # block (0, 0), which holds the value probe, when computed here
    if arr is None or overwrite:
        K00 = compute(0, 0)  # the first block of any build: the probe costs no extra call
        meta["kernel_values"] = probe_record(np.asarray(K00[:pr, :pc], dtype=np.float64))
        arr = zarr.create_array(
            store=path,
            shape=(n_out, n_in),
            chunks=(block, block),
            dtype=dtype.name,
            compressors=compressors,
            fill_value=float("nan"),
            attributes={ATTR_META: meta, ATTR_DONE: []},
            overwrite=True,
        )
        done = set()
    else:
        old = dict(arr.attrs)[ATTR_META]
        done = {int(k) for k in dict(arr.attrs).get(ATTR_DONE, [])}
        probe = old.get("kernel_values")
        if isinstance(probe, dict):  # (stores of version <= 2 have none: not checked)
            if (probe.get("rows"), probe.get("cols")) != (pr, pc):
                raise ValueError(f"path {path!s} holds a kernel store with a malformed value probe; "
                                 f"pass overwrite=True to replace it, or choose another path")
            if 0 not in done:  # block (0, 0) is computed now anyway: check it before any write
                K00 = compute(0, 0)
                check_probe(probe, np.asarray(K00[:pr, :pc], dtype=np.float64), path)
            elif old.get("kernel_code_sha256") != meta["kernel_code_sha256"]:
                # other code (or unstable): one probe evaluation decides
                P = kernel_block(kernel, xo[:pr], xi[:pc], tile_text((0, pr), (0, pc), (n_out, n_in)))
                if is_complex_dtype(P.dtype):
                    raise ValueError("kernel returned complex values; ZarrOperator stores real kernels")
                check_probe(probe, np.asarray(backend.to_numpy(P), dtype=np.float64), path)
            if old.get("kernel_code_sha256") != meta["kernel_code_sha256"]:
                arr.update_attributes({ATTR_META: {**old, "kernel_code_sha256": meta["kernel_code_sha256"]}})

    if symmetric and K00 is None:
        # symmetric=True mirrors every block above the diagonal: check a diagonal block before
        # any is written -- block (0, 0) as stored (a resumed build; float32 rounding may break
        # the exact symmetry of a symmetric kernel by an ulp), else computed now (and checked)
        if 0 in done:
            (i0, i1), (j0, j1) = rb[0], cb[0]
            rtol = 1e-10 if np.dtype(arr.dtype) == np.float64 else 4 * float(np.finfo(np.float32).eps)
            check_symmetric_tile(np.asarray(arr[i0:i1, j0:j1], dtype=np.float64), rtol, kernel, passed=True)
        else:
            K00 = compute(0, 0)

    tasks = [
        (i, j)
        for i in range(len(rb))
        for j in range(ncol)
        if (not symmetric or i <= j) and (i * ncol + j not in done or (symmetric and j * ncol + i not in done))
    ]

    def write(i, j, K):
        (i0, i1), (j0, j1) = rb[i], cb[j]
        K = np.asarray(K, dtype=dtype)
        arr[i0:i1, j0:j1] = K
        written = [i * ncol + j]
        if symmetric and i != j:
            arr[j0:j1, i0:i1] = K.T
            written.append(j * ncol + i)
        return written

    def compute_write(i, j):
        return write(i, j, compute(i, j))

    t0 = time.perf_counter()

    def record(written):
        done.update(written)
        arr.update_attributes({ATTR_DONE: sorted(done)})
        if callback is not None:
            for k in written:
                callback(k // ncol, k % ncol, len(done), n_total)
        if progress:
            el = time.perf_counter() - t0
            print(f"\r[ZarrOperator.build] {len(done)}/{n_total} blocks, {el:.1f} s", end="", file=sys.stderr)

    if K00 is not None and tasks and tasks[0] == (0, 0):
        record(write(0, 0, K00))
        tasks = tasks[1:]
    _run_tasks(tasks, compute_write, record, workers)
    if progress:
        print(file=sys.stderr)
    return arr


@dataclass(frozen=True, eq=False)
class ZarrOperator:
    """A kernel matrix stored on disk as a Zarr v3 array with ``block x block`` chunks,
    applied out of core: :meth:`matvec` streams one chunk at a time (reading the next
    while multiplying the current), or builds a lazy Dask graph for Dask ``v``.

    Create with :meth:`build` (resumable), reopen with :meth:`open`."""

    array: Any  # zarr.Array
    transposed: bool = False

    # --- construction -----------------------------------------------------------------

    @classmethod
    def build(
        cls,
        kernel: Callable,
        x_out: Array,
        x_in: Array | None = None,
        path: StoreLike | os.PathLike | None = None,
        *,
        block: int = backend.TILE,
        dtype: str = "float64",
        compressors: Any = None,
        symmetric: bool = False,
        overwrite: bool = False,
        workers: int = 1,
        progress: bool = False,
        callback: Callable | None = None,
        name: str | None = None,
        params: dict | None = None,
    ) -> ZarrOperator:
        """Write ``kernel(x_out, x_in)`` block by block into a Zarr v3 array at ``path``.

        The array is created first (``zarr.create_array``, chunks ``(block, block)``,
        ``fill_value=NaN`` so an unwritten block can never pass for data).  Each block is
        written and *then* recorded as done in the array attributes (the local store
        writes atomically), so an interrupted build never marks a half-written block and
        a rerun with the same inputs writes only the missing blocks.  A rerun whose
        inputs (shapes, block, dtype, kernel, point fingerprints) differ raises
        ValueError unless ``overwrite=True``.  ``path`` must be missing, an empty directory or
        a kernel store written here: anything else (a file, a point set, a foreign store)
        raises ValueError naming the path, with or without ``overwrite``.

        ``dtype`` is ``"float64"`` by default, so that a stored kernel gives the flow of every
        other operator to rounding (1e-13).  ``"float32"`` halves the disk space and the reading
        time but rounds every entry to 6e-8 relative, and its blocks multiply v in float32
        (:func:`~.protocol.apply_block`; products summed in float64): measured on 300 one-chart
        Fermat-quintic points over 20 flow steps (gaussian_fs, sigma 0.1 squared and 0.3; relu_ntk
        of Table 1), sigma train and test moved by 1.1e-9 to 1.1e-8 and the metrics by up to 1.4e-7
        relative (float64: 2e-16; with float64 products, before session 8: 3e-9 and 1.3e-8).

        ``symmetric=True`` (x_in is x_out and k(x, y) = k(y, x)) computes only the blocks
        with ``i <= j`` and writes their transposes; as in :class:`~.tiled.BlockwiseOperator`, a
        diagonal block must equal its transpose (:func:`~.protocol.check_symmetric_tile`: block
        (0, 0) before any block is written -- as stored, on a resume -- and every diagonal block
        computed), else ValueError: a kernel that is not symmetric is never mirrored.  ``workers > 1`` computes blocks in a
        thread pool.  ``callback(i, j, n_done, n_total)`` is called after each block is
        recorded; ``progress=True`` prints progress to stderr.  The kernel is recorded as
        ``as_kernel(kernel).describe()`` plus ``"params"``; ``name``/``params`` override its
        name and parameters (default: the spec's name and bound hyper-parameters, e.g. the
        keywords of a ``functools.partial``).

        Besides the description, the store records the kernel's values on a fixed probe (the
        top-left ``<= 8 x 8`` entries, taken from block (0, 0) as it is built) and a call-free hash
        of its code; a resume whose code hash differs re-evaluates the probe, and values that
        differ (e.g. a closure of the same name with another captured hyper-parameter) raise
        ValueError (the store holds another kernel; ``overwrite=True`` replaces it).  A local
        ``path`` is built under an exclusive lock file ``<path>.lock`` (pid, host, kernel hash): a
        second writer raises :class:`KernelStoreLockedError` naming the path and the lock; a stale
        lock (its pid gone) is taken over with a warning.
        """

        if path is None:
            raise ValueError("path is required: where to write the Zarr store")
        if not callable(kernel):
            raise ValueError(f"kernel must be callable k(x1, x2) -> (n1, n2); got {type(kernel).__name__}")
        check_tileable(kernel)
        same = x_in is None or x_in is x_out
        x_in = x_out if x_in is None else x_in
        check_pair(x_out, x_in)
        block = check_positive(block)
        workers = check_positive(workers, "workers")
        dtype = np.dtype(dtype)
        if dtype not in (np.dtype("float32"), np.dtype("float64")):
            raise ValueError(f"dtype must be 'float32' or 'float64'; got {dtype}")
        symmetric = check_flag(symmetric, "symmetric")
        if symmetric and not same and x_out.shape != x_in.shape:
            raise ValueError("symmetric=True needs x_in = x_out (a square kernel matrix)")

        # Points are small (n x d): bring Dask ones into memory, keep CuPy on the device.
        xo = x_out.compute() if backend.is_dask(x_out) else x_out
        xi = xo if same else (x_in.compute() if backend.is_dask(x_in) else x_in)
        fp_out = fingerprint(xo)
        fp_in = fp_out if same else fingerprint(xi)
        if symmetric and fp_in != fp_out:
            raise ValueError("symmetric=True needs x_in = x_out (a square kernel matrix)")
        n_out, n_in = int(xo.shape[0]), int(xi.shape[0])
        meta = {
            "kind": "kernel_matrix",
            "version": 3,  # 2: the kernel recorded as its spec's describe() + params; 3: + its values
            "n_out": n_out,
            "n_in": n_in,
            "block": block,
            "dtype": dtype.name,
            "kernel": kernel_record(kernel, name, params),
            "x_out_sha256": fp_out,
            "x_in_sha256": fp_in,
            "symmetric": bool(symmetric),
        }

        token = code_token(kernel)
        meta["kernel_code_sha256"] = token
        with _exclusive(path, token):
            arr = _build_locked(kernel, xo, xi, path, meta, symmetric, overwrite, compressors, workers,
                                callback, progress)
        return cls(arr)

    @classmethod
    def open(cls, path: StoreLike | os.PathLike, *, mode: str = "r",
             require_complete: bool = True) -> ZarrOperator:
        """Reopen a store written by :meth:`build`; an incomplete one raises ValueError
        (``require_complete=False`` to open it anyway: missing blocks read as NaN)."""
        import zarr

        arr = zarr.open_array(store=path, mode=mode)
        op = cls(arr)
        if len(arr.shape) != 2:
            raise ValueError(f"path {path!s} holds an array of shape {arr.shape}, not a (n_out, n_in) kernel matrix")
        if require_complete and ATTR_META in dict(arr.attrs) and not op.complete:
            n_done, n_total = op.progress
            raise ValueError(
                f"kernel store at {path!s} is incomplete ({n_done}/{n_total} blocks written); "
                f"rerun ZarrOperator.build with the same arguments to finish it"
            )
        return op

    # --- metadata ---------------------------------------------------------------------

    @property
    def attrs(self) -> dict:
        return dict(self.array.attrs).get(ATTR_META, {})

    @property
    def block(self) -> tuple[int, int]:
        return tuple(int(c) for c in self.array.chunks)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    @property
    def progress(self) -> tuple[int, int]:
        n, m = self.array.shape
        b0, b1 = self.array.chunks
        return len(dict(self.array.attrs).get(ATTR_DONE, [])), (-(-n // b0)) * (-(-m // b1))

    @property
    def complete(self) -> bool:
        d, t = self.progress
        return d == t

    @property
    def shape(self) -> tuple[int, int]:
        n, m = (int(s) for s in self.array.shape)
        return (m, n) if self.transposed else (n, m)

    # --- linear algebra ---------------------------------------------------------------

    def to_dask(self) -> da.Array:
        """The matrix as a lazy Dask array (``dask.array.from_zarr``), chunks = blocks."""
        import dask.array as da

        K = da.from_zarr(self.array)
        return K.T if self.transposed else K

    def matvec(self, v: Array) -> Array:
        n_out, n_in = self.shape
        v2, trailing = flatten(v, n_in)
        if backend.is_dask(v2):
            return unflatten(matrix_matvec(self.to_dask(), v2), n_out, trailing)
        xp = array_api_compat.array_namespace(v2)
        on_device = backend.is_cupy(v2)
        b0, b1 = self.block
        if self.transposed:
            b0, b1 = b1, b0
        rb, cb = bounds(n_out, b0), bounds(n_in, b1)
        arr, tr = self.array, self.transposed

        def read(i, j):
            (i0, i1), (j0, j1) = rb[i], cb[j]
            return arr[j0:j1, i0:i1] if tr else arr[i0:i1, j0:j1]

        order = [(i, j) for i in range(len(rb)) for j in range(len(cb))]
        rows, acc = [], None
        with ThreadPoolExecutor(1) as pool:  # prefetch the next block while multiplying
            fut = pool.submit(read, *order[0])
            for k, (i, j) in enumerate(order):
                K = fut.result()
                if k + 1 < len(order):
                    fut = pool.submit(read, *order[k + 1])
                if tr:
                    K = K.T
                if on_device:
                    K = xp.asarray(K)
                (j0, j1) = cb[j]
                p = apply_block(K, v2[j0:j1])
                acc = p if acc is None else acc + p
                if j == len(cb) - 1:
                    rows.append(acc)
                    acc = None
        return unflatten(concat_rows(rows, v2), n_out, trailing)

    def diagonal(self) -> np.ndarray:
        check_square(self)
        b = min(self.block)
        return np.concatenate([np.diagonal(self.array[a:c, a:c]) for a, c in bounds(self.shape[0], b)])

    def to_dense(self) -> np.ndarray:
        K = self.array[...]
        return K.T if self.transposed else K

    @property
    def T(self) -> ZarrOperator:
        return ZarrOperator(self.array, not self.transposed)

    def transpose(self) -> ZarrOperator:
        return self.T
