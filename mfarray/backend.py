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

Scheduler, one setting for every lazy (Dask) computation: :func:`use_scheduler` (an address,
``"local"``, a number of worker processes or ``"threads"``; by default the environment variable
:data:`SCHEDULER_ENV`, ``MFARRAY_SCHEDULER``); docs/distributed.md has the recipes.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
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


def is_real(value: Any, integer: bool = False) -> bool:
    """Whether ``value`` is a real number (an integer with ``integer=True``): a Python or NumPy
    scalar, never a bool -- the one test of 'a number' for argument checks."""
    import numbers

    import numpy

    kind = numbers.Integral if integer else numbers.Real
    return isinstance(value, kind) and not isinstance(value, (bool, numpy.bool_))


def per_row(a: Array) -> Array:
    """``a`` (N, ...) as (N, M), M the entries per leading index: ``reshape(a, (N, -1))`` but
    also for N = 0, where -1 cannot be inferred (an empty Dask chunk, an empty point set)."""
    m = 1
    for d in a.shape[1:]:
        m *= int(d)
    return namespace(a).reshape(a, (a.shape[0], m))


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


_BLAS = None  # the BLAS libraries' threadpoolctl controllers, scanned once (() without threadpoolctl)
_BLAS_LOCK = threading.Lock()
_BLAS_USERS = 0  # contexts of one_blas_thread entered and not yet left, all threads together
_BLAS_SAVED: list[tuple[Any, Any]] = []  # (library, its thread count before the first entrant)


def _blas_libraries() -> tuple:
    """threadpoolctl's controllers of the BLAS libraries loaded (scanned once, not per use);
    () without threadpoolctl."""
    global _BLAS
    if _BLAS is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - threadpoolctl is a dependency
            _BLAS = ()
        else:
            _BLAS = tuple(lib for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas")
    return _BLAS


def _set_blas_threads(lib: Any, n: Any) -> None:
    """``lib.set_num_threads(n)`` from whichever thread calls it (under ``_BLAS_LOCK``).

    threadpoolctl >= 3.8 lets only one "controlling" thread change the process-wide thread
    count of a pthreads OpenBLAS and silently ignores the others, so a count set by one
    thread and restored by another stayed at 1 for the rest of the process.  Control is
    taken for the call and given back (``clear_controlling_thread(force=True)``, also
    releasing another caller's control: its next change takes it back)."""
    release = getattr(type(lib), "clear_controlling_thread", None)  # threadpoolctl >= 3.8
    if release is not None:
        release(force=True)
    try:
        lib.set_num_threads(n)
    finally:
        if release is not None:
            release(force=True)


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Context holding BLAS to one thread, for the whole process, while any thread is inside it.

    For our own threads that already run one per core (tile threads, row-block threads, Dask's
    threaded scheduler): nested BLAS threads oversubscribe the cores (1.8-2.2x slower mat-vecs
    measured on 2 cores).  Also for reproducible bits: OpenBLAS's products change bits with
    its thread count (the deterministic tile mat-vecs depend on it).

    Reference-counted over all threads: the first entrant records each BLAS library's thread
    count and sets 1, the last to leave restores the recorded counts, whichever threads these
    are; nested and overlapping use (tile threads of several operators, per-cluster tasks on
    Dask's threaded scheduler, cluster batches) keeps one thread until the last user leaves.
    Thread-safe (one lock around the count and the settings).  Only mfarray's users are
    counted: code changing BLAS threads itself meanwhile (threadpoolctl in another thread) is
    not.  (dask.distributed workers start with one BLAS thread anyway.)  A no-op without
    threadpoolctl."""
    global _BLAS_USERS, _BLAS_SAVED
    libraries = _blas_libraries()
    with _BLAS_LOCK:
        if _BLAS_USERS == 0:
            saved = [(lib, n) for lib in libraries if (n := lib.get_num_threads()) is not None]
            try:
                for lib, _ in saved:
                    _set_blas_threads(lib, 1)
            except BaseException:
                for lib, n in saved:
                    _set_blas_threads(lib, n)
                raise
            _BLAS_SAVED = saved
        _BLAS_USERS += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS_USERS -= 1
            if _BLAS_USERS == 0:
                saved, _BLAS_SAVED = _BLAS_SAVED, []
                for lib, n in saved:
                    _set_blas_threads(lib, n)


def thread_map(fn: Callable[[Any], Any], items: Sequence[Any], threads: int | None = None) -> list:
    """``[fn(item) for item in items]`` on ``threads`` threads (default: :func:`cores`, at most one
    per item), holding BLAS to one thread (:func:`one_blas_thread`); the results in the order of
    ``items``, so a caller that combines them in that order gets the same bits for any thread
    count.  For work that releases the GIL on parts of arrays (NumPy ufuncs and GEMMs on blocks,
    numba ``nogil`` code)."""
    items = list(items)
    threads = min(cores() if threads is None else max(int(threads), 1), max(len(items), 1))
    with one_blas_thread():
        if threads == 1:
            return [fn(item) for item in items]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(fn, items))


# ----------------------------------------------------------------------------- scheduler

SCHEDULER_ENV = "MFARRAY_SCHEDULER"
"""The environment variable read by ``use_scheduler()`` (no address) and ``mfarray sample``
without ``--scheduler``.  Importing mfarray never reads it, so worker processes that inherit the
environment (LocalCluster, batch jobs) never connect anywhere by themselves."""

CONNECT_TIMEOUT = 10.0
"""Seconds :func:`use_scheduler` waits for a remote scheduler to answer (distributed's own
default is 30 s)."""

_HOST_PORT = re.compile(r"^[A-Za-z0-9_.\-]+:\d+$")
_FORMS = ("'tcp://host:8786' (or 'host:8786', any dask.distributed address), 'local' (a LocalCluster "
          "of one worker process per core), a number N of local worker processes, or 'threads' "
          "(Dask's threaded scheduler in this process)")
_ACTIVE: Scheduler | None = None


@dataclass
class Scheduler:
    """The scheduler :func:`use_scheduler` made the default: ``address`` ("threads" or the
    dask.distributed scheduler's address), its ``client`` (``distributed.Client``, None for
    threads) and the ``cluster`` it started itself (a ``LocalCluster``, else None).

    ``close()`` (or leaving a ``with`` block) disconnects, shuts down a cluster it started and
    restores the scheduler that was the default before; a remote scheduler and its workers are
    left running."""

    address: str
    client: Any = None
    cluster: Any = None
    _config: Any = field(default=None, repr=False)  # the dask.config setting of "threads"

    def close(self) -> None:
        global _ACTIVE
        if _ACTIVE is self:
            _ACTIVE = None
        client, cluster, config = self.client, self.cluster, self._config
        self.client = self.cluster = self._config = None
        if client is not None:
            client.close()  # also restores the config its set_as_default changed
        if cluster is not None:
            cluster.close()
        if config is not None:
            config.__exit__(None, None, None)

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _parse_address(address: str | int, setting: str) -> str | int:
    """"threads", "local", a worker count (int >= 1) or a distributed address; ValueError
    (TypeError) naming ``setting`` otherwise."""
    if isinstance(address, bool) or not isinstance(address, (str, int)):
        raise TypeError(f"{setting} must be a string or an int: {_FORMS}; got {address!r}")
    if isinstance(address, str):
        text = address.strip()
        if text.lower() in ("", "threads"):
            return "threads"
        if text.lower() == "local":
            return cores()
        if text.isdigit():
            address = int(text)
        elif "://" in text or _HOST_PORT.match(text):
            return text
        else:
            raise ValueError(f"{setting} = {address!r} is not a scheduler address; use {_FORMS}")
    if address < 1:
        raise ValueError(f"{setting} = {address!r}: a LocalCluster needs at least 1 worker process; use {_FORMS}")
    return address


def use_scheduler(address: str | int | None = None, *, timeout: float | None = None) -> Scheduler:
    """Make one Dask scheduler the default for every lazy mfarray computation (point-sampling
    chunks, Zarr writes, kernel tile graphs, per-cluster flows): the one setting of
    docs/distributed.md.

    ``address``:
      ``"tcp://host:8786"`` (or ``"host:8786"``, any dask.distributed address) -- connect a
                 ``distributed.Client`` to a running scheduler (``dask scheduler``,
                 ``SSHCluster``, dask-jobqueue's ``cluster.scheduler_address``);
      ``"local"`` -- start a ``LocalCluster`` of :func:`cores` worker processes, one thread each;
      ``N`` (an int, or its digits) -- a ``LocalCluster`` of N worker processes, one thread each;
      ``"threads"`` (or ``""``) -- Dask's threaded scheduler in this process (Dask's default);
      ``None`` -- the environment variable ``MFARRAY_SCHEDULER`` (any of the above; "threads"
                 when unset).
    ``timeout``: seconds to wait for a remote scheduler (default :data:`CONNECT_TIMEOUT`).

    Takes effect at once, for the whole process, until :meth:`Scheduler.close` (or the end of a
    ``with use_scheduler(...):`` block) or the next call, which closes this one first (one
    scheduler at a time).  Results do not depend on the scheduler (tested: the same bits on a
    LocalCluster as on threads).

    Raises ValueError for a malformed address (TypeError for one neither str nor int),
    ImportError where dask.distributed is not installed, ConnectionError where no scheduler
    answers within ``timeout``; each names the setting (``address`` or ``MFARRAY_SCHEDULER``)
    and the fix.  A failed call leaves Dask's default scheduler (the previous one is closed
    first).
    """
    if address is None:
        address, setting = os.environ.get(SCHEDULER_ENV, ""), SCHEDULER_ENV
    else:
        setting = "address"
    target = _parse_address(address, setting)
    timeout = CONNECT_TIMEOUT if timeout is None else float(timeout)
    if not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds; got {timeout!r}")
    if _ACTIVE is not None:
        _ACTIVE.close()
    if target == "threads":
        import dask

        return _activate(Scheduler("threads", _config=dask.config.set(scheduler="threads")))
    import dask

    try:
        import distributed
    except ImportError as exc:
        raise ImportError(f"{setting} = {address!r} needs dask.distributed, which is not installed: "
                          f"`pip install \"mfarray[distributed]\"`, or use 'threads'") from exc
    if isinstance(target, int):
        cluster = distributed.LocalCluster(n_workers=target, threads_per_worker=1, processes=True,
                                           dashboard_address=":0")  # a free port (not 8787 or a warning)
        try:
            client = distributed.Client(cluster, set_as_default=True)
        except BaseException:
            cluster.close()
            raise
        return _activate(Scheduler(cluster.scheduler_address, client, cluster))
    saved = copy.deepcopy(dask.config.config)  # a Client sets scheduler="dask.distributed" before connecting
    from distributed.client import _global_clients

    clients = set(_global_clients)
    try:
        client = distributed.Client(target, timeout=timeout, set_as_default=True)
    except BaseException as exc:
        dask.config.config.clear()
        dask.config.config.update(saved)
        from distributed.client import _global_clients

        for key in set(_global_clients) - clients:  # the failed Client registered itself: unregister
            _global_clients.pop(key).close()
        if isinstance(exc, ValueError):
            raise ValueError(f"{setting} = {address!r} is not a scheduler address ({exc}); use {_FORMS}") from exc
        if not isinstance(exc, OSError):
            raise
        raise ConnectionError(
            f"{setting} = {address!r}: no dask scheduler answered there within {timeout:g} s.  Start one "
            f"(`dask scheduler`, docs/distributed.md), correct the address, or use 'local' / 'threads'"
        ) from exc
    return _activate(Scheduler(client.scheduler.address, client))


def _activate(scheduler: Scheduler) -> Scheduler:
    global _ACTIVE
    _ACTIVE = scheduler
    return scheduler
