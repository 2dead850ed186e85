"""Interrupted writes resume to the very store an uninterrupted write gives (issue 9).

``mf.to_zarr(ds, path)`` on an incomplete store written from the same Dataset (same data,
chunks and attributes) writes only the chunks without a done-record and gives, byte for byte,
the store of an uninterrupted write; another Dataset is refused.  Finished stores carry
consolidated metadata (plain ``xr.open_zarr`` opens them without warnings), fsspec URLs work
with the same rules, and no combination of arguments deletes a directory holding other files.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import dask.array as da
import fsspec
import numpy as np
import pytest
import xarray as xr
import zarr

import mfarray as mf


def _fail_if(block, trigger, at, block_info=None):
    """The block, or OSError for chunk ``at`` while the file ``trigger`` exists: the same
    Dataset (same graph) is interrupted or not depending on the file alone."""
    if block_info[0]["chunk-location"][0] == at and os.path.exists(trigger):
        raise OSError("disk full (simulated)")
    return block


def _lazy(trigger, n=400, chunk=40, seed=0, at=6):
    """A lazy point-set-like Dataset with a global reduction (a normalised weight, as in
    sample_points), an all-zero integer variable (chunks equal to the fill value are never
    written) and an in-memory coordinate; chunk ``at`` of ``z`` fails while ``trigger`` exists."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 5)) + 1j * rng.normal(size=(n, 5))
    zd = da.from_array(z, chunks=(chunk, 5)).map_blocks(_fail_if, trigger=str(trigger), at=at, dtype=z.dtype)
    raw = abs(zd).sum(axis=1)
    g = (zd[:, :3, None] * zd[:, None, :3].conj())
    return xr.Dataset(
        {"z": (("point", "ambient"), zd), "g_fs": (("point", "row", "col"), g),
         "weight": ("point", raw / raw.mean()), "patch": ("point", da.zeros(n, chunks=chunk, dtype=np.int64))},
        coords={"point": np.arange(n, dtype=np.int64)}, attrs={"seed": seed, "note": "lazy test set"},
    )


def _tree(path):
    """{relative file path: bytes} of a local store: what 'bit for bit' compares."""
    root = Path(path)
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}


def _chunk_files(path):
    """Relative paths of the chunk files of a local store (under ``<array>/c/``), no temporaries."""
    root = Path(path)
    return [str(f.relative_to(root)) for f in root.glob("*/c/**/*") if f.is_file() and not f.name.endswith(".partial")]


def _interrupted(ds_trigger, path, **kw):
    """An interrupted write of ``_lazy`` at ``path`` (the trigger file exists while it runs)."""
    Path(ds_trigger).write_text("fail")
    try:
        with pytest.raises(OSError, match="disk full"):
            mf.to_zarr(_lazy(ds_trigger, **kw), path)
    finally:
        Path(ds_trigger).unlink()


def _same_datasets(a, b):
    assert a.attrs == b.attrs
    assert set(a.variables) == set(b.variables)
    for name in a.variables:
        x, y = a[name].values, b[name].values
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), name


def test_an_interrupted_write_resumes_from_its_chunks_to_the_same_store(tmp_path, capsys):
    trigger = tmp_path / "fail-now"
    ref, path = tmp_path / "ref.zarr", tmp_path / "p.zarr"
    mf.to_zarr(_lazy(trigger), ref)
    _interrupted(trigger, path)
    with pytest.raises(ValueError, match=r"p\.zarr.*incomplete"):
        mf.open_zarr(path)
    before = {f: os.stat(path / f).st_ino for f in _chunk_files(path)}
    assert 0 < len(before) < len(_chunk_files(ref))
    # before: FileExistsError (the path exists); now the same Dataset resumes
    mf.to_zarr(_lazy(trigger), path, progress=True)
    assert "100%" in capsys.readouterr().out  # progress still shown
    kept = [f for f, ino in before.items() if os.stat(path / f).st_ino == ino]
    assert len(kept) >= len(before) - 4, "the chunks already written were written again"
    assert _tree(path) == _tree(ref)  # bit for bit, metadata included; no done-records left
    _same_datasets(mf.open_zarr(path), mf.open_zarr(ref))


def test_a_chunk_file_without_its_done_record_is_never_trusted(tmp_path):
    """A chunk file present but never recorded as done (half-written when the writer was
    killed) is written again, whatever it holds."""
    trigger = tmp_path / "fail-now"
    ref, path = tmp_path / "ref.zarr", tmp_path / "p.zarr"
    mf.to_zarr(_lazy(trigger), ref)
    _interrupted(trigger, path)
    missing = sorted(set(_chunk_files(ref)) - set(_chunk_files(path)))
    assert missing
    for i, f in enumerate(missing):  # garbage, or a truncated copy of the right bytes
        good = (ref / f).read_bytes()
        (path / f).parent.mkdir(parents=True, exist_ok=True)
        (path / f).write_bytes(good[: len(good) // 2] if i % 2 else b"\0garbage")
    mf.to_zarr(_lazy(trigger), path)
    assert _tree(path) == _tree(ref)


def test_an_interrupted_store_of_another_dataset_is_refused(tmp_path):
    trigger = tmp_path / "fail-now"
    path = tmp_path / "p.zarr"
    _interrupted(trigger, path)
    held = _tree(path)
    others = {"other seed": _lazy(trigger, seed=1), "other chunks": _lazy(trigger, chunk=50),
              "other attrs": _lazy(trigger).assign_attrs(seed=99), "another kind": xr.Dataset({"x": ("i", [1.0])})}
    for why, other in others.items():
        with pytest.raises(FileExistsError, match=r"p\.zarr.*interrupted.*overwrite=True"):
            mf.to_zarr(other, path)
        assert _tree(path) == held, why
    # overwrite=True replaces it (same kind), from scratch
    mf.to_zarr(_lazy(trigger, seed=1), path, overwrite=True)
    mf.to_zarr(_lazy(trigger, seed=1), tmp_path / "ref.zarr")
    assert _tree(path) == _tree(tmp_path / "ref.zarr")


def test_a_complete_store_is_not_written_again(tmp_path):
    path = tmp_path / "p.zarr"
    mf.to_zarr(_lazy(tmp_path / "t"), path)
    held = _tree(path)
    with pytest.raises(FileExistsError, match=r"p\.zarr exists.*overwrite=True"):
        mf.to_zarr(_lazy(tmp_path / "t"), path)
    assert _tree(path) == held


def test_a_dataset_zarr_cannot_hold_leaves_no_store(tmp_path):
    """Refused before any chunk is computed (irregular chunks): no half-made store is left,
    and an empty directory stays an empty directory."""
    bad = xr.Dataset({"x": ("i", da.ones(10, chunks=((3, 5, 2),)))})
    (tmp_path / "empty").mkdir()
    for target, overwrite in ((tmp_path / "new.zarr", False), (tmp_path / "empty", True)):
        with pytest.raises(ValueError, match="chunk"):
            mf.to_zarr(bad, target, overwrite=overwrite)
    assert not (tmp_path / "new.zarr").exists() and list((tmp_path / "empty").iterdir()) == []


def test_plain_xarray_opens_a_finished_store_without_warnings(tmp_path):
    path = tmp_path / "p.zarr"
    ds = _lazy(tmp_path / "t")
    mf.to_zarr(ds, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = xr.open_zarr(path)
        ours = mf.open_zarr(path)
        assert zarr.open_consolidated(path).attrs["mfarray_complete"] is True
    assert plain.attrs["mfarray_complete"] is True and plain.attrs["mfarray_store"] == "pointset"
    assert "mfarray_complete" not in ours.attrs and ours.attrs["seed"] == 0
    _same_datasets(ours, ds.compute())
    # the mark read is the true one: a store marked incomplete after consolidation is refused
    zarr.open_group(path, mode="r+").attrs.update({"mfarray_complete": False})
    with pytest.raises(ValueError, match="incomplete"):
        mf.open_zarr(path)
    assert xr.open_zarr(path).attrs["mfarray_complete"] is False


def test_a_store_opened_by_a_relative_path_reads_the_same_after_a_chdir(tmp_path, monkeypatch):
    """A lazy Dataset keeps reading the store it was opened from (found by the README test:
    chunks read relative to a later working directory came back as fill values)."""
    ds = _lazy(tmp_path / "t")
    monkeypatch.chdir(tmp_path)
    mf.to_zarr(ds, "p.zarr")
    lazy = mf.open_zarr("p.zarr")
    monkeypatch.chdir(tmp_path.parent)
    _same_datasets(lazy, ds.compute())


def test_fsspec_urls_follow_the_same_rules(tmp_path):
    fs = fsspec.filesystem("memory")
    base = f"memory://mfarray-test-{os.getpid()}-{time.monotonic_ns()}"
    trigger = tmp_path / "fail-now"
    ds = _lazy(trigger)
    try:
        url = f"{base}/p.zarr"
        mf.to_zarr(ds, url)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _same_datasets(mf.open_zarr(url), ds.compute())
            assert xr.open_zarr(url).attrs["mfarray_complete"] is True
        with pytest.raises(FileExistsError, match="exists"):
            mf.to_zarr(ds, url)
        mf.to_zarr(ds.isel(point=slice(0, 40)), url, overwrite=True)  # same kind: replaced
        assert mf.open_zarr(url).sizes["point"] == 40
        with pytest.raises(FileExistsError, match="'pointset'.*'dataset'"):
            mf.to_zarr(xr.Dataset({"x": ("i", [1.0])}), url, overwrite=True)
        # an interrupted write is refused on open, then resumed
        inter = f"{base}/i.zarr"
        trigger.write_text("fail")
        with pytest.raises(OSError, match="disk full"):
            mf.to_zarr(_lazy(trigger), inter)
        trigger.unlink()
        with pytest.raises(ValueError, match="incomplete"):
            mf.open_zarr(inter)
        mf.to_zarr(_lazy(trigger), inter)
        _same_datasets(mf.open_zarr(inter), ds.compute())
        assert not fs.exists(f"{base}/i.zarr/.mfarray_done")
        # what mfarray did not write is refused and kept
        fs.pipe(f"{base}/notes/notes.txt", b"my notes")
        fs.pipe(f"{base}/file.csv", b"1,2,3")
        with pytest.raises(FileExistsError, match="notes.*not a Zarr"):
            mf.to_zarr(ds, f"{base}/notes", overwrite=True)
        with pytest.raises(FileExistsError, match="file.csv.*file"):
            mf.to_zarr(ds, f"{base}/file.csv", overwrite=True)
        with pytest.raises(FileExistsError, match="notes.*not a Zarr"):
            mf.io.check_replaceable(f"{base}/notes", "pointset")
        assert fs.cat(f"{base}/notes/notes.txt") == b"my notes" and fs.cat(f"{base}/file.csv") == b"1,2,3"
        with pytest.raises(FileNotFoundError, match="no Zarr store"):
            mf.open_zarr(f"{base}/nothing.zarr")
    finally:
        if fs.exists(base):
            fs.rm(base, recursive=True)


def test_a_directory_holding_other_files_is_never_deleted(tmp_path):
    """Every combination of what the path holds (user files alone, or beside or inside a
    complete or interrupted mfarray store) and of the call (same Dataset, another one, another
    kind; overwrite or not; a resume) leaves the user's files as they were."""
    trigger = tmp_path / "fail-now"
    small = {"n": 60, "chunk": 20, "at": 1}
    same, other, kind = _lazy(trigger, **small), _lazy(trigger, seed=1, **small), xr.Dataset({"x": ("i", [1.0])})

    mf.to_zarr(_lazy(trigger, **small), tmp_path / "complete")
    _interrupted(trigger, tmp_path / "interrupted", **small)
    holders = {"user files only": lambda d: d.mkdir(),
               "a complete store": lambda d: shutil.copytree(tmp_path / "complete", d),
               "an interrupted store": lambda d: shutil.copytree(tmp_path / "interrupted", d)}
    places = {"beside the store": Path("notes.txt"), "inside an array": Path("z") / "notes.txt",
              "among the chunks": Path("z") / "c" / "notes.txt"}
    n, written = 0, set()
    for holder, make in holders.items():
        for place, rel in places.items():
            if holder == "user files only" and place != "beside the store":
                continue
            for which, ds in {"same": same, "other": other, "kind": kind}.items():
                for overwrite in (False, True):
                    d = tmp_path / f"case{n}"
                    n += 1
                    make(d)
                    (d / rel).parent.mkdir(parents=True, exist_ok=True)
                    (d / rel).write_text("my notes")
                    try:
                        mf.to_zarr(ds, d, overwrite=overwrite)
                        written.add((holder, place, which, overwrite))
                    except FileExistsError as exc:
                        assert str(d) in str(exc)
                    assert (d / rel).read_text() == "my notes", (holder, place, which, overwrite)
    assert n == 42
    # only the resume wrote (beside the user's file); every overwrite was refused
    assert written == {("an interrupted store", place, "same", False) for place in places}


# ---------------------------------------------------------------- fault injection (SIGKILL)
N_KILL = 400_000
CHUNK_KILL = 50_000
WRITER = """
import sys
import mfarray as mf
ds = mf.sample_points(mf.fermat_quintic(), {n}, seed=11, chunk_size={chunk})
mf.to_zarr(ds, sys.argv[1])
"""


def _kill_after(path, n_files, timeout=120.0):
    """Start a writer of the 4e5-point store at ``path`` and SIGKILL it once ``n_files`` chunk
    files exist; returns the number of chunk files then."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER.format(n=N_KILL, chunk=CHUNK_KILL), str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    start = time.monotonic()
    try:
        while not path.exists() or len(_chunk_files(path)) < n_files:
            if proc.poll() is not None:
                raise AssertionError(f"the writer ended (rc {proc.returncode}) before {n_files} chunk files "
                                     f"existed: {proc.stderr.read().decode()[-2000:]}")
            assert time.monotonic() - start < timeout, "the writer wrote too slowly"
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return len(_chunk_files(path))


@pytest.mark.slow
def test_sigkill_at_several_moments_then_the_resumed_write_equals_an_uninterrupted_one(tmp_path):
    ref, path = tmp_path / "ref.zarr", tmp_path / "p.zarr"
    ds = mf.sample_points(mf.fermat_quintic(), N_KILL, seed=11, chunk_size=CHUNK_KILL)
    mf.to_zarr(ds, ref)
    total = len(_chunk_files(ref))
    # killed early, then (resumed by a new writer each time) mid-way and while the last
    # variable (weight, which needs every point) is being written
    seen = 0
    for target in (3, total // 2, total - 8):
        seen = _kill_after(path, max(target, seen + 5))
        assert seen < total
        with pytest.raises(ValueError, match="incomplete"):
            mf.open_zarr(path)
    mf.to_zarr(ds, path)  # the last resume, in this process
    assert _tree(path) == _tree(ref)
    _same_datasets(mf.open_zarr(path), mf.open_zarr(ref))


def _slow_or_fail(block, at, block_info=None):
    """Chunk ``at`` fails at once; every other chunk takes 0.3 s, then succeeds."""
    if block_info[0]["chunk-location"][0] == at:
        raise OSError("disk full (simulated)")
    time.sleep(0.3)
    return block


def test_nothing_is_written_after_an_interrupted_write_has_raised(tmp_path):
    """Dask raises as soon as one chunk fails while its other threads are still writing; the
    store must not change after to_zarr has raised (a resume started at once would race
    those writes)."""
    z = np.arange(8 * 4, dtype=np.float64).reshape(8, 4)
    zd = da.from_array(z, chunks=(1, 4)).map_blocks(_slow_or_fail, at=0, dtype=z.dtype)
    path = tmp_path / "p.zarr"
    with pytest.raises(OSError, match="disk full"):
        mf.to_zarr(xr.Dataset({"x": (("i", "j"), zd)}), path)
    raised = _tree(path)
    time.sleep(0.8)
    assert _tree(path) == raised


_FINGERPRINT = """
import mfarray as mf
from mfarray.io.marks import fingerprint, store_kind
pts = mf.sample_points(mf.fermat_quintic(), 600, seed=3, chunk_size=100)
one = mf.select_chart(pts, 0, 1)
print(mf.__file__)
print(fingerprint(pts, store_kind(pts)), fingerprint(one, store_kind(one)))
"""


def test_a_sample_fingerprint_does_not_depend_on_where_mfarray_is_installed(tmp_path):
    """A store's resume fingerprint names the Dataset's tasks; Dask named a closure's tasks from
    its pickled code, which holds the file path, so the same sample_points call imported from
    another place (a source tree beside an installed copy, a reinstall) could not resume."""
    copy = tmp_path / "elsewhere"
    shutil.copytree(Path(mf.__file__).parent, copy / "mfarray", ignore=shutil.ignore_patterns("__pycache__"))
    here = subprocess.run([sys.executable, "-c", _FINGERPRINT], capture_output=True, text=True, check=True,
                          cwd=tmp_path).stdout.splitlines()
    there = subprocess.run([sys.executable, "-c", _FINGERPRINT], capture_output=True, text=True, check=True,
                           cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(copy)}).stdout.splitlines()
    assert here[0] != there[0] and there[0].startswith(str(copy))  # two copies of mfarray were used
    assert here[1] == there[1]
