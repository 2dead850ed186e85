"""The kernel-operator protocol and the helpers every operator shares.

The metric flow (Halverson & Ruehle eq. 2.8/2.12) is driven by ``Theta . dl/dg``.  With the
Kronecker structure (2.21)-(2.23), ``Theta_{ijkl}(x, x') = delta_ik delta_jl k(x, x')``, so
applying Theta to a metric-shaped array ``v`` of shape ``(n_in, *component_shape)`` (e.g.
``(n, 3, 3)`` complex Hermitian metrics or ``(n, 9)`` real) is the *scalar* kernel matrix
acting on every component at once::

    (Theta . v)[a, ...] = sum_b k(x_a, x'_b) v[b, ...]

i.e. one ``(n_out, n_in) @ (n_in, m)`` matrix product with the trailing components
flattened to ``m`` columns (:func:`flatten`, :func:`apply_block`, :func:`unflatten`) -- the
81 components of Theta are never formed.  Every operator follows one small protocol
(:class:`KernelOperator`)::

    op.shape        -> (n_out, n_in)
    op.matvec(v)    v: (n_in, *trailing) -> (n_out, *trailing); real or complex v
    op.diagonal()   (n,) where square
    op.to_dense()   the full matrix (small cases only)
    op.T            the transposed operator

The rest of this module is package-internal: input checks, the kernel's spec
(:func:`kernel_spec`), one kernel tile (:func:`kernel_block`) and the products on it.
NumPy, CuPy and Dask alike; CuPy is never imported here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import array_api_compat
import numpy as np

from ... import backend
from ..checks import NonFiniteKernelError, check_finite_values
from ..spec import Kernel, as_kernel

if TYPE_CHECKING:
    from numpy.typing import DTypeLike

__all__ = ["KernelOperator"]

Array = Any  # a NumPy, CuPy or Dask array


@runtime_checkable
class KernelOperator(Protocol):
    """The protocol shared by every kernel operator."""

    @property
    def shape(self) -> tuple[int, int]: ...

    def matvec(self, v: Array) -> Array: ...


# ----------------------------------------------------------------------------- the kernel


def kernel_spec(kernel: Callable[..., Array]) -> Kernel:
    """What the operators read of a kernel (``.pairwise``, ``.symmetric``, ``.describe()``):
    ``as_kernel(kernel)``.  Evaluation always calls ``kernel`` itself."""
    return as_kernel(kernel)


def check_tileable(kernel: Callable[..., Array]) -> None:
    """Only a pairwise kernel (k(x, x') depends on x and x' alone) may be computed in tiles."""
    if not kernel_spec(kernel).pairwise:
        raise ValueError(
            "this kernel is not pairwise (k(x, x') depends on the whole point sets, e.g. the Delta "
            "kernel's nearest neighbour), so it cannot be computed in tiles: use method='dense', or "
            "for large sets mfarray.kernels.nearest_index and a gather"
        )


def tile_text(rows: tuple[int, int], cols: tuple[int, int], shape: tuple[int, ...]) -> str:
    """Where a tile lies, for messages: rows and columns of the operator and its shape."""
    return (f"on the tile of rows {rows[0]}:{rows[1]} (x_out) and columns {cols[0]}:{cols[1]} (x_in) "
            f"of the {tuple(int(s) for s in shape)} operator")


def kernel_block(kernel: Callable[..., Array], a: Array, b: Array, where: str = "") -> Array:
    """The tile ``kernel(a, b)`` (n_a, n_b), its shape checked and its values finite.

    ``where`` (e.g. :func:`tile_text`) says which tile, in the :class:`NonFiniteKernelError`
    raised for NaN or inf values (a spec checks its own values; any other callable is checked
    here)."""
    try:
        K = kernel(a, b)
    except NonFiniteKernelError as exc:
        if not where:
            raise
        raise NonFiniteKernelError(f"{exc} ({where})") from None
    if not hasattr(K, "shape") or not hasattr(K, "dtype"):
        raise TypeError(f"kernel {kernel_spec(kernel).name} returned {type(K).__name__}; a kernel must "
                        "return an array (n1, n2)")
    if tuple(K.shape) != (a.shape[0], b.shape[0]):
        raise ValueError(
            f"kernel returned a block of shape {tuple(K.shape)} for inputs of {a.shape[0]} "
            f"and {b.shape[0]} points; a kernel must map (n1, d), (n2, d) -> (n1, n2)"
        )
    if not isinstance(kernel, Kernel):
        label = f"kernel {kernel_spec(kernel).name}" + (f" ({where})" if where else "")
        K = check_finite_values(K, label, (a, b))
    return K


def check_symmetric_tile(K: Array, rtol: float = 1e-10, kernel: Callable[..., Array] | None = None, *,
                         passed: bool = False) -> None:
    """A diagonal tile of a symmetric operator must equal its transpose (up to rounding):
    catches a kernel that is not symmetric before half of its matrix is mirrored.  (Its values
    are finite: :func:`kernel_block` refused any others.)  ``passed``: the caller was given
    ``symmetric=True`` (else it took symmetry from the kernel's spec); the message names which."""
    xp = array_api_compat.array_namespace(K)
    gap, top = float(xp.max(xp.abs(K - K.T))), float(xp.max(xp.abs(K)))
    if not gap <= rtol * top:
        spec = kernel_spec(kernel) if kernel is not None else None
        name = spec.name if spec is not None else "the kernel"
        found = (f"kernel {name} is not symmetric on these points (max |K - K^T| = {gap:.3g} on a diagonal "
                 f"tile, max |K| = {top:.3g})")
        if passed:
            if spec is not None and not spec.symmetric:
                fix = "Pass symmetric=False, or leave symmetric out: the kernel's spec says symmetric=False"
            else:
                fix = ("Pass symmetric=False (and declare it once: Kernel(fn, inputs=..., symmetric=False), "
                       "since its spec says symmetric=True)")
            raise ValueError(
                f"{found}, but symmetric=True was passed, which computes only half of the matrix and mirrors "
                f"it.  {fix} (operator_options={{'symmetric': False}} in kernel_flow)"
            )
        raise ValueError(
            f"{found}, but its spec says symmetric=True, so the operator on one point set computes only half "
            "of the matrix.  Declare it once: Kernel(fn, inputs=..., symmetric=False); or pass symmetric=False "
            "to the operator (operator_options={'symmetric': False} in kernel_flow)"
        )


# ----------------------------------------------------------------------------- checks


def check_points(x: Any, name: str) -> None:
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise ValueError(f"{name} must be an array of shape (n, d); got {type(x).__name__}")
    if len(x.shape) != 2:
        raise ValueError(f"{name} must have shape (n, d) (points x features); got shape {tuple(x.shape)}")
    if any(isinstance(s, float) and math.isnan(s) for s in x.shape):
        raise ValueError(f"{name} has unknown (NaN) chunk sizes; call compute_chunk_sizes() first")


def check_pair(x_out: Array, x_in: Array) -> None:
    check_points(x_out, "x_out")
    check_points(x_in, "x_in")
    if x_out.shape[1] != x_in.shape[1]:
        raise ValueError(
            f"x_in has {x_in.shape[1]} features per point but x_out has {x_out.shape[1]}: "
            f"x_out {tuple(x_out.shape)} and x_in {tuple(x_in.shape)} must share d"
        )


def check_positive(value: Any, name: str = "block") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


def check_flag(value: Any, name: str = "symmetric", none: str | None = None) -> bool | None:
    """``value`` as a bool (``np.bool_`` too); ``None`` passes when ``none`` says what it means;
    anything else -- ``"yes"``, ``1``, ``"False"`` -- raises ValueError naming the argument."""
    if value is None and none is not None:
        return None
    if not isinstance(value, (bool, np.bool_)):
        also = f" or None ({none})" if none is not None else ""
        raise ValueError(f"{name} must be True, False{also}; got {value!r}")
    return bool(value)


def check_square(op: KernelOperator) -> None:
    if op.shape[0] != op.shape[1]:
        raise ValueError(f"diagonal() needs a square operator; shape is {op.shape}")


# ----------------------------------------------------------------------------- products


def is_complex_dtype(dt: DTypeLike) -> bool:
    return np.dtype(dt).kind == "c"


def result_dtype(*dtypes: DTypeLike) -> np.dtype:
    """The promoted dtype, at least float64 for integer inputs."""
    dt = np.result_type(*[np.dtype(d) for d in dtypes])
    if dt.kind not in "fc":
        dt = np.result_type(dt, np.float64)
    return dt


def flatten(v: Any, n_in: int) -> tuple[Array, tuple[int, ...]]:
    """``v (n_in, *trailing) -> (v2 (n_in, m), trailing)``; ints promoted to float64."""
    if not hasattr(v, "shape") or not hasattr(v, "dtype"):
        v = np.asarray(v)
    if len(v.shape) < 1:
        raise ValueError(f"v must have shape (n_in, ...) with n_in = {n_in}; got a scalar")
    if v.shape[0] != n_in:
        raise ValueError(
            f"v has {v.shape[0]} rows (shape {tuple(v.shape)}) but the operator has "
            f"n_in = {n_in} columns: v must have shape (n_in, ...)"
        )
    if np.dtype(v.dtype).kind not in "fc":
        v = v.astype(np.float64)
    trailing = tuple(v.shape[1:])
    if backend.is_dask(v) and len(trailing) > 1:
        v = v.rechunk({i: -1 for i in range(1, len(v.shape))})
    m = math.prod(trailing)
    return v.reshape((n_in, m)), trailing


def unflatten(out: Array, n_out: int, trailing: tuple[int, ...]) -> Array:
    """``(n_out, m) -> (n_out, *trailing)``, the inverse of :func:`flatten`."""
    return out.reshape((n_out, *trailing))


def apply_block(K: Array, v2: Array, transpose: bool = False) -> Array:
    """``K @ v2`` (or ``K.T @ v2``), shape ``(n_out, m)``.

    Computed as ``(v2.T @ K.T).T``: for a skinny v2 (m ~ 9-18 columns) OpenBLAS streams a
    large K 1.3-1.5x faster in this orientation than ``K @ v2`` (benchmarks/RESULTS.md).  A
    real K meeting a complex v2 is not complexified: one real product on ``[Re v | Im v]``.

    The product runs in K's precision and is returned in the promotion of K's and v's: a
    float32 K (a float32 kernel or store) meets v rounded to float32 in one float32 GEMM (half
    the bytes and twice the vector width of float64), and the caller sums the returned
    float64 products over tiles.  Each product then has a relative error of about
    sqrt(block) eps32 (2e-6 for block 1024) on top of K's own rounding.
    """
    xp = array_api_compat.array_namespace(K, v2)
    complex_v = is_complex_dtype(v2.dtype) and not is_complex_dtype(K.dtype)
    m = v2.shape[1]
    if np.dtype(K.dtype) == np.float32:
        # float32: OpenBLAS's sgemm runs K @ w faster than w.T @ K.T (0.53 vs 0.72 ns an entry, 1024^2)
        w = xp.concat([xp.real(v2), xp.imag(v2)], axis=1) if complex_v else v2
        out = np.result_type(K.dtype, w.dtype)
        r = xp.matmul(K.T if transpose else K, w.astype(np.float32)).astype(out, copy=False)
        return r[:, :m] + 1j * r[:, m:] if complex_v else r
    Kt = K if transpose else K.T  # the product below is v2.T @ Kt
    if complex_v:
        wt = xp.concat([xp.real(v2).T, xp.imag(v2).T], axis=0)
        dt = np.result_type(K.dtype, wt.dtype)
        r = xp.matmul(wt.astype(dt, copy=False), Kt.astype(dt, copy=False))
        return (r[:m] + 1j * r[m:]).T
    dt = np.result_type(K.dtype, v2.dtype)
    return xp.matmul(v2.T.astype(dt, copy=False), Kt.astype(dt, copy=False)).T


def sum_parts(*parts: Array) -> Array:
    """The sum of same-shaped partial results (the first copied, the rest added in place)."""
    out = parts[0].copy()
    for p in parts[1:]:
        out += p
    return out


def concat_rows(pieces: Sequence[Array], like: Array) -> Array:
    xp = array_api_compat.array_namespace(like)
    return pieces[0] if len(pieces) == 1 else xp.concat(pieces, axis=0)


def diagonal(M: Array) -> Array:
    """Diagonal of a 2-D matrix (``(n,)``) or of the leading two axes of a 4-D block
    matrix (``(n, c, c)``), for NumPy, CuPy and Dask."""
    if backend.is_dask(M):
        import dask.array as da

        d = da.diagonal(M, axis1=0, axis2=1)
    else:
        d = M.diagonal(axis1=0, axis2=1)
    return d if len(M.shape) == 2 else d.transpose(2, 0, 1)


def unify_dask(*arrays: Array) -> tuple[Array, ...]:
    """Return the arrays as they are, or all as Dask arrays when any one is."""
    if not any(backend.is_dask(a) for a in arrays):
        return arrays
    import dask.array as da

    return tuple(a if backend.is_dask(a) else da.asarray(a) for a in arrays)


def bounds(n: int, block: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` of the blocks of ``range(n)``."""
    return [(s, min(s + block, n)) for s in range(0, n, block)]
