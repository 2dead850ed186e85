import numpy as np
import pytest

import mfarray as mf


@pytest.fixture(scope="session")
def quintic_points():
    """2000 in-memory Fermat-quintic points (seed 1)."""
    return mf.sample_points(mf.fermat_quintic(), 2000, seed=1, chunk_size=700).compute()


def random_polynomial(n, degree, seed, dense=True):
    """A random homogeneous polynomial in P^n with every monomial of the given degree."""
    from itertools import combinations_with_replacement

    rng = np.random.default_rng(seed)
    monos = []
    for combo in combinations_with_replacement(range(n + 1), degree):
        m = np.zeros(n + 1, dtype=int)
        for i in combo:
            m[i] += 1
        monos.append(m)
    monos = np.array(monos)
    coeffs = rng.standard_normal(len(monos)) + 1j * rng.standard_normal(len(monos))
    return mf.Hypersurface(monos, coeffs, name=f"random degree-{degree} in P^{n}")


@pytest.fixture(autouse=True)
def no_leaked_dask_client():
    """A test must close every dask.distributed Client it opens: a leaked one becomes the default
    scheduler of every later dask.compute (and hangs them once its cluster is gone); nor may it
    leave dask's scheduler setting changed."""
    import dask

    before = dask.config.get("scheduler", None)
    yield
    after = dask.config.get("scheduler", None)
    if after is not before and after != before:
        dask.config.set(scheduler=before)
        raise AssertionError(f"the test left dask's scheduler setting at {after!r} (was {before!r})")
    try:
        from distributed.client import _global_clients
    except ImportError:  # pragma: no cover - distributed is in the test extra
        return
    leaked = [c for c in list(_global_clients.values()) if c.status not in ("closed", "closing")]
    for c in leaked:
        c.close()
    assert not leaked, f"the test left {len(leaked)} dask.distributed Client(s) open: {leaked}"


@pytest.fixture
def killed_after():
    """``with killed_after(k):`` -- a kill (KeyboardInterrupt) at the (k+1)-th file removal inside
    the block: os.unlink itself is patched, which shutil and mfarray.io both call."""
    import contextlib
    import os

    @contextlib.contextmanager
    def kill(k):
        real, calls = os.unlink, []

        def unlink(path, *args, **kwargs):
            calls.append(path)
            if len(calls) > k:
                raise KeyboardInterrupt("killed")
            return real(path, *args, **kwargs)

        os.unlink = unlink
        try:
            yield
        finally:
            os.unlink = real

    return kill
