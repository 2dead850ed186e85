"""Every model on one split (mfarray.experiments.comparison, issue 13): the rows are the package's
own flows and trainings -- each checked against a direct call of the function it reuses -- and
the gains are sigma(g_FS) / sigma(model) on the row's own points."""

import numpy as np
import pytest
import xarray as xr

import mfarray as mf
from mfarray import linalg
from mfarray import networks as nw
from mfarray.experiments.after_kernel import after_kernel_experiment
from mfarray.experiments.comparison import (
    COMPARISON_DOCS,
    FAMILIES,
    ComparisonSpec,
    model_comparison,
)
from mfarray.experiments.feature_learning import metric_mlp, train_metric_network
from mfarray.experiments.presets import PRESETS
from mfarray.geometry import measures
from mfarray.kahler import TangentPotential
from mfarray.kahler.network import PhiNetwork
from mfarray.kahler.network import init as phi_init
from mfarray.kahler.training import train_phi_network

TINY = ComparisonSpec(flow_steps=3, depth=2, widths=(8,), epochs=1, batch=16, phi_widths=(8,), phi_epochs=1,
                      phi_batch=32, kahler_degrees=(2,), kahler_steps=2)


@pytest.fixture(scope="module")
def split():
    """60 train / 40 test one-chart quintic points, and 60 / 40 all-chart points."""
    X = mf.fermat_quintic()
    one = mf.sample_chart(X, 100, seed=3).compute()
    every = mf.sample_points(X, 100, seed=4).compute()
    return (one.isel(point=slice(0, 60)), one.isel(point=slice(60, 100)),
            every.isel(point=slice(0, 60)), every.isel(point=slice(60, 100)))


@pytest.fixture(scope="module")
def table(split):
    train, test, train_all, test_all = split
    return model_comparison(train, test, train_all=train_all, test_all=test_all, spec=TINY)


def test_every_model_has_a_finite_described_row(table):
    expected = ["fs", "relu", "gaussian", "delta", "cosine", "analytic_ntk", "network_adam_8", "network_flow_8",
                "initial_ntk_8", "after_kernel_8", "after_kernel_flow_8", "fs_all_charts", "phi_network",
                "phi_after_kernel", "phi_initial_ntk", "phi_kernel_k2"]
    assert list(table.model.values) == expected
    assert set(table.family.values) == set(FAMILIES)
    for name in ("sigma_train", "sigma_test", "gain_train", "gain_test", "sigma_test_one_chart",
                 "gain_test_one_chart", "seconds"):
        assert np.all(np.isfinite(table[name].values)), name
    for name in COMPARISON_DOCS:
        assert table[name].attrs["description"]
    assert all(str(d) for d in table.description.values) and all(str(o) for o in table.optimizer.values)
    assert table.attrs["n_train"] == 60 and table.attrs["n_train_all_charts"] == 60
    assert ComparisonSpec(**__import__("json").loads(table.attrs["spec"])) == TINY


def test_gains_are_against_g_fs_on_the_rows_own_points(table):
    fs, fs_all = table.sel(model="fs"), table.sel(model="fs_all_charts")
    assert float(fs.gain_test) == 1.0 and float(fs_all.gain_train) == 1.0
    one_chart = table.points.values == "one chart"
    assert set(table.model.values[~one_chart]) == {"fs_all_charts", "phi_network", "phi_after_kernel", "phi_initial_ntk",
                                                        "phi_kernel_k2"}
    ref_test = np.where(one_chart, float(fs.sigma_test), float(fs_all.sigma_test))
    np.testing.assert_allclose(table.gain_test.values, ref_test / table.sigma_test.values, rtol=1e-14)
    # the one-chart test column scores every model on the same points
    np.testing.assert_array_equal(table.sigma_test_one_chart.values[one_chart], table.sigma_test.values[one_chart])
    np.testing.assert_allclose(table.gain_test_one_chart.values,
                               float(fs.sigma_test) / table.sigma_test_one_chart.values, rtol=1e-14)
    assert float(fs_all.sigma_test_one_chart) == float(fs.sigma_test)
    # the Delta kernel fits its train points and predicts g_FS elsewhere (paper §3.2)
    assert float(table.gain_train.sel(model="delta")) > 1.5


def test_network_rows_are_the_after_kernel_experiment_and_network_flow(split, table):
    """Same theta_0, training, operators and flow options as after_kernel_experiment; the flow row is
    network_flow from that theta_0, centred at g_FS."""
    train, test, _, _ = split
    config = metric_mlp((8, 8), d_in=10, k=3)
    result = train_metric_network(train, config, TINY.epochs, TINY.batch, TINY.lr, test=test, seed=TINY.seed,
                                  lr_decay=TINY.lr_decay)
    ref = after_kernel_experiment(train, test, result=result, flow_steps=TINY.flow_steps, flow_lr=TINY.flow_lr,
                                  flow_loss=TINY.flow_loss)
    for ours, theirs in (("initial_ntk_8", "initial_ntk"), ("after_kernel_8", "after_kernel"),
                         ("analytic_ntk", "analytic_ntk"), ("network_adam_8", "network"), ("fs", "fs")):
        for name in ("sigma_train", "sigma_test"):
            np.testing.assert_allclose(float(table[name].sel(model=ours)), float(ref[name].sel(model=theirs)),
                                       rtol=1e-10, err_msg=f"{ours} {name}")
    flow = mf.network_flow(train, config, nw.init(config, TINY.seed), steps=TINY.flow_steps, test=test, center=True)
    np.testing.assert_allclose(float(table.sigma_test.sel(model="network_flow_8")), float(flow.sigma_test[-1]),
                               rtol=1e-12)
    assert int(table.parameters.sel(model="network_flow_8")) == nw.num_params(config)
    assert int(table.parameters.sel(model="after_kernel_8")) == 60 * 9  # dual coefficients


def test_paper_kernels_and_chart_free_rows_are_their_flows(split, table):
    train, test, train_all, test_all = split
    p = PRESETS["gaussian"]
    r = mf.kernel_flow(train, p.spec(), steps=TINY.flow_steps, lr=p.lr, loss=p.loss, test=test)
    assert float(table.sigma_test.sel(model="gaussian")) == float(r.sigma_test[-1])
    phi = mf.kahler_flow(train_all, 2, steps=TINY.kahler_steps, test=test_all)
    assert float(table.sigma_test.sel(model="phi_kernel_k2")) == float(phi.sigma_test[-1])
    net = train_phi_network(train_all, PhiNetwork((8,), "gelu", k=1, seed=0), 1, 32, TINY.phi_lr, test=test_all,
                            lr_decay=TINY.phi_lr_decay)
    assert float(table.sigma_test.sel(model="phi_network")) == float(net.sigma_test[-1])
    # the phi-network's frozen kernels: kahler_flow of the network linearised at theta_T and theta_0
    config = PhiNetwork((8,), "gelu", k=1, seed=0)
    for row, at in (("phi_after_kernel", net.params.values), ("phi_initial_ntk", phi_init(config, mf.fermat_quintic()))):
        r = mf.kahler_flow(train_all, TangentPotential(config, at), steps=TINY.kahler_steps, test=test_all)
        assert float(table.sigma_test.sel(model=row)) == float(r.sigma_test[-1])
        g = mf.predict(r, test, invalid="nan").values  # scored on the one-chart test points too
        one_chart = measures.sigma(linalg.hermitian_det(g), test.omega2.values, test.weight.values)
        assert float(table.sigma_test_one_chart.sel(model=row)) == float(one_chart)


def test_without_all_chart_points_the_chart_free_models_use_the_split(split):
    train, test, _, _ = split
    ds = model_comparison(train, test, spec=ComparisonSpec(
        **{**TINY.to_json(), "skip": ("paper_kernels", "analytic_ntk", "network_adam", "network_flow", "initial_ntk",
                                      "after_kernel", "after_kernel_flow")}), presets={})
    assert list(ds.model.values) == ["fs", "phi_network", "phi_after_kernel", "phi_initial_ntk", "phi_kernel_k2"]
    assert set(ds.points.values) == {"one chart"} and ds.attrs["n_train_all_charts"] == 0
    np.testing.assert_array_equal(ds.sigma_test_one_chart.values, ds.sigma_test.values)
    assert isinstance(ds, xr.Dataset) and ds.attrs["call"].startswith("mfarray.experiments.comparison")


@pytest.mark.parametrize("changes, match", [
    ({"widths": ()}, "widths must hold at least one"),
    ({"widths": (8, 8)}, "widths must be distinct"),
    ({"skip": ("networks",)}, "skip must name families"),
    ({"flow_loss": "mse"}, "flow_loss must be"),
    ({"network_loss": "sigma_dynamic"}, "network_loss must be"),
    ({"epochs": 0}, "epochs must be an integer >= 1"),
    ({"lr": -1.0}, "lr must be a positive"),
    ({"method": "tiled"}, "method must be"),
    ({"activation": "gelu"}, "activation must be one of"),
    ({"skip": FAMILIES}, "leaves no model"),
])
def test_bad_specs_are_refused_by_name(changes, match):
    with pytest.raises(ValueError, match=match):
        ComparisonSpec(**changes)


def test_bad_arguments_are_refused(split):
    with pytest.raises(TypeError, match="widths must be a tuple"):
        ComparisonSpec(widths=8)
    train, test, train_all, _ = split
    with pytest.raises(ValueError, match="train_all and test_all go together"):
        model_comparison(train, test, train_all=train_all, spec=TINY)
    with pytest.raises(TypeError, match=r"presets\['x'\] must be a Preset"):
        model_comparison(train, test, spec=TINY, presets={"x": "gaussian"})
    only_kernels = ComparisonSpec(skip=tuple(f for f in FAMILIES if f != "paper_kernels"))
    with pytest.raises(ValueError, match="leave no model"):
        model_comparison(train, test, spec=only_kernels, presets={})
    with pytest.raises(TypeError, match="spec must be a ComparisonSpec"):
        model_comparison(train, test, spec={"flow_steps": 3})


@pytest.mark.parametrize("changes, match", [
    ({"lr_decay": 5.0}, r"ComparisonSpec\.lr_decay"),
    ({"phi_lr_decay": 5.0}, r"ComparisonSpec\.phi_lr_decay"),
    ({"phi_widths": ()}, r"ComparisonSpec\.phi_widths"),
])
def test_spec_refuses_what_model_comparison_refused_only_midway(changes, match):
    """Accepted by ComparisonSpec, these were refused by model_comparison only after the paper kernels
    and networks had trained, with messages not naming ComparisonSpec."""
    with pytest.raises(ValueError, match=match):
        ComparisonSpec(**changes)


def test_spec_accepts_numpy_scalars_and_stores_python_numbers():
    import json

    spec = ComparisonSpec(flow_lr=np.float32(0.5), flow_steps=np.int64(3), widths=(np.int64(8),),
                          lr_decay=np.float64(0.9), phi_widths=(np.int32(8),), seed=np.int64(2))
    assert spec.flow_lr == 0.5 and type(spec.flow_lr) is float and type(spec.flow_steps) is int
    assert spec.widths == (8,) and type(spec.widths[0]) is int and type(spec.phi_widths[0]) is int
    json.dumps(spec.to_json())  # what model_comparison records
    with pytest.raises(TypeError, match=r"ComparisonSpec\.flow_lr"):
        ComparisonSpec(flow_lr="0.5")


def test_gains_accepts_a_numpy_cluster_size():
    import json

    from mfarray.experiments.gains import gains
    from mfarray.experiments.presets import TABLE1

    g = TABLE1["gaussian"].replace(sigma=0.3, squared=True, n_train=40, steps=2)
    r = gains({"g": g}, n_test=10, cluster_size=np.int64(20))
    assert r.attrs["cluster_size"] == 20 and type(r.attrs["cluster_size"]) is int
    json.dumps(r.attrs["cluster_size"])
    with pytest.raises(ValueError, match="cluster_size"):
        gains({"g": g}, n_test=10, cluster_size=np.int64(1))
    with pytest.raises(TypeError, match="cluster_size"):
        gains({"g": g}, n_test=10, cluster_size=20.0)
