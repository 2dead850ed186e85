"""The command line: `mfarray sample` writes a readable store and refuses bad options."""

import numpy as np
from typer.testing import CliRunner

import mfarray as mf
from mfarray.cli import app

runner = CliRunner()


def test_sample_writes_the_same_points_as_the_library(tmp_path):
    out = tmp_path / "p.zarr"
    result = runner.invoke(app, ["sample", "--n", "3000", "--seed", "4", "--out", str(out), "--chunk-size", "1000"])
    assert result.exit_code == 0, result.output
    assert "sigma of the Fubini-Study metric" in result.output
    stored = mf.open_zarr(out)
    assert np.array_equal(stored.z.values, mf.sample_points(mf.fermat_quintic(), 3000, seed=4).z.values)
    # refuses to overwrite, unless asked
    again = runner.invoke(app, ["sample", "--n", "10", "--out", str(out)])
    assert again.exit_code != 0 and "--overwrite" in again.output
    assert runner.invoke(app, ["sample", "--n", "10", "--out", str(out), "--overwrite"]).exit_code == 0
    assert mf.open_zarr(out).sizes["point"] == 10


def test_sample_other_surfaces_and_bad_options(tmp_path):
    ok = runner.invoke(app, ["sample", "--n", "50", "--surface", "dwork:0.5", "--out", str(tmp_path / "d.zarr")])
    assert ok.exit_code == 0, ok.output
    assert mf.surface_of(mf.open_zarr(tmp_path / "d.zarr")) == mf.dwork_quintic(0.5)
    bad = runner.invoke(app, ["sample", "--surface", "torus", "--out", str(tmp_path / "x.zarr")])
    assert bad.exit_code != 0 and "unknown surface" in bad.output
    bad = runner.invoke(app, ["sample", "--n", "0", "--out", str(tmp_path / "x.zarr")])
    assert bad.exit_code != 0


def _chunk_files(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("c/*") if p.is_file())


def test_sample_run_again_after_sigkill_resumes_to_the_uninterrupted_store(tmp_path):
    """The same `mfarray sample` command after a SIGKILL resumes the store (it was refused as
    'exists' before): the result holds the same bytes as an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = ["--n", "120000", "--seed", "3", "--chunk-size", "6000"]
    out, ref = tmp_path / "p.zarr", tmp_path / "ref.zarr"
    proc = subprocess.Popen([sys.executable, "-m", "mfarray.cli", "sample", *args, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(_chunk_files(out)) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the writer finished before it could be killed"
    written = len(_chunk_files(out))
    resumed = runner.invoke(app, ["sample", *args, "--out", str(out)])
    assert resumed.exit_code == 0, resumed.output
    assert runner.invoke(app, ["sample", *args, "--out", str(ref)]).exit_code == 0
    a, b = mf.open_zarr(out), mf.open_zarr(ref)
    assert 0 < written < len(_chunk_files(ref))
    assert _chunk_files(out) == _chunk_files(ref)
    for f in _chunk_files(ref):  # the same bytes, chunk by chunk
        assert (out / f).read_bytes() == (ref / f).read_bytes(), f
    assert {k: v for k, v in a.attrs.items() if k != "command"} == {k: v for k, v in b.attrs.items() if k != "command"}
    assert os.path.basename(a.attrs["command"].split("--out ")[1].split()[0]) == "p.zarr"
