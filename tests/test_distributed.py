"""The scheduler as one setting (issue 10, "GPU and cluster"): ``mfarray.backend.use_scheduler``,
``MFARRAY_SCHEDULER`` and ``mfarray sample --scheduler`` put the lazy stages on a dask.distributed
cluster (a LocalCluster of 2 worker processes here) without changing a bit of their results.

Measured here (docs/distributed.md): a kernel tile graph (``graph.kernel_matvec`` and
``graph.symmetric_kernel_matvec``) gives the same bits on the cluster as on Dask's threaded
scheduler -- the graph fixes the summation order; the in-memory BlockwiseOperator on threads sums
the same tiles in a scheduling-dependent order (within ~1e-15 of the graph's result, relative
to its largest entry).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

import mfarray as mf
from mfarray import backend
from mfarray.cli import app
from mfarray.kernels import operators

distributed = pytest.importorskip("distributed")
runner = CliRunner()
BLOCK = 256  # 10 x 10 tiles of 2500 points: more column tiles than one tree-sum step (split_every = 8)


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of 2 worker processes, one thread each (its address is all a test uses)."""
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=":0") as lc:  # a free port: 8787 may be taken
        yield lc


@contextlib.contextmanager
def ran_on(cluster):
    """Asserts that the block did its work on ``cluster`` (its scheduler made task transitions)."""
    before = cluster.scheduler.transition_counter
    yield
    assert cluster.scheduler.transition_counter > before, "nothing ran on the cluster"


def _threads():
    return dask.config.set(scheduler="threads")


def _worker_pids(client):
    return set(client.run(os.getpid).values())


def _pids(n=4):
    """The process ids of the tasks of a small Dask array (computed where the scheduler says)."""
    return set(da.zeros(n, chunks=1).map_blocks(lambda b: np.full(1, os.getpid())).compute().tolist())


# --------------------------------------------------------------------------- the lazy tile graph


@pytest.fixture(scope="module")
def tile_graphs():
    """The lazy symmetric (x, x) and general (y, x) gaussian_fs mat-vecs on Dask points, and v."""
    X = mf.fermat_quintic()
    x = mf.sample_points(X, 2500, seed=3, chunk_size=1000).z.values
    y = mf.sample_points(X, 700, seed=5).z.values
    v = np.random.default_rng(0).standard_normal((2500, 3, 3))
    kernel = functools.partial(mf.kernels.gaussian_fs, sigma=0.3)
    xd, yd = da.from_array(x, chunks=BLOCK), da.from_array(y, chunks=BLOCK)
    ops = {"symmetric": operators.as_operator(kernel, xd, xd, block=BLOCK),
           "general": operators.as_operator(kernel, yd, xd, block=BLOCK)}
    assert ops["symmetric"].symmetric and not ops["general"].symmetric
    lazy = {name: op.matvec(v) for name, op in ops.items()}
    assert all(dask.is_dask_collection(out) for out in lazy.values())
    memory = {"symmetric": operators.as_operator(kernel, x, x, method="blockwise", block=BLOCK),
              "general": operators.as_operator(kernel, y, x, method="blockwise", block=BLOCK)}
    return lazy, memory, v


def test_kernel_tile_graph_on_a_local_cluster_equals_threads_bit_for_bit(cluster, tile_graphs):
    lazy, memory, v = tile_graphs
    with _threads():
        threaded = dask.compute(lazy)[0]
    with ran_on(cluster), backend.use_scheduler(cluster.scheduler_address) as sched:
        assert sched.address == cluster.scheduler_address
        remote = dask.compute(lazy)[0]
    for name in lazy:
        np.testing.assert_array_equal(remote[name], threaded[name], err_msg=name)
        # the in-memory operator (threads, one accumulator each): the same tiles summed in another order
        here = memory[name].matvec(v)
        scale = np.abs(threaded[name]).max()
        assert np.abs(here - threaded[name]).max() <= 1e-14 * scale, name


# --------------------------------------------------------------------------- the README pipeline


def _readme_pipeline():
    """sample_points -> select_chart -> kernel_flow -> evaluate, as in the README (small n)."""
    X = mf.fermat_quintic()
    one = mf.select_chart(mf.sample_points(X, 16_000, seed=21, chunk_size=4000))  # lazy; ~850 points
    train, test = one.isel(point=slice(0, 250)), one.isel(point=slice(250, 350))
    kernel = functools.partial(mf.kernels.gaussian_fs, sigma=0.05, squared=True)
    result = mf.kernel_flow(train, kernel, steps=20, test=test)
    return one.compute(), result, mf.evaluate(result)


def test_readme_pipeline_is_identical_with_use_scheduler(cluster):
    with _threads():
        ours = _readme_pipeline()
    with ran_on(cluster), backend.use_scheduler(cluster.scheduler_address):
        theirs = _readme_pipeline()
    for a, b in zip(ours, theirs):  # the points, the flow result, its evaluation: values and attributes
        xr.testing.assert_identical(a, b)
    assert ours[2].sigma_train_final < ours[2].sigma_train_initial


# --------------------------------------------------------------------------- the one setting


def test_environment_variable_and_close(cluster, monkeypatch):
    monkeypatch.setenv(backend.SCHEDULER_ENV, cluster.scheduler_address)
    before = dask.config.get("scheduler", None)
    with backend.use_scheduler() as sched:  # no address: MFARRAY_SCHEDULER
        assert sched.address == cluster.scheduler_address and sched.cluster is None
        assert _pids() <= _worker_pids(sched.client) and os.getpid() not in _pids()
    assert sched.client is None and dask.config.get("scheduler", None) == before
    assert cluster.status.name == "running"  # a remote scheduler is left running
    monkeypatch.setenv(backend.SCHEDULER_ENV, "threads")
    with backend.use_scheduler() as sched:
        assert sched.address == "threads" and sched.client is None
        assert _pids() == {os.getpid()}


def test_a_worker_count_starts_and_closes_a_local_cluster():
    before = dask.config.get("scheduler", None)
    sched = backend.use_scheduler("1")  # as MFARRAY_SCHEDULER=1 spells it
    try:
        assert isinstance(sched.cluster, distributed.LocalCluster)
        assert len(sched.client.scheduler_info()["workers"]) == 1
        assert _pids() == _worker_pids(sched.client)
        again = backend.use_scheduler("threads")  # one scheduler at a time: the next call closes this one
        assert sched.cluster is None and again.address == "threads"
        again.close()
    finally:
        sched.close()
    assert sched.client is None and dask.config.get("scheduler", None) == before


def _chunks(path):
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("c/*")) if p.is_file()}


def test_cli_scheduler_option_and_variable_write_the_same_store(cluster, tmp_path):
    before = dask.config.get("scheduler", None)
    args = ["sample", "--n", "3000", "--seed", "4", "--chunk-size", "1000"]
    ref = runner.invoke(app, [*args, "--out", str(tmp_path / "ref.zarr")], env={backend.SCHEDULER_ENV: ""})
    assert ref.exit_code == 0, ref.output
    assert not ref.output.startswith("scheduler")
    with ran_on(cluster):
        opt = runner.invoke(app, [*args, "--out", str(tmp_path / "opt.zarr"), "--scheduler", cluster.scheduler_address])
    assert opt.exit_code == 0, opt.output
    assert f"scheduler {cluster.scheduler_address} (2 workers)" in opt.output
    with ran_on(cluster):
        env = runner.invoke(app, [*args, "--out", str(tmp_path / "env.zarr")],
                            env={backend.SCHEDULER_ENV: cluster.scheduler_address})
    assert env.exit_code == 0, env.output
    assert f"scheduler {cluster.scheduler_address}" in env.output
    stores = [mf.open_zarr(tmp_path / f"{name}.zarr") for name in ("ref", "opt", "env")]
    for name in ("opt", "env"):
        assert _chunks(tmp_path / f"{name}.zarr") == _chunks(tmp_path / "ref.zarr"), name
    for ds in stores[1:]:  # the same attributes, the recorded command aside (--out differs)
        assert {k: v for k, v in ds.attrs.items() if k != "command"} == \
               {k: v for k, v in stores[0].attrs.items() if k != "command"}
        assert "--scheduler" not in ds.attrs["command"]
    assert dask.config.get("scheduler", None) == before  # the command leaves no scheduler behind


# --------------------------------------------------------------------------- clear errors


def _text(result):
    """A command's output with the error box's frame and line breaks taken out."""
    return " ".join(result.output.replace("│", " ").split())


def test_unreachable_or_malformed_addresses_name_the_setting(monkeypatch):
    before = dask.config.get("scheduler", None)
    with pytest.raises(ConnectionError, match=r"address = 'tcp://127\.0\.0\.1:1': no dask scheduler answered"):
        backend.use_scheduler("tcp://127.0.0.1:1", timeout=0.5)
    with pytest.raises(ValueError, match=r"address = 'nonsense' is not a scheduler address; use 'tcp://"):
        backend.use_scheduler("nonsense")
    with pytest.raises(ValueError, match="at least 1 worker"):
        backend.use_scheduler(0)
    with pytest.raises(TypeError, match="a string or an int"):
        backend.use_scheduler(True)
    with pytest.raises(ValueError, match="timeout"):
        backend.use_scheduler("threads", timeout=0)
    monkeypatch.setenv(backend.SCHEDULER_ENV, "nonsense")
    with pytest.raises(ValueError, match=r"MFARRAY_SCHEDULER = 'nonsense'"):
        backend.use_scheduler()
    # the command line: a usage error naming the option, or the variable when it came from there
    bad = runner.invoke(app, ["sample", "--n", "10", "--scheduler", "nonsense"])
    assert bad.exit_code == 2 and "Invalid value for --scheduler: address = 'nonsense' is not a scheduler address" in _text(bad)
    monkeypatch.setattr(backend, "CONNECT_TIMEOUT", 0.5)
    bad = runner.invoke(app, ["sample", "--n", "10"], env={backend.SCHEDULER_ENV: "tcp://127.0.0.1:1"})
    assert bad.exit_code == 2
    assert "Invalid value: MFARRAY_SCHEDULER = 'tcp://127.0.0.1:1': no dask scheduler answered" in _text(bad)
    assert dask.config.get("scheduler", None) == before


def test_without_distributed_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(ImportError, match=r"address = 'tcp://h:8786' needs dask\.distributed.*mfarray\[distributed\]"):
        backend.use_scheduler("tcp://h:8786")
    with backend.use_scheduler("threads") as sched:  # threads need nothing
        assert sched.address == "threads"


@pytest.mark.parametrize("address", ["tcp://", "tcp://127.0.0.1:1"])
def test_a_failed_connection_leaves_the_scheduler_setting_alone(address):
    import dask

    before = dask.config.get("scheduler", None)
    with pytest.raises((ValueError, ConnectionError), match="address"):
        mf.backend.use_scheduler(address, timeout=1)
    assert dask.config.get("scheduler", None) == before
