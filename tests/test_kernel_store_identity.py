"""A Zarr kernel store is never silently reused for another kernel, and two writers cannot
interleave (issue 9, "Mixed-up data").

Two kernels whose descriptions agree (lambdas or closures of one name that differ in a value they
capture) are told apart by a fingerprint of their values on a fixed probe, and a store being
built is held by an exclusive lock file (``<path>.lock``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest

import mfarray as mf
from mfarray.kernels.operators import ZarrOperator, stored

BLOCK = 64


def points(n, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 3)) + 1j * rng.standard_normal((n, 3))
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def lam(sigma, name="g"):
    """A lambda kernel whose only difference from another is a literal hyper-parameter."""
    if sigma == 0.3:
        return mf.kernels.Kernel(lambda a, b: mf.kernels.gaussian_fs(a, b, sigma=0.3), inputs="points", name=name)
    return mf.kernels.Kernel(lambda a, b: mf.kernels.gaussian_fs(a, b, sigma=1.0), inputs="points", name=name)


def closure(sigma, name="g", calls_left=None):
    """A closure kernel: the hyper-parameter is a captured value, not a bound keyword.  With
    ``calls_left`` (an int) it raises KeyboardInterrupt after that many calls (an interruption)."""
    left = [calls_left]

    def g(a, b):
        if left[0] is not None:
            if left[0] == 0:
                raise KeyboardInterrupt("simulated interruption")
            left[0] -= 1
        return mf.kernels.gaussian_fs(a, b, sigma=sigma)

    return mf.kernels.Kernel(g, inputs="points", name=name)


def dense(kernel, z):
    return np.asarray(kernel(z, z), dtype=np.float64)


@pytest.mark.parametrize("make", [lam, closure], ids=["lambda", "closure"])
def test_complete_store_is_not_reused_for_another_kernel_of_the_same_description(make, tmp_path):
    z = points(150)
    path = tmp_path / "k.zarr"
    k1, k2 = make(0.3), make(1.0)
    assert k1.describe() == k2.describe()  # the spec alone cannot tell them apart
    ZarrOperator.build(k1, z, None, path, block=BLOCK, dtype="float64")
    with pytest.raises(ValueError, match=r"k\.zarr.*another kernel.*overwrite=True"):
        ZarrOperator.build(k2, z, None, path, block=BLOCK, dtype="float64")
    np.testing.assert_allclose(ZarrOperator.open(path).to_dense(), dense(k1, z), rtol=1e-13, atol=1e-15)
    op = ZarrOperator.build(k2, z, None, path, block=BLOCK, dtype="float64", overwrite=True)
    np.testing.assert_allclose(op.to_dense(), dense(k2, z), rtol=1e-13, atol=1e-15)
    ZarrOperator.build(make(1.0), z, None, path, block=BLOCK, dtype="float64")  # the same kernel resumes


def test_interrupted_store_is_not_resumed_with_another_kernel(tmp_path):
    z = points(200)
    path = tmp_path / "i.zarr"
    with pytest.raises(KeyboardInterrupt):
        ZarrOperator.build(closure(0.3, calls_left=3), z, None, path, block=BLOCK, dtype="float64")
    assert ZarrOperator.open(path, require_complete=False).progress[0] == 3
    with pytest.raises(ValueError, match="another kernel"):
        ZarrOperator.build(closure(1.0), z, None, path, block=BLOCK, dtype="float64")
    assert ZarrOperator.open(path, require_complete=False).progress[0] == 3  # nothing was written
    op = ZarrOperator.build(closure(0.3), z, None, path, block=BLOCK, dtype="float64")  # same values: resumes
    np.testing.assert_allclose(op.to_dense(), dense(closure(0.3), z), rtol=1e-13, atol=1e-15)


def test_interrupted_before_the_first_block_resumes_only_with_the_same_values(tmp_path):
    """The probe block (0, 0) is not stored yet: it is computed first on resume and compared."""
    z = points(130)
    path = tmp_path / "f.zarr"
    ZarrOperator.build(closure(0.3), z, None, path, block=BLOCK, dtype="float64")
    import zarr

    arr = zarr.open_array(path, mode="r+")
    arr.update_attributes({"mfarray_done_blocks": [k for k in arr.attrs["mfarray_done_blocks"] if k != 0]})
    with pytest.raises(ValueError, match="another kernel"):
        ZarrOperator.build(closure(1.0), z, None, path, block=BLOCK, dtype="float64")
    assert ZarrOperator.open(path, require_complete=False).progress[0] == 8
    assert ZarrOperator.build(closure(0.3), z, None, path, block=BLOCK, dtype="float64").complete


def test_kernel_flow_zarr_store_is_not_reused_for_another_closure(tmp_path):
    ds = mf.select_chart(mf.sample_points(mf.cubic_curve(), 400, seed=3).compute())
    train = ds.isel(point=slice(0, 150))
    opts = {"path": str(tmp_path / "flow.zarr"), "block": 64, "dtype": "float64"}
    mf.kernel_flow(train, lam(0.3), steps=1, lr=1e-3, method="zarr", operator_options=opts)
    with pytest.raises(ValueError, match="another kernel"):
        mf.kernel_flow(train, lam(1.0), steps=1, lr=1e-3, method="zarr", operator_options=opts)


def test_store_records_a_value_fingerprint(tmp_path):
    z = points(100)
    a = ZarrOperator.build(closure(0.3), z, None, tmp_path / "a.zarr", block=BLOCK, dtype="float64").attrs
    b = ZarrOperator.build(closure(1.0), z, None, tmp_path / "b.zarr", block=BLOCK, dtype="float64").attrs
    c = ZarrOperator.build(lam(0.3), z, None, tmp_path / "c.zarr", block=BLOCK, dtype="float32").attrs
    json.dumps(a)
    assert a["kernel_values"]["sha256"] != b["kernel_values"]["sha256"]
    assert a["kernel_values"]["sha256"] == c["kernel_values"]["sha256"]  # values, not code or dtype
    assert (a["kernel_values"]["rows"], a["kernel_values"]["cols"]) == (8, 8)


# ------------------------------------------------------------------ exclusive building

_WRITER = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    import mfarray as mf
    from mfarray.kernels.operators import ZarrOperator

    path, sigma, go = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    rng = np.random.default_rng(0)
    z = rng.standard_normal((600, 3)) + 1j * rng.standard_normal((600, 3))
    z /= np.linalg.norm(z, axis=1, keepdims=True)

    def slow(a, b):
        time.sleep(0.004)  # 100 blocks: the build lasts well beyond the other's start
        return mf.kernels.gaussian_fs(a, b, sigma=sigma, method="entrywise")  # bit-identical across blocks

    k = mf.kernels.Kernel(slow, inputs="points", name="g")
    open(path + f".ready-{sigma}", "w").close()
    while not os.path.exists(go):  # both writers start at the same moment
        time.sleep(0.001)
    try:
        ZarrOperator.build(k, z, None, path, block=64, dtype="float64")
    except Exception as exc:
        print(f"FAILED {type(exc).__name__}: {exc}")
        sys.exit(3)
    np.save(path + f".dense-{sigma}.npy", np.asarray(mf.kernels.gaussian_fs(z, z, sigma=sigma, method="entrywise")))
    print("OK")
    """
)


def test_two_writers_cannot_interleave(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    path, go = str(tmp_path / "shared.zarr"), str(tmp_path / "go")
    procs = [
        subprocess.Popen([sys.executable, str(script), path, s, go], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
        for s in ("0.3", "1.0")
    ]  # fmt: skip
    deadline = time.time() + 30  # both import mfarray (the interpreter start dominates), then start together
    while not all(os.path.exists(f"{path}.ready-{s}") for s in ("0.3", "1.0")) and time.time() < deadline:
        time.sleep(0.01)
    open(go, "w").close()
    outs = [p.communicate(timeout=60)[0] for p in procs]
    rcs = [p.returncode for p in procs]
    assert sorted(rcs) == [0, 3], outs
    winner = ("0.3", "1.0")[rcs.index(0)]
    loser_out = outs[rcs.index(3)]
    assert "KernelStoreLockedError" in loser_out and "shared.zarr" in loser_out and "shared.zarr.lock" in loser_out, loser_out
    op = ZarrOperator.open(path)
    assert op.complete
    np.testing.assert_array_equal(op.to_dense(), np.load(path + f".dense-{winner}.npy"))  # one kernel only
    assert not os.path.exists(path + ".lock")  # released


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_live_lock_refuses_and_stale_lock_is_taken_over(tmp_path):
    z = points(100)
    path = tmp_path / "l.zarr"
    lock = tmp_path / "l.zarr.lock"
    lock.write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename}))
    with pytest.raises(getattr(stored, "KernelStoreLockedError", ()), match=r"l\.zarr.*l\.zarr\.lock"):
        ZarrOperator.build(closure(0.3), z, None, path, block=BLOCK)
    assert lock.exists() and not path.exists()  # the live lock and the path are untouched
    lock.write_text(json.dumps({"pid": _dead_pid(), "host": os.uname().nodename}))
    with pytest.warns(UserWarning, match="stale lock"):
        op = ZarrOperator.build(closure(0.3), z, None, path, block=BLOCK)
    assert op.complete and not lock.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ZarrOperator.build(closure(0.3), z, None, path, block=BLOCK)  # no lock left behind


def test_failed_build_releases_its_lock(tmp_path):
    z = points(100)
    path = tmp_path / "r.zarr"

    def boom(a, b):
        raise KeyboardInterrupt("simulated interruption")

    with pytest.raises(KeyboardInterrupt):
        ZarrOperator.build(mf.kernels.Kernel(boom, inputs="points", name="g"), z, None, path, block=BLOCK)
    assert not (tmp_path / "r.zarr.lock").exists()


def test_store_opened_by_path_is_checked_against_the_points(tmp_path):
    """as_operator(path, x_out, x_in) returns the stored matrix only for the points it was built on
    (shape and the recorded fingerprints x_out_sha256 / x_in_sha256); other points are refused
    with the way to build theirs."""
    import dask.array as da

    x, y = points(150, seed=1), points(150, seed=2)
    k = mf.kernels.gaussian_fs.bind(sigma=0.3)
    path = tmp_path / "K.zarr"
    K = mf.kernels.as_operator(k, x, method="zarr", path=path, block=BLOCK).to_dense()
    for args, name in (((y,), "x_out"), ((y[:10],), "x_out"), ((x, y), "x_in"), ((x, x[:10]), "x_in"),
                       ((x[::-1],), "x_out"), ((x.astype(np.complex64),), "x_out")):
        with pytest.raises(ValueError, match=f"{name}.*method='zarr'"):
            mf.kernels.as_operator(path, *args)
    for args in ((), (x,), (x, x), (x.copy(),), (x, x.copy()), (da.from_array(x, chunks=50),)):
        assert np.array_equal(mf.kernels.as_operator(path, *args).to_dense(), K)
    assert np.array_equal(mf.kernels.as_operator(path, x, method="zarr").to_dense(), K)
    with pytest.raises(ValueError, match="method"):
        mf.kernels.as_operator(path, x, method="blockwise")
    for options in ({"block": BLOCK}, {"workers": 2}, {"path": path}):
        with pytest.raises(ValueError, match=f"{next(iter(options))}.*method='zarr'"):
            mf.kernels.as_operator(path, x, **options)
    # a test x train store: rows are x_out, columns x_in
    rect = tmp_path / "Kt.zarr"
    Kt = mf.kernels.as_operator(k, y[:40], x, method="zarr", path=rect, block=BLOCK).to_dense()
    assert np.array_equal(mf.kernels.as_operator(rect, y[:40], x).to_dense(), Kt)
    with pytest.raises(ValueError, match="x_in"):
        mf.kernels.as_operator(rect, y[:40])
    with pytest.raises(ValueError, match="x_out"):
        mf.kernels.as_operator(rect, x, x)
