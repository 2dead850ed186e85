"""Every README snippet runs as a test (the house rule).

The fenced ```python blocks of README.md are executed exactly as written, in order, in one
shared namespace, in a temporary working directory (the README writes ``points.zarr``), on the
lazy (Dask) point sets ``sample_points`` returns -- once on Dask's threaded scheduler and once
on a ``dask.distributed`` LocalCluster of two worker processes.  Then a few facts the README's
comments claim are checked on what the snippets computed, and the flow results of the two runs
are compared: the flow itself runs in the client process, only the point sets are computed by
the scheduler, so the results must be identical.

Both runs are module-scoped fixtures, shared by the checks.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import dask
import numpy as np
import pytest
import xarray as xr

import mfarray as mf

README = Path(__file__).resolve().parents[1] / "README.md"

_OPEN = re.compile(r"^```python\s*$")
_CLOSE = re.compile(r"^```\s*$")


def python_blocks(text: str) -> list[tuple[int, str]]:
    """The fenced ```python blocks of a Markdown text, in order: (first code line, code)."""
    blocks, code, start = [], None, 0
    for lineno, line in enumerate(text.splitlines(), start=1):
        if code is None:
            if _OPEN.match(line):
                code, start = [], lineno + 1
        elif _CLOSE.match(line):
            blocks.append((start, "\n".join(code) + "\n"))
            code = None
        else:
            code.append(line)
    if code is not None:
        raise ValueError(f"README.md: the ```python block starting at line {start - 1} is never closed")
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def _is_flow(code: str) -> bool:
    return "kernel_flow" in code


def _run_readme(workdir: Path, scheduler=contextlib.nullcontext) -> list[dict]:
    """Execute every README block in order in one namespace inside ``workdir`` (with the
    context ``scheduler()`` entered there); a shallow copy of the namespace after each block
    (so values a later block reassigns are kept)."""
    ns: dict = {"__name__": "__readme__"}
    after = []
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        with scheduler():
            for start, code in BLOCKS:
                # the README's line numbers in tracebacks: pad the code to its first line
                exec(compile("\n" * (start - 1) + code, str(README), "exec"), ns)
                after.append({k: v for k, v in ns.items() if k != "__builtins__"})
    return after


def _flow_results(after: list[dict]) -> list:
    """The ``result`` of every block that runs a flow, in README order."""
    return [snap["result"] for (_, code), snap in zip(BLOCKS, after) if _is_flow(code)]


@pytest.fixture(scope="module")
def threaded(tmp_path_factory):
    """The README on Dask's threaded scheduler (explicitly, whatever a test left behind)."""
    return _run_readme(tmp_path_factory.mktemp("readme-threads"), lambda: dask.config.set(scheduler="threads"))


@pytest.fixture(scope="module")
def distributed_run(tmp_path_factory):
    """The README once more, every Dask computation on a LocalCluster of 2 worker processes."""
    distributed = pytest.importorskip("distributed")

    @contextlib.contextmanager
    def cluster():  # started in the working directory, so the workers' relative paths match ours
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      dashboard_address=None) as cluster, distributed.Client(cluster):
            yield

    return _run_readme(tmp_path_factory.mktemp("readme-distributed"), cluster)


def _index_of(pattern: str) -> int:
    """Index of the first README block whose code contains ``pattern``."""
    for i, (_, code) in enumerate(BLOCKS):
        if pattern in code:
            return i
    raise AssertionError(f"no README python block contains {pattern!r}")


def _chart(ds):
    pairs = np.unique(np.stack([ds.patch.values, ds.elim.values], 1), axis=0)
    assert len(pairs) == 1, f"points in {len(pairs)} charts: {pairs.tolist()}"
    return tuple(int(v) for v in pairs[0])


# --------------------------------------------------------------------------- the snippets


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 3
    assert any(_is_flow(code) for _, code in BLOCKS)
    assert any('method="blockwise"' in code for _, code in BLOCKS)


def test_snippets_run_on_lazy_point_sets(threaded):
    usage = threaded[_index_of("mf.sample_points(X, 100_000")]
    # sample_points returns a lazy (Dask-backed) point set, and the flow snippets start from one
    assert dask.is_dask_collection(usage["ds"].z.data)  # reopened from points.zarr: still lazy
    flow = threaded[_index_of("kernel_flow(train, kernel, steps=300")]
    assert dask.is_dask_collection(flow["train"].z.data)
    assert dask.is_dask_collection(flow["new"].z.data)


def test_usage_snippet_claims(threaded):
    snap = threaded[_index_of("mf.sample_points(X, 100_000")]
    assert snap["ds"].sizes["point"] == 100_000
    sigma = mf.sigma_measure(snap["ds"])
    assert abs(sigma - 0.3726) <= 0.002, f"sigma of g_FS is {sigma}, the README says ~0.3726"
    assert _chart(snap["one"]) == (0, 1)
    assert snap["d"].shape == (1000, 1000)
    idx, dist = snap["idx"], snap["dist"]
    assert idx.shape == (10,) and dist.shape == (10,)


def test_flow_snippet_claims(threaded):
    snap = threaded[_index_of("kernel_flow(train, kernel, steps=300")]
    assert _chart(snap["one"]) == (0, 1)  # "chart (0, 1) for any seed"
    assert snap["one"].attrs["chart"] == [0, 1]
    summary = mf.evaluate(snap["result"])
    gain_train, gain_test = float(summary.gain_train), float(summary.gain_test)
    print(f"README flow: sigma_train {float(summary.sigma_train_initial):.4g} -> "
          f"{float(summary.sigma_train_final):.4g} (gain {gain_train:.3g}), sigma_test "
          f"{float(summary.sigma_test_initial):.4g} -> {float(summary.sigma_test_final):.4g} "
          f"(gain {gain_test:.3g})")
    assert gain_train >= 1e4, f"train sigma gain {gain_train:.3g}; the README says ~1e5"
    assert 0.5 <= gain_test <= 20, f"test sigma gain {gain_test:.3g}; the README says ~1"
    new, g_new = snap["new"], snap["g_new"]
    assert g_new.sizes["point"] == new.sizes["point"] > 0
    np.testing.assert_array_equal(g_new["point"].values, new["point"].values)
    assert bool(np.all(mf.linalg.valid(g_new.values)))


def test_blockwise_snippet_is_the_dense_flow(threaded):
    i = _index_of('method="blockwise"')
    snap = threaded[i]
    blockwise = snap["result"]
    assert blockwise is not threaded[i - 1]["result"]  # the snippet made a new result
    # the same call with method="dense" (the README's "same flow as method='dense'"); the dense
    # flow of the previous snippet ran 300 steps with test points, so it is another flow
    steps = int(blockwise.attrs["steps"])
    dense = mf.kernel_flow(snap["train"], snap["kernel"], steps=steps, method="dense")
    assert blockwise.attrs["method"] == "blockwise" and dense.attrs["method"] == "dense"
    a, b = blockwise.g_train.values, dense.g_train.values
    print(f"blockwise vs dense g_train: max relative difference {np.max(np.abs(a - b) / np.abs(b).max(axis=(1, 2))[:, None, None]):.3g}")
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=0)
    np.testing.assert_allclose(blockwise.sigma_train.values, dense.sigma_train.values, rtol=1e-9)


def test_kahler_snippet_claims(threaded):
    snap = threaded[_index_of("mf.kahler_flow(points, 3")]
    assert dask.is_dask_collection(snap["points"].z.data)  # lazy, in all charts
    assert len(mf.chart_counts(snap["points"])) == 20
    summary = mf.evaluate(snap["phi"])
    test0, test1 = float(summary.sigma_test_initial), float(summary.sigma_test_final)
    print(f"README Kähler flow: test sigma {test0:.4g} -> {test1:.4g} (gain {test0 / test1:.3g})")
    assert abs(test0 - 0.378) < 0.005 and 0.06 < test1 < 0.09, "the README says 0.378 -> 0.074"
    assert snap["g"].sizes["point"] == 500 and bool(np.all(mf.linalg.valid(snap["g"].values)))
    sigma_bal = mf.kahler.algebraic_sigma(mf.fermat_quintic(), snap["held_out"], snap["bal"].H, 3)
    assert 0.18 < sigma_bal < 0.22, f"balanced k = 3 sigma {sigma_bal:.4g}; the README says 0.20"


# --------------------------------------------------------------------------- dask.distributed


def test_flows_identical_on_a_local_cluster(threaded, distributed_run):
    ours, theirs = _flow_results(threaded), _flow_results(distributed_run)
    assert len(ours) == len(theirs) >= 2
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a["point"].values, b["point"].values)
        for name in ("g_train", "g_test", "sigma_train", "sigma_test"):
            if name in a or name in b:
                np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    # what the workers wrote to points.zarr is what the threaded run wrote
    usage_a = threaded[_index_of("mf.sample_points(X, 100_000")]
    usage_b = distributed_run[_index_of("mf.sample_points(X, 100_000")]
    xr.testing.assert_identical(usage_a["ds"].compute(), usage_b["ds"].compute())
    new_a = threaded[_index_of("mf.predict(result, new)")]["g_new"]
    new_b = distributed_run[_index_of("mf.predict(result, new)")]["g_new"]
    np.testing.assert_array_equal(new_a.values, new_b.values)
    phi_a = threaded[_index_of("mf.kahler_flow(points, 3")]["phi"]
    phi_b = distributed_run[_index_of("mf.kahler_flow(points, 3")]["phi"]
    for name in ("theta", "g_test", "sigma_test"):
        np.testing.assert_array_equal(phi_a[name].values, phi_b[name].values, err_msg=name)
