"""Writes that cannot destroy what they did not create, and stores that are complete or say
they are not (issue 9): ``to_zarr``/``mfarray sample --overwrite`` replace only an mfarray
store of the same kind, ``ZarrOperator.build`` only a kernel store, and ``open_zarr``
refuses a store whose write was interrupted."""

import os

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from typer.testing import CliRunner

import mfarray as mf
from mfarray.cli import app
from mfarray.flows import kernel_flow
from mfarray.kernels import gaussian_fs
from mfarray.kernels.operators import ZarrOperator

runner = CliRunner()


def _notes_dir(path):
    path.mkdir()
    (path / "notes.txt").write_text("my notes")
    return path


def _pointset(n=40, chunk=10, fail_at=None):
    """A small point-set-like Dataset (``z`` and ``g_fs``), lazy; ``fail_at``: the chunk whose
    computation raises (a write interrupted mid-way)."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(n, 5)) + 1j * rng.normal(size=(n, 5))
    g = np.ones((n, 3, 3), dtype=complex) + 1.0

    def maybe_fail(block, block_info=None):
        if fail_at is not None and block_info[0]["chunk-location"][0] == fail_at:
            raise OSError("disk full (simulated)")
        return block

    g_lazy = da.from_array(g, chunks=(chunk, 3, 3)).map_blocks(maybe_fail, dtype=g.dtype)
    return xr.Dataset({"z": (("point", "coord"), da.from_array(z, chunks=(chunk, 5))),
                       "g_fs": (("point", "row", "col"), g_lazy)}, attrs={"seed": 1})


def test_overwrite_refuses_a_directory_that_is_not_a_store(tmp_path):
    notes = _notes_dir(tmp_path / "mine")
    with pytest.raises(FileExistsError, match="mine.*not a Zarr"):
        mf.to_zarr(_pointset(), notes, overwrite=True)
    assert (notes / "notes.txt").read_text() == "my notes"


def test_overwrite_refuses_a_file(tmp_path):
    f = tmp_path / "data.csv"
    f.write_text("1,2,3")
    with pytest.raises(FileExistsError, match="data.csv.*file"):
        mf.to_zarr(_pointset(), f, overwrite=True)
    assert f.read_text() == "1,2,3"


def test_overwrite_replaces_only_an_mfarray_store_of_the_same_kind(tmp_path):
    ps = _pointset()
    path = tmp_path / "p.zarr"
    mf.to_zarr(ps, path)
    other = xr.Dataset({"x": ("i", np.arange(3.0))})
    with pytest.raises(FileExistsError, match=r"p\.zarr.*'pointset'.*'dataset'"):
        mf.to_zarr(other, path, overwrite=True)
    assert dict(zarr.open_group(path, mode="r").attrs)["mfarray_store"] == "pointset"
    assert mf.open_zarr(path).sizes["point"] == 40
    mf.to_zarr(ps.isel(point=slice(0, 7)), path, overwrite=True)  # same kind: replaced
    assert mf.open_zarr(path).sizes["point"] == 7
    # a Zarr store not written by mfarray is not replaced either
    foreign = tmp_path / "foreign.zarr"
    other.to_zarr(foreign, zarr_format=3, consolidated=False)
    with pytest.raises(FileExistsError, match="foreign.zarr.*not written by mfarray"):
        mf.to_zarr(other, foreign, overwrite=True)
    assert xr.open_zarr(foreign, consolidated=False).sizes["i"] == 3
    # an empty directory is nothing to lose
    (tmp_path / "empty").mkdir()
    mf.to_zarr(other, tmp_path / "empty", overwrite=True)
    assert mf.open_zarr(tmp_path / "empty").x.values.tolist() == [0.0, 1.0, 2.0]


def test_cli_overwrite_refuses_a_foreign_directory_and_the_working_directory(tmp_path, monkeypatch):
    notes = _notes_dir(tmp_path / "mine")
    res = runner.invoke(app, ["sample", "--n", "200", "--out", str(notes), "--overwrite"])
    assert res.exit_code != 0 and "not a Zarr" in res.output and "mine" in res.output
    assert (notes / "notes.txt").read_text() == "my notes"
    monkeypatch.chdir(notes)
    res = runner.invoke(app, ["sample", "--n", "200", "--out", ".", "--overwrite"])
    assert res.exit_code != 0 and "not a Zarr" in res.output
    assert sorted(os.listdir(notes)) == ["notes.txt"]
    # a store of another kind is refused, a point set replaced
    mf.to_zarr(xr.Dataset({"x": ("i", np.arange(3.0))}), tmp_path / "d.zarr")
    res = runner.invoke(app, ["sample", "--n", "200", "--out", str(tmp_path / "d.zarr"), "--overwrite"])
    assert res.exit_code != 0 and "'dataset'" in res.output
    assert mf.open_zarr(tmp_path / "d.zarr").sizes["i"] == 3


def test_kernel_store_never_replaces_a_point_set(tmp_path):
    ds = mf.select_chart(mf.sample_points(mf.cubic_curve(), 3000, seed=3).compute())
    train = ds.isel(point=slice(0, 60))
    path = tmp_path / "train.zarr"
    mf.to_zarr(train, path)
    for overwrite in (False, True):
        with pytest.raises(ValueError, match=r"train\.zarr.*not an mfarray kernel store"):
            kernel_flow(train, gaussian_fs, steps=1, method="zarr",
                        operator_options={"path": str(path), "overwrite": overwrite, "block": 32})
    assert mf.open_zarr(path).sizes["point"] == 60
    # nor a user's directory, a file, or a Zarr array without the kernel record
    x = np.random.default_rng(0).normal(size=(20, 3))
    notes = _notes_dir(tmp_path / "mine")
    f = tmp_path / "f.bin"
    f.write_bytes(b"\0")
    bare = tmp_path / "bare.zarr"
    zarr.create_array(store=bare, shape=(2, 2), dtype="float64")
    for target, why in ((notes, "not a Zarr store"), (f, "is a file"), (bare, "no mfarray_kernel_operator")):
        for overwrite in (False, True):
            with pytest.raises(ValueError, match=why):
                ZarrOperator.build(lambda a, b: a @ b.T, x, x, target, block=8, overwrite=overwrite)
    assert (notes / "notes.txt").read_text() == "my notes" and f.read_bytes() == b"\0"
    assert zarr.open_array(bare, mode="r").shape == (2, 2)
    # a kernel store is still replaced with overwrite=True
    k = tmp_path / "k.zarr"
    ZarrOperator.build(lambda a, b: a @ b.T, x, x, k, block=8)
    op = ZarrOperator.build(lambda a, b: 2 * a @ b.T, x, x, k, block=8, overwrite=True, name="twice")
    assert np.allclose(np.asarray(op.array[:]), 2 * x @ x.T)


def test_interrupted_write_is_refused_then_replaced(tmp_path):
    path = tmp_path / "p.zarr"
    with pytest.raises(OSError, match="disk full"):
        mf.to_zarr(_pointset(n=400, chunk=10, fail_at=25), path)
    with pytest.raises(ValueError, match=r"p\.zarr.*incomplete.*overwrite=True"):
        mf.open_zarr(path)  # before: opened, the chunks never written read as zeros
    assert dict(zarr.open_group(path, mode="r").attrs)["mfarray_complete"] is False
    mf.to_zarr(_pointset(n=400, chunk=10), path, overwrite=True)  # an incomplete store of the kind
    back = mf.open_zarr(path)
    assert np.all(back.g_fs.values == 2.0)
    assert "mfarray_complete" not in back.attrs and "mfarray_store" not in back.attrs
    assert back.attrs["seed"] == 1


def test_store_without_marks_is_refused(tmp_path):
    path = tmp_path / "old.zarr"
    _pointset().compute().to_zarr(path, zarr_format=3, consolidated=False)  # as an older mfarray wrote it
    with pytest.raises(ValueError, match=r"old\.zarr.*no completion mark"):
        mf.open_zarr(path)
    with pytest.raises(ValueError, match="not a Zarr v3 group"):
        mf.open_zarr(_notes_dir(tmp_path / "mine"))


def _tree(path):
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_file_urls_write_open_and_replace_like_local_paths(tmp_path):
    """file:// URLs (listed as supported) failed with FileNotFoundError .../zarr.json, and an
    overwrite of an empty folder or of an mfarray store through one removed it first: the
    user was left with nothing."""
    ds = xr.Dataset({"b": ("x", np.arange(3.0))})
    mf.to_zarr(ds, f"file://{tmp_path}/a.zarr")
    assert mf.open_zarr(f"file://{tmp_path}/a.zarr").b.values.tolist() == [0.0, 1.0, 2.0]
    assert mf.open_zarr(tmp_path / "a.zarr").b.values.tolist() == [0.0, 1.0, 2.0]
    (tmp_path / "empty").mkdir()
    mf.to_zarr(ds, f"file://{tmp_path}/empty", overwrite=True)
    assert mf.open_zarr(tmp_path / "empty").sizes["x"] == 3
    mf.to_zarr(ds * 2, f"file://{tmp_path}/a.zarr", overwrite=True)
    assert mf.open_zarr(tmp_path / "a.zarr").b.values.tolist() == [0.0, 2.0, 4.0]
    with pytest.raises(FileExistsError, match=r"a\.zarr exists"):
        mf.to_zarr(ds, f"file://{tmp_path}/a.zarr")
    notes = _notes_dir(tmp_path / "mine")
    with pytest.raises(FileExistsError, match="mine.*not a Zarr"):
        mf.to_zarr(ds, f"file://{notes}", overwrite=True)
    assert sorted(os.listdir(notes)) == ["notes.txt"]


def test_an_overwrite_that_cannot_write_deletes_nothing(tmp_path, monkeypatch):
    """overwrite=True removed the old store before it knew the new one could be written: a
    write that then failed (a read-only disk, a Dataset xarray refuses) left nothing."""
    path = tmp_path / "p.zarr"
    mf.to_zarr(_pointset(), path)
    held = _tree(path)
    irregular = _pointset().chunk({"point": (15, 20, 5)})
    with pytest.raises(ValueError, match="chunk"):
        mf.to_zarr(irregular, path, overwrite=True)
    assert _tree(path) == held
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="chunk"):
        mf.to_zarr(irregular, tmp_path / "empty", overwrite=True)
    assert list((tmp_path / "empty").iterdir()) == []

    async def refuse(self, key, value, *args, **kwargs):
        raise OSError(f"read-only file system (simulated): {key}")

    monkeypatch.setattr(zarr.storage.LocalStore, "set", refuse)
    for target in (path, f"file://{path}"):
        with pytest.raises(OSError, match="read-only"):
            mf.to_zarr(_pointset(n=20), target, overwrite=True)
        assert _tree(path) == held
    monkeypatch.undo()
    assert mf.open_zarr(path).sizes["point"] == 40
    mf.to_zarr(_pointset(n=20), path, overwrite=True)
    assert mf.open_zarr(path).sizes["point"] == 20


def test_a_store_reached_through_a_symlink_opens_and_is_never_replaced_through_it(tmp_path):
    """open_zarr refused a valid store reached through a symlink (xarray opens it); an
    overwrite through the link is refused naming the link and its target, not 'is a file'."""
    real, link = tmp_path / "real.zarr", tmp_path / "link.zarr"
    mf.to_zarr(_pointset(), real)
    link.symlink_to(real)
    assert mf.open_zarr(link).sizes["point"] == 40
    held = _tree(real)
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match=r"link\.zarr is a symbolic link.*real\.zarr"):
            mf.to_zarr(_pointset(n=20), link, overwrite=overwrite)
    with pytest.raises(FileExistsError, match="symbolic link"):
        mf.io.check_replaceable(link, "pointset")
    assert _tree(real) == held and link.is_symlink()
    res = runner.invoke(app, ["sample", "--n", "20", "--out", str(link), "--overwrite"])
    assert res.exit_code == 2 and "symbolic link" in res.output and "is a file" not in res.output
    assert _tree(real) == held and link.is_symlink()
    dangling = tmp_path / "dangling.zarr"
    dangling.symlink_to(tmp_path / "gone.zarr")
    with pytest.raises(FileNotFoundError, match="dangling"):
        mf.open_zarr(dangling)
    # a store under a symlinked folder is written and read as usual
    (tmp_path / "folder").mkdir()
    (tmp_path / "par").symlink_to(tmp_path / "folder")
    mf.to_zarr(_pointset(), tmp_path / "par" / "q.zarr")
    assert mf.open_zarr(tmp_path / "folder" / "q.zarr").sizes["point"] == 40


def test_an_overwrite_killed_while_it_clears_leaves_a_store_the_next_overwrite_replaces(tmp_path, killed_after):
    """A kill at any file of the old store's removal: open_zarr refuses what is left and the next
    overwrite replaces it.  Removing an array folder with its zarr.json before its chunks left
    chunks that no later overwrite would touch (they looked like the user's files), so a
    checkpoint slot killed there blocked its run for good."""
    path = tmp_path / "s.zarr"
    old, new = _pointset(n=40, chunk=10).compute(), _pointset(n=30, chunk=10).compute()
    mf.to_zarr(old, path)
    n_files = sum(len(files) for _, _, files in os.walk(path))
    for kill_at in range(0, n_files, 3):
        mf.to_zarr(old, path, overwrite=True)
        with killed_after(kill_at), pytest.raises(KeyboardInterrupt):
            mf.to_zarr(new, path, overwrite=True)
        with pytest.raises(ValueError, match="interrupted|complete"):
            mf.open_zarr(path)
        mf.to_zarr(new, path, overwrite=True)
        back = mf.open_zarr(path)
        np.testing.assert_array_equal(back.z.values, new.z.values)
        np.testing.assert_array_equal(back.g_fs.values, new.g_fs.values)
