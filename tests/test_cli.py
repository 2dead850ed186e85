"""The command line: `mfarray sample` writes a readable store and refuses bad options."""

import os

import numpy as np
import pytest
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


def _one_line(result):
    return " ".join(result.output.replace("│", " ").split())


def test_sample_out_url_goes_to_the_url(tmp_path, monkeypatch):
    """typer's Path option turned 's3://b/p.zarr' into the local folder './s3:/b/p.zarr'."""
    import fsspec

    monkeypatch.chdir(tmp_path)
    url = f"memory://mfarray-cli-{os.getpid()}/pts.zarr"
    try:
        res = runner.invoke(app, ["sample", "--n", "30", "--chunk-size", "10", "--out", url])
        assert res.exit_code == 0, res.output
        assert list(tmp_path.iterdir()) == []
        stored = mf.open_zarr(url)
        assert stored.sizes["point"] == 30 and f"--out {url}" in stored.attrs["command"]
    finally:
        fs = fsspec.filesystem("memory")
        if fs.exists(url.split("://")[1]):
            fs.rm(url.split("://")[1], recursive=True)
    res = runner.invoke(app, ["sample", "--n", "30", "--out", "nosuchproto://bucket/p.zarr"])
    assert res.exit_code == 2 and "--out" in _one_line(res) and "nosuchproto" in _one_line(res)
    res = runner.invoke(app, ["run", "--out", "s3://bucket/study"])
    assert res.exit_code == 2 and "local folder" in _one_line(res)
    assert list(tmp_path.iterdir()) == []


def _interrupt(monkeypatch, args):
    """`mfarray sample args` interrupted after its metadata is written (no chunk yet)."""
    import mfarray.io.write as write

    def killed(writes, progress):
        raise OSError("killed (simulated)")

    with monkeypatch.context() as m:
        m.setattr(write, "_compute", killed)
        res = runner.invoke(app, ["sample", *args])
    assert isinstance(res.exception, OSError), res.output


def test_a_resume_spelling_out_differently_resumes_the_store(tmp_path, monkeypatch):
    """The recorded command holds --out as typed, so a resume spelt otherwise (absolute, or
    ../p.zarr from a subfolder) was refused as 'an interrupted write of another Dataset'."""
    import os

    args = ["--n", "300", "--seed", "2", "--chunk-size", "100"]
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["sample", *args, "--out", "ref.zarr"]).exit_code == 0
    for resume in ([str(tmp_path / "p.zarr")], ["../p.zarr", "sub"]):
        _interrupt(monkeypatch, [*args, "--out", "p.zarr"])
        with pytest.raises(ValueError, match="incomplete"):
            mf.open_zarr(tmp_path / "p.zarr")
        if len(resume) > 1:
            monkeypatch.chdir(tmp_path / resume[1])
        res = runner.invoke(app, ["sample", *args, "--out", resume[0]])
        monkeypatch.chdir(tmp_path)
        assert res.exit_code == 0, res.output
        a, b = mf.open_zarr(tmp_path / "p.zarr"), mf.open_zarr(tmp_path / "ref.zarr")
        assert _chunk_files(tmp_path / "p.zarr") == _chunk_files(tmp_path / "ref.zarr")
        assert a.attrs["command"] == b.attrs["command"].replace("ref.zarr", "p.zarr")  # as first typed
        assert np.array_equal(a.z.values, b.z.values)
        import shutil
        shutil.rmtree(tmp_path / "p.zarr")
    # another option is refused, naming what differs
    _interrupt(monkeypatch, [*args, "--out", "p.zarr"])
    res = runner.invoke(app, ["sample", "--n", "300", "--seed", "5", "--chunk-size", "100", "--out",
                              os.path.abspath("p.zarr")])
    assert res.exit_code == 2 and "--seed 2" in _one_line(res) and "--seed 5" in _one_line(res)


def test_the_same_command_on_its_complete_store_has_nothing_to_do(tmp_path, monkeypatch):
    """The docstring says a complete store is left alone; running the command again exited 2
    with 'exists: choose another path'."""
    monkeypatch.chdir(tmp_path)
    args = ["sample", "--n", "200", "--chunk-size", "50", "--out", "p.zarr"]
    assert runner.invoke(app, args).exit_code == 0
    held = {f: (tmp_path / "p.zarr" / f).stat().st_mtime_ns for f in _chunk_files(tmp_path / "p.zarr")}
    again = runner.invoke(app, [*args[:-1], str(tmp_path / "p.zarr")])
    assert again.exit_code == 0, again.output
    assert "nothing to do" in again.output and "sigma of the Fubini-Study metric" in again.output
    assert {f: (tmp_path / "p.zarr" / f).stat().st_mtime_ns for f in _chunk_files(tmp_path / "p.zarr")} == held
    other = runner.invoke(app, ["sample", "--n", "200", "--seed", "1", "--chunk-size", "50", "--out", "p.zarr"])
    assert other.exit_code == 2 and "--overwrite" in other.output and "--seed 1" in _one_line(other)


@pytest.mark.parametrize("args, option", [
    (["--surface", "fermat:1"], "--surface"), (["--surface", "fermat:100"], "--surface"),
    (["--n", "99999999999999999999"], "--n"), (["--n", "10000000", "--chunk-size", "1"], "--chunk-size"),
])
def test_sample_options_out_of_range_are_usage_errors(tmp_path, args, option):
    res = runner.invoke(app, ["sample", "--n", "10", *args, "--out", str(tmp_path / "x.zarr")])
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit), res.output
    assert option in _one_line(res) and not (tmp_path / "x.zarr").exists()
