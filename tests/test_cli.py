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
