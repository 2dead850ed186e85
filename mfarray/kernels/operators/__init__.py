"""Kernel operators: the metric-NTK as a linear map, without materialising it.

The metric flow (Halverson & Ruehle eq. 2.12) applies the Kronecker metric-NTK (2.21)-(2.23),
``Theta_{ijkl}(x, x') = delta_ik delta_jl k(x, x')``, to metric-shaped arrays ``v (n_in,
*component_shape)``: one scalar ``(n_out, n_in)`` kernel matrix acting on every component
(:mod:`.protocol` spells this out).  For ``N = 10^5`` points (paper §3.1) even the scalar
kernel is 10^10 entries (80 GB in float64), so it is applied blockwise: recomputed on the fly
(:class:`BlockwiseOperator`), streamed from a Zarr store on disk (:class:`ZarrOperator`), or
through a low-rank factorisation (:class:`FactoredOperator`, random features or Jacobians).
:class:`DenseOperator` holds the matrix in memory, and also accepts a general
component-mixing metric-NTK as ``(n_out, n_in, c, c)`` blocks.  Every operator follows one
small protocol (:class:`KernelOperator`); :func:`as_operator` picks one.

One module per concept::

    protocol   the protocol; shared checks, flatten/unflatten, the block product, kernel spec
    dense      DenseOperator           (in memory, scalar or component-mixing)
    tiled      BlockwiseOperator       (recomputed tiles: threads, tile cache, symmetric tiles)
    graph      the Dask graphs of the lazy mat-vecs (one task per tile)
    stored     ZarrOperator            (on disk, resumable build)
    record     what a stored matrix records about itself (points, kernel identity)
    factored   FactoredOperator        (Phi_out Phi_in^T)
    screen     which pairs are close in FS distance (|<u, v>|^2 in one fused pass per tile)
    local      LocalGaussianOperator   (gaussian_fs: tile pairs provably below tol skipped, error bound)
               NearestOperator         (delta: the nearest-neighbour gather, exact)
    sparse     SparseGaussianOperator  (gaussian_fs: the entries >= tol by screening, CSR, error bound)
    lowrank    LowRankOperator         (pivoted Cholesky L L^T; test x train by Nystrom on the same
                                        pivots; residual-trace bound)

NumPy and CuPy inputs work alike (the namespace comes from the inputs); Dask inputs give
lazy Dask results whose tasks each hold about one ``block x block`` kernel block.
CuPy is never imported here.  Threads, BLAS threads and the default tile follow
:mod:`mfarray.backend` (``cores()``, ``one_blas_thread()``, ``TILE``).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

from ... import backend
from .dense import DenseOperator
from .factored import FactoredOperator
from .local import GAUSSIAN_OPTIONS, LocalGaussianOperator, NearestOperator, local_operator
from .sparse import SparseGaussianOperator
from .lowrank import LowRankOperator, LowRankWarning, lowrank_operator
from .protocol import (KernelOperator, check_flag, check_pair, check_points, check_positive, is_complex_dtype,
                       kernel_block, kernel_spec)
from .record import fingerprint
from .stored import ZarrOperator
from .tiled import BlockwiseOperator

__all__ = [
    "KernelOperator",
    "DenseOperator",
    "BlockwiseOperator",
    "ZarrOperator",
    "FactoredOperator",
    "LocalGaussianOperator",
    "NearestOperator",
    "SparseGaussianOperator",
    "LowRankOperator",
    "LowRankWarning",
    "METHOD_OPTIONS",
    "as_operator",
    "acts_componentwise",
]

Array = Any  # a NumPy, CuPy or Dask array


def acts_componentwise(op: KernelOperator) -> bool:
    """True when ``op`` applies one scalar kernel to every trailing component alike (eq.
    2.23), so it may be fed any real coordinates of the metrics (e.g. the 9 real coordinates
    of a Hermitian 3x3 instead of its 18 real and imaginary parts).  Component-mixing and
    unknown operators answer False.  (A blockwise kernel is assumed real; see
    ``flows.models.rows_matvec`` for the check.)"""
    if isinstance(op, DenseOperator):
        return op.components is None and not is_complex_dtype(op.matrix.dtype)
    if isinstance(op, FactoredOperator):
        return not (is_complex_dtype(op.phi_out.dtype) or is_complex_dtype(op.phi_in.dtype))
    return isinstance(op, (BlockwiseOperator, ZarrOperator, LocalGaussianOperator, SparseGaussianOperator,
                           NearestOperator))


_METHODS = ("auto", "dense", "blockwise", "zarr", "factored", "local", "lowrank")
_TILE_OPTIONS = ("block", "symmetric", "workers", "cache_bytes")

#: the options of each method that shape its operator's values or tiles (what a flow's
#: ``operator_options`` must carry for the operator to be rebuilt the same, e.g. by predict)
METHOD_OPTIONS = {"dense": (), "blockwise": _TILE_OPTIONS, "local": ("block",) + GAUSSIAN_OPTIONS,
                  "lowrank": ("rank", "tol", "shortfall")}

#: every option each method takes besides x_out, x_in (``block``, ``path`` and the method's
#: ``build_kwargs``); as_operator refuses any other instead of ignoring it
_ZARR_OPTIONS = tuple(p for p in inspect.signature(ZarrOperator.build).parameters
                      if p not in ("kernel", "x_out", "x_in", "path", "block"))
_ACCEPTED = {**METHOD_OPTIONS, "auto": _TILE_OPTIONS, "dense": _TILE_OPTIONS,  # a dense build may be tiled
             "zarr": ("path", "block") + _ZARR_OPTIONS, "factored": ()}


def _check_options(method: str, given: dict) -> None:
    """Refuse (ValueError naming them and what ``method`` takes) the options ``method`` does not
    take, and a ``symmetric`` that is not a bool."""
    unknown = sorted(k for k in given if k not in _ACCEPTED[method])
    if unknown:
        where = "; path is only for method='zarr' (the kernel store)" if "path" in unknown else ""
        takes = ", ".join(_ACCEPTED[method]) or "no options"
        raise ValueError(f"method={method!r} takes {takes}; got {unknown}{where}")
    if "symmetric" in given:
        none = "follow the kernel's spec" if method in ("auto", "dense", "blockwise", "local") else None
        check_flag(given["symmetric"], "symmetric", none)


def _open_store(path, x_out, x_in, method: str, options: dict) -> ZarrOperator:
    """The kernel store at ``path``; with ``x_out`` (and ``x_in``, default ``x_out``) only if it
    was built on exactly those points: its shape and the recorded fingerprints ``x_out_sha256``,
    ``x_in_sha256`` (:meth:`ZarrOperator.build`) must match, else ValueError naming the argument
    and the way to build the store for them."""
    if method not in ("auto", "zarr"):
        raise ValueError(f"a path opens a stored kernel matrix (method='zarr'); method={method!r} needs a kernel: "
                         f"as_operator(kernel, x_out, x_in, method={method!r})")
    given = sorted(options)
    if given:
        raise ValueError(f"a path opens a stored kernel matrix as it was built, taking none of the options {given}: "
                         f"to build or resume a store, as_operator(kernel, x_out, x_in, method='zarr', path=...)")
    op = ZarrOperator.open(path)
    if x_out is None:
        if x_in is not None:
            raise ValueError("x_in was given without x_out: pass both (or neither) to check the stored matrix")
        return op
    build = ("to build the matrix on these points, as_operator(kernel, x_out, x_in, method='zarr', path=...) "
             "with another path (or overwrite=True)")
    meta = op.attrs
    x_in_ = x_out if x_in is None else x_in
    for name, x in (("x_out", x_out), ("x_in", x_in_)):
        check_points(x, name)
    for name, x, n, key in (("x_out", x_out, op.shape[0], "x_out_sha256"),
                            ("x_in", x_in_, op.shape[1], "x_in_sha256")):
        default = " (x_in defaults to x_out)" if x_in is None else ""
        if int(x.shape[0]) != n:
            raise ValueError(f"the kernel store at {path!s} is {op.shape[0]} x {op.shape[1]} (x_out x x_in), but "
                             f"{name} has {int(x.shape[0])} points{default}; {build}")
        recorded = meta.get(key)
        if recorded is None:
            raise ValueError(f"the kernel store at {path!s} records no fingerprint of its points, so it cannot be "
                             f"checked against {name}: open it without points, as_operator(path), or rebuild it "
                             f"(as_operator(kernel, x_out, x_in, method='zarr', path=..., overwrite=True))")
        if fingerprint(x.compute() if backend.is_dask(x) else x) != recorded:
            raise ValueError(f"{name} differs from the points the kernel store at {path!s} was built on (its "
                             f"recorded {key}){default if name == 'x_in' else ''}: the stored matrix is not the "
                             f"kernel on them; {build}")
    return op


FACTORED_HELP = (
    "method='factored' takes a feature map phi(x) -> (n, rank), K = phi(x_out) phi(x_in)^T (random "
    "features, network Jacobians), not a kernel k(x1, x2): no kernel spec (gaussian_fs, delta, relu_ntk, "
    "cosine_ntk, gaussnet_*, ...) comes with a factorisation.  Use method='dense', 'blockwise' or 'zarr' "
    "for a kernel, or build FactoredOperator(phi(x_out), phi(x_in)) yourself"
)


def _feature_map(obj):
    """``obj`` itself when it may be a feature map phi(x); a kernel -- a spec (partials too) or a
    callable needing two inputs -- is refused (TypeError) with :data:`FACTORED_HELP`."""
    spec = kernel_spec(obj)
    if not spec.opaque:
        raise TypeError(f"{FACTORED_HELP}; got the kernel {spec.name}")
    try:
        sig = inspect.signature(obj)
        sig.bind(None)
    except ValueError:  # no signature (a builtin): let the call decide
        return obj
    except TypeError:
        raise TypeError(f"{FACTORED_HELP}; got {spec.name}, which does not take one input x") from None
    return obj


def as_operator(
    kernel_or_operator: KernelOperator | Array | str | os.PathLike | Callable[..., Array],
    x_out: Array | None = None,
    x_in: Array | None = None,
    *,
    method: str = "auto",
    block: int | None = None,
    path: str | os.PathLike | None = None,
    dense_max_bytes: int = 2**28,
    **build_kwargs,
) -> KernelOperator:
    """The operator a flow applies: pass through an operator, wrap a matrix, open a Zarr
    path, or turn a kernel ``k(x1, x2)`` on ``x_out`` (and ``x_in``, default ``x_out``)
    into one.

    A path opens a store written by :meth:`ZarrOperator.build` as it is; given ``x_out`` (and
    ``x_in``) it must have been built on exactly those points (its shape and its recorded point
    fingerprints), else ValueError: build theirs with ``method="zarr"``.  Every option belongs to a
    method (``path`` to "zarr" alone); one the method does not take is refused with ValueError
    naming it, never ignored, and so are build options with an operator, a matrix or a path.

    ``method``:
      ``"dense"``     ``DenseOperator(k(x_out, x_in))`` (lazy Dask for Dask points);
      ``"blockwise"`` :class:`BlockwiseOperator` (``block`` default ``backend.TILE`` = 1024;
                      ``symmetric``, ``workers``, ``cache_bytes`` pass through, also to the
                      tiled "dense" build);
      ``"zarr"``      :meth:`ZarrOperator.build` at ``path`` (``block`` default 1024, measured
                      4x faster to read than 4096 here; ``build_kwargs`` such as ``dtype``
                      (default float64; float32 moves a flow's sigma by ~1e-8, see there),
                      ``workers`` go there);
      ``"factored"``  ``kernel_or_operator`` is a feature map ``phi(x) -> (n, rank)``:
                      :class:`FactoredOperator` ``(phi(x_out), phi(x_in))``; a kernel
                      ``k(x1, x2)`` (any spec) is refused with TypeError;
      ``"local"``     local kernels only (:func:`.local.local_operator`): gaussian_fs ->
                      :class:`SparseGaussianOperator` (the entries >= ``tol``, default 1e-12,
                      found by screening, in a CSR matrix) where it pays (``sparse="auto"``,
                      ``sparse_max_bytes``), else :class:`LocalGaussianOperator` (tile pairs
                      whose entries are all provably < ``tol`` skipped; ``block`` default 256,
                      ``cache_bytes``); ``symmetric``, ``workers``; a stated error bound,
                      ``op.describe()``; delta -> :class:`NearestOperator` (exact, O(N)
                      mat-vecs); any other kernel: ValueError;
      ``"lowrank"``   a pivoted Cholesky K ~ L L^T of kernel(x_in, x_in) (``rank`` default 1000,
                      ``tol`` default 1e-6 of the trace, ``shortfall`` "warn" | "raise" |
                      "ignore" when the rank runs out first); x_out other than x_in by Nystrom
                      on the same pivots (one factorisation shared); ``op.describe()`` states
                      the rank and the bound.  Measured: only cosine-net kernels are low rank on
                      quintic points (relu_ntk, gaussian_fs are not; benchmarks/RESULTS.md);
      ``"auto"``      dense when the float64 matrix fits in ``dense_max_bytes`` and no
                      input is Dask, blockwise otherwise.
    """
    if not isinstance(method, str) or method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}; got {method!r}")
    if block is not None:
        block = check_positive(block, "block")
    obj = kernel_or_operator
    options = {**{k: v for k, v in (("block", block), ("path", path)) if v is not None}, **build_kwargs}
    if isinstance(obj, (str, os.PathLike)):
        return _open_store(obj, x_out, x_in, method, options)
    passing = hasattr(obj, "matvec") and hasattr(obj, "shape")
    if passing or (hasattr(obj, "shape") and hasattr(obj, "dtype") and not callable(obj)):
        given = sorted(options)
        if given:
            raise ValueError(f"an operator or a matrix is used as it is: the build options {given} would be "
                             f"ignored; pass a kernel to build an operator with them")
    else:
        _check_options(method, options)
    if passing:
        if x_out is not None:
            x_in_ = x_out if x_in is None else x_in
            want = (int(x_out.shape[0]), int(x_in_.shape[0]))
            if tuple(obj.shape) != want:
                raise ValueError(f"operator has shape {tuple(obj.shape)} but x_out, x_in give {want}")
        return obj
    if hasattr(obj, "shape") and hasattr(obj, "dtype") and not callable(obj):
        return DenseOperator(obj)
    if not callable(obj):
        raise ValueError(
            f"kernel_or_operator must be an operator, a matrix, a Zarr path or a kernel callable; "
            f"got {type(obj).__name__}"
        )
    if x_out is None:
        raise ValueError("x_out is required to build an operator from a kernel")
    x_in = x_out if x_in is None else x_in
    if method == "factored":
        phi = _feature_map(obj)
        phi_out = phi(x_out)
        phi_in = phi(x_in) if x_in is not x_out else None
        for name, x, p in (("x_out", x_out, phi_out), ("x_in", x_in, phi_in)):
            if p is not None and (len(getattr(p, "shape", ())) != 2 or p.shape[0] != x.shape[0]):
                raise ValueError(f"method='factored': the feature map returned {getattr(p, 'shape', type(p).__name__)} "
                                 f"for {x.shape[0]} points of {name}; it must return (n, rank)")
        return FactoredOperator(phi_out, phi_in)
    check_pair(x_out, x_in)
    if method == "local":
        return local_operator(obj, x_out, x_in, block=block, **build_kwargs)
    if method == "lowrank":
        return lowrank_operator(obj, x_out, x_in, **build_kwargs)
    lazy = backend.is_dask(x_out) or backend.is_dask(x_in)
    if method == "auto":
        method = "dense" if (not lazy and 8 * x_out.shape[0] * x_in.shape[0] <= dense_max_bytes) else "blockwise"
    if method == "dense" and not kernel_spec(obj).pairwise:
        if build_kwargs:
            raise ValueError(f"kernel {kernel_spec(obj).name} is not pairwise: method='dense' computes its whole "
                             f"matrix in one call and takes none of the tile options {sorted(build_kwargs)}")
        return DenseOperator(kernel_block(obj, x_out, x_in, f"on the whole {(x_out.shape[0], x_in.shape[0])} matrix"))
    block = backend.TILE if block is None else block
    if method == "zarr":
        if path is None:
            raise ValueError("method='zarr' needs a path for the kernel store: as_operator(..., path=...), or "
                             "kernel_flow(..., operator_options={'path': ...})")
        return ZarrOperator.build(obj, x_out, x_in, path, block=block, **build_kwargs)
    blockwise_kwargs = {k: build_kwargs.pop(k) for k in _TILE_OPTIONS if k in build_kwargs}
    if build_kwargs:
        raise ValueError(f"method={method!r} takes block, symmetric, workers, cache_bytes; got {sorted(build_kwargs)}")
    tiled = BlockwiseOperator(obj, x_out, x_in, block, **blockwise_kwargs)
    if method == "blockwise":
        return tiled
    # dense: built tile by tile (threads; the upper triangle only when x_out is x_in and the
    # kernel is symmetric): bounded temporaries and half the kernel evaluations of one
    # kernel(x_out, x_in) call
    return DenseOperator(tiled.to_dense(), symmetric=bool(tiled.symmetric) and not lazy)
