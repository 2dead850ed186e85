"""Self-describing data (issue 9): every variable described, provenance attributes shared by point
sets, flow results and evaluations, surviving Zarr; weights independent of chunking; LICENSE,
py.typed and type hints on the public API."""

import functools
import inspect
import json
import math
import pathlib
import shlex
import tomllib
from fractions import Fraction

import dask
import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

import mfarray as mf
from mfarray import networks as nw
from mfarray.cli import app
from mfarray.geometry import measures
from mfarray.kernels import gaussian_fs
from mfarray.experiments.feature_learning import metric_mlp, train_metric_network
from mfarray.pointset.provenance import VERSION_KEYS, undocumented

REPO = pathlib.Path(__file__).resolve().parents[1]
X = mf.fermat_quintic()
POLYNOMIAL = ("surface_name", "surface_monomials", "surface_coefficients_real", "surface_coefficients_imag")


@pytest.fixture(scope="module")
def lazy():
    return mf.sample_points(X, 4000, seed=3, chunk_size=1000)


@pytest.fixture(scope="module")
def chart(lazy):
    return mf.select_chart(lazy).compute()


@pytest.fixture(scope="module")
def flowed(chart):
    train, test = chart.isel(point=slice(0, 100)), chart.isel(point=slice(100, 150))
    return train, test, mf.kernel_flow(train, functools.partial(gaussian_fs, sigma=0.3), steps=3, lr=0.1,
                                       test=test)


def _json(attrs):
    json.dumps(attrs)  # raises on anything a Zarr store could not hold
    return attrs


# ---------------------------------------------------------------- every variable described
def test_every_variable_of_every_product_is_described(lazy, chart, flowed):
    train, test, result = flowed
    z = lazy.z.values[:50]
    cfg = nw.MLP((10, 16, 9), "relu")
    network = mf.network_flow(train.isel(point=slice(0, 40)), cfg, nw.init(cfg, 0), steps=1, lr=1e-3,
                              center=True)
    products = {
        "sample_points": lazy,
        "points_from_z": mf.points_from_z(X, z),
        "points_from_z (dask)": mf.points_from_z(X, dask.array.from_array(z, chunks=(20, 5))),
        "points_from_z (cubic, not CY)": mf.points_from_z(mf.cubic_curve(),
                                                          mf.sample_points(mf.cubic_curve(), 30).z.values),
        "select_chart": chart,
        "split": mf.split(chart)[0],
        "express_in_chart": mf.express_in_chart(lazy, 2, 3),
        "to_chart": mf.to_chart(lazy, None, 2, 3),
        "to_chart (given g)": mf.to_chart(lazy, lazy.g_fs * 2, 2, 3),
        "det_metric": mf.pointset.det_metric(chart, chart.g_fs.values),
        "eta": mf.eta(chart),
        "kernel_flow": result,
        "network_flow": network,
        "evaluate": mf.evaluate(result),
        "evaluate (network)": mf.evaluate(network),
        "predict": mf.predict(result, test),
        "kahler_flow": (kahler := mf.kahler_flow(lazy, 1, steps=2, test=lazy, reference="balanced")),
        "predict (kahler)": mf.predict(kahler, lazy),
        "evaluate (kahler)": mf.evaluate(kahler),
        "train_metric_network": train_metric_network(train.isel(point=slice(0, 40)), metric_mlp((4,)), epochs=1,
                                                      batch=16, test=test, probe=test.isel(point=slice(0, 5))),
        "train_phi_network": mf.kahler.train_phi_network(lazy, mf.kahler.PhiNetwork(widths=(4,)), 1, 16, 1e-2,
                                                        test=lazy),
    }
    for name, obj in products.items():
        assert undocumented(obj) == [], name
        variables = obj.variables.values() if isinstance(obj, xr.Dataset) else [obj, *obj.coords.values()]
        for v in variables:
            _json(v.attrs)
    # the conventions that matter when reading the numbers
    assert "mean 1" in lazy.weight.attrs["convention"] and "chunking" in lazy.weight.attrs["convention"]
    for g in (lazy.g_fs, result.g_train, result.dual, mf.to_chart(lazy, None, 2, 3)):
        convention = g.attrs["convention"]
        assert "Hermitian" in convention and "log|z|^2" in convention or "g_train" in convention
    assert "not real rows" in lazy.g_fs.attrs["convention"]
    assert "Calabi-Yau" in products["points_from_z (cubic, not CY)"].weight.attrs["description"]


def test_points_keep_their_index_coordinate(lazy, chart):
    assert lazy.point.dtype == np.int64 and np.array_equal(lazy.point.values, np.arange(4000))
    assert np.all(np.isin(chart.point.values, lazy.point.values)) and "description" in chart.point.attrs


# ----------------------------------------------------------------------- provenance attrs
def test_point_set_attrs_record_how_it_was_made(lazy):
    a = _json(dict(lazy.attrs))
    assert a["n"] == 4 and a["degree"] == 5 and a["seed"] == 3 and a["chunk_size"] == 1000
    assert mf.Hypersurface.from_attrs(a) == X and all(k in a for k in POLYNOMIAL)
    assert a["call"] == ("mfarray.sample_points(Hypersurface('Fermat quintic', n=4, degree=5, monomials=5), 4000, "
                         "seed=3, chunk_size=1000)")
    assert {k: a[k] for k in VERSION_KEYS} == mf.pointset.versions()
    assert a["mfarray_version"] == mf.__version__ and a["numpy_version"] == np.__version__
    given = mf.points_from_z(mf.dwork_quintic(0.5 + 0.25j), mf.sample_points(mf.dwork_quintic(0.5 + 0.25j), 20).z)
    b = _json(dict(given.attrs))
    assert b["call"].startswith("mfarray.points_from_z(Hypersurface(") and "<dask array complex128 (20, 5)>" in b["call"]
    assert b["chunk_size"] == 20 and "seed" not in b
    assert mf.surface_of(given) == mf.dwork_quintic(0.5 + 0.25j)  # complex coefficients split, real and imag
    assert b["surface_coefficients_imag"] != [0.0] * len(b["surface_coefficients_imag"])


def test_derived_sets_wrap_the_call_that_made_their_input(lazy, chart):
    inner = lazy.attrs["call"]
    assert chart.attrs["call"] == f"mfarray.select_chart({inner}, patch=0, elim=1)"
    train, test = mf.split(chart, test=0.25, seed=4)
    assert train.attrs["call"] == f"mfarray.split({chart.attrs['call']}, test=0.25, seed=4)[0]"
    assert test.attrs["call"].endswith("seed=4)[1]")
    assert mf.express_in_chart(lazy, 2, 3).attrs["call"] == f"mfarray.express_in_chart({inner}, 2, 3)"


def test_results_and_evaluations_share_the_point_sets_provenance(chart, flowed):
    _, test, result = flowed
    r, e = _json(dict(result.attrs)), _json(dict(mf.evaluate(result).attrs))
    for attrs in (r, e):
        assert {k: attrs[k] for k in VERSION_KEYS} == {k: chart.attrs[k] for k in VERSION_KEYS}
        assert attrs["n"] == 4 and attrs["seed"] == 3 and attrs["chart"] == [0, 1]
        assert all(attrs[k] == chart.attrs[k] for k in POLYNOMIAL)
    assert r["call"].startswith("mfarray.kernel_flow(train, kernel, steps=3") and "test=test" in r["call"]
    assert r["train_call"] == r["test_call"] == chart.attrs["call"] and r["train_chunk_size"] == 1000
    assert e["call"].startswith("mfarray.evaluate(<Dataset (") and e["result_call"] == r["call"]
    assert mf.predict(result, test).attrs["result_call"] == r["call"]


def test_attrs_survive_zarr(tmp_path, lazy, chart, flowed):
    _, _, result = flowed
    for name, ds in (("points", lazy), ("chart", chart), ("result", result), ("evaluation", mf.evaluate(result))):
        mf.to_zarr(ds, tmp_path / f"{name}.zarr")
        back = mf.open_zarr(tmp_path / f"{name}.zarr")
        assert back.attrs == ds.attrs, name
        for v in ds.variables:
            assert back[v].attrs == ds[v].attrs, (name, v)
        assert undocumented(back) == []


def test_the_cli_records_its_command_and_running_it_again_gives_the_same_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = runner_ok(["sample", "--n", "300", "--seed", "2", "--out", "a.zarr", "--chunk-size", "100"])
    a = mf.open_zarr(tmp_path / "a.zarr")
    assert a.attrs["command"] == ("mfarray sample --n 300 --seed 2 --out a.zarr --surface quintic "
                                  "--chunk-size 100"), out
    assert a.attrs["call"].startswith("mfarray.sample_points(") and a.attrs["seed"] == 2
    argv = shlex.split(a.attrs["command"].replace("a.zarr", "b.zarr"))
    assert argv[:2] == ["mfarray", "sample"]
    runner_ok(argv[1:])
    b = mf.open_zarr(tmp_path / "b.zarr")
    xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())


def runner_ok(args):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.output


# ----------------------------------------------------------------- weights and chunking
def test_weights_are_the_same_bits_for_any_chunking_and_scheduler():
    ref = mf.sample_points(X, 9001, seed=7, chunk_size=1000).weight.values
    for chunk in (777, 4096, 9001):
        assert np.array_equal(mf.sample_points(X, 9001, seed=7, chunk_size=chunk).weight.values, ref), chunk
    with dask.config.set(scheduler="synchronous"):
        assert np.array_equal(mf.sample_points(X, 9001, seed=7, chunk_size=777).weight.values, ref)
    # points_from_z on one NumPy array or on Dask chunks: the same bits
    z = mf.sample_points(X, 9001, seed=7).z.values
    eager = mf.points_from_z(X, z).weight.values
    assert np.array_equal(mf.points_from_z(X, dask.array.from_array(z, chunks=777)).weight.values, eager)
    assert math.fsum(ref) / ref.size == pytest.approx(1.0, abs=1e-15)


def test_renormalised_subsets_are_the_same_bits_lazy_or_computed():
    a = mf.sample_points(X, 6000, seed=1, chunk_size=700)
    b = mf.sample_points(X, 6000, seed=1, chunk_size=2500)
    for make in (mf.select_chart, lambda ds: mf.split(ds, test=0.3, seed=2)[1]):
        ref = make(a).weight.values
        assert np.array_equal(make(b).weight.values, ref)
        assert np.array_equal(make(b.compute()).weight.values, ref)


def test_mean_one_refuses_weights_it_cannot_normalise():
    w = xr.DataArray(np.zeros(4), dims="point")
    with pytest.raises(ValueError, match="cannot be normalised"):
        mf.pointset.mean_one(w)
    lazy = xr.DataArray(dask.array.from_array(np.array([1.0, np.nan, 2.0]), chunks=2), dims="point")
    out = mf.pointset.mean_one(lazy)  # lazy: refused when computed
    with pytest.raises(ValueError, match="sum is nan"):
        out.compute()


@pytest.mark.parametrize("seed", range(5))
def test_sum_partials_are_exact(seed):
    rng = np.random.default_rng(seed)
    x = rng.lognormal(0, 8, 5000) * rng.choice([-1, 1], 5000)
    exact = sum(map(Fraction, x.tolist()), Fraction(0))
    pieces = np.array_split(x, rng.integers(1, 40))
    parts = [measures.sum_partials(p) for p in pieces]
    assert sum(map(Fraction, [t for p in parts for t in p]), Fraction(0)) == exact
    assert measures.exact_sum(parts) == float(exact) == math.fsum(x)
    big = np.array([1e308, 1e308, -1e308, 5.0])  # partial sums overflow: summed scaled, still exact
    assert measures.exact_sum([measures.sum_partials(big)]) == 1e308


# ------------------------------------------------------------------ packaging and typing
def test_license_matches_the_metadata_and_py_typed_is_package_data():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert meta["project"]["license"] == {"text": "MIT"}
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 mfarray developers" in text
    assert (REPO / "mfarray" / "py.typed").is_file()
    assert "py.typed" in meta["tool"]["setuptools"]["package-data"]["mfarray"]


PUBLIC_MODULES = ["mfarray.pointset", "mfarray.pointset.construct", "mfarray.pointset.charts",
                  "mfarray.pointset.subsets", "mfarray.pointset.measures", "mfarray.pointset.provenance",
                  "mfarray.sampling", "mfarray.geometry.measures", "mfarray.flows.results",
                  "mfarray.flows.evaluate", "mfarray.cli"]


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_public_functions_have_type_hints(module):
    import importlib

    mod = importlib.import_module(module)
    missing = []
    for name, fn in vars(mod).items():
        if name.startswith("_") or not inspect.isfunction(fn) or fn.__module__ != mod.__name__:
            continue
        sig = inspect.signature(fn)
        missing += [f"{name}({p})" for p, par in sig.parameters.items()
                    if par.annotation is inspect.Parameter.empty and par.kind not in (par.VAR_POSITIONAL,
                                                                                       par.VAR_KEYWORD)]
        if sig.return_annotation is inspect.Signature.empty:
            missing.append(f"{name} -> ?")
    assert not missing, missing
