"""Array backend policy: which namespace, which dtype, whether an array is lazy, and how
the CPU cores are shared.

Every bare formula in mfarray takes its array namespace from its inputs
(``array_api_compat.array_namespace``), so the same code runs on NumPy and on CuPy.
CuPy is only ever imported lazily, inside :func:`cupy`.  Dask arrays are recognised
here so that the thin lifting wrappers can map bare formulas over chunks.

Parallelism, one policy for every threaded kernel computation (kernel operator tiles,
empirical and ReLU NTK row blocks): :func:`cores` threads by default, each holding BLAS to
one thread (:func:`one_blas_thread`), and kernel matrices cut into :data:`TILE` x
:data:`TILE` tiles.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any

import array_api_compat

if TYPE_CHECKING:
    from types import ModuleType

    import numpy as np

Array = Any  # a NumPy, CuPy or Dask array

REAL = "float64"
COMPLEX = "complex128"

TILE = 1024
"""Default tile (block) edge of a kernel matrix: tiled operators, Dask graphs and Zarr chunks.
Measured: 1024^2 tiles 15% faster than 2048^2 (cache-resident temporaries) and 4x faster to
read from a Zarr store than 4096^2 (benchmarks/RESULTS.md)."""


_NUMPY = None
_CREATION = ("empty", "empty_like", "zeros", "zeros_like", "ones", "ones_like", "full", "full_like")


def _fast_numpy():
    """array_api_compat's NumPy namespace with its array-creation wrappers, which only check
    ``device``, replaced by NumPy's own functions (the wrapper costs 5-10 us a call, a flow
    step allocates several; a ``device`` other than None or "cpu" is refused as before)."""
    import types

    import numpy as np

    compat = array_api_compat.array_namespace(np.empty(0))
    ns = types.ModuleType(compat.__name__, compat.__doc__)
    ns.__dict__.update({k: getattr(compat, k) for k in dir(compat) if not k.startswith("__")})

    def native(name):
        fn, wrapped = getattr(np, name), getattr(compat, name)

        def create(*args, device=None, **kw):
            return fn(*args, **kw) if device is None else wrapped(*args, device=device, **kw)

        create.__name__ = create.__qualname__ = name
        create.__doc__ = fn.__doc__
        return create

    for name in _CREATION:
        setattr(ns, name, native(name))
    return np.ndarray, ns


def namespace(*arrays: Array) -> ModuleType:
    """The array-API namespace shared by ``arrays`` (NumPy or CuPy).

    Plain NumPy arrays take a shortcut (array_api_compat's inspection costs ~14 us a call,
    measured to be a tenth of a flow step's bookkeeping at 1500 points), and get NumPy's own
    array-creation functions (:func:`_fast_numpy`)."""
    global _NUMPY
    if _NUMPY is not None:
        cls = _NUMPY[0]
        if (type(arrays[0]) is cls if len(arrays) == 1 else all(type(a) is cls for a in arrays)):
            return _NUMPY[1]
    xp = array_api_compat.array_namespace(*arrays)
    if arrays and array_api_compat.is_numpy_array(arrays[0]):
        if _NUMPY is None:
            _NUMPY = _fast_numpy()
        if array_api_compat.is_numpy_namespace(xp):
            return _NUMPY[1]
    return xp


def is_dask(x: Any) -> bool:
    """True for a ``dask.array.Array`` (without importing dask if it is not loaded)."""
    return type(x).__module__.startswith("dask.")


def is_cupy(x: Any) -> bool:
    return array_api_compat.is_cupy_array(x)


def cupy() -> ModuleType:
    """Import CuPy on demand; a clear error where it is not installed."""
    try:
        import cupy as cp
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise ImportError(
            "CuPy is not installed: install the GPU extra with `pip install mfarray[gpu]`"
        ) from exc
    return cp


def to_numpy(x: Array) -> np.ndarray:
    """A NumPy copy of a NumPy, CuPy or (computed) Dask array."""
    import numpy as np

    if is_dask(x):
        x = x.compute()
    if is_cupy(x):
        return x.get()
    return np.asarray(x)


# ----------------------------------------------------------------------------- parallelism


def cores() -> int:
    """The cores this process may run on: its CPU affinity where the OS has one, else all."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


_BLAS = None


def one_blas_thread() -> contextlib.AbstractContextManager[Any]:
    """Context holding BLAS to one thread where our own threads already run one per core
    (tile threads, row-block threads, Dask's threaded scheduler): nested BLAS threads
    oversubscribe the cores (1.8-2.2x slower mat-vecs measured on 2 cores).  Process-global,
    so overlapping users may briefly restore it: a speed matter only.  (dask.distributed
    workers start with one BLAS thread anyway.)  A no-op without threadpoolctl."""
    global _BLAS
    if _BLAS is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - threadpoolctl is a dependency
            _BLAS = False
        else:
            _BLAS = ThreadpoolController()  # scanning the loaded libraries once, not per use
    return _BLAS.limit(limits=1, user_api="blas") if _BLAS else contextlib.nullcontext()
