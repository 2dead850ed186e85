"""The study pipeline (mfarray.study): config in and out, stages stored and resumed, the report."""

import dataclasses
import json
import os
import tomllib

import numpy as np
import pytest

import mfarray as mf
from mfarray.experiments.presets import TABLE1, Preset
from mfarray.study import DEFAULT_TOML, StudyConfig, load_config, run_study
from mfarray.study import run as run_module
from mfarray.study.config import to_toml

TINY = {"tuning": {"init": 2, "iterations": 0, "steps": 3, "n_train": 60, "n_test": 40,
                   "spaces": {"gaussian": {"sigma": [0.05, 1.0], "lr": [0.05, 0.5]}}},
        "gains": {"kernels": ["gaussian"], "steps": 5, "n_test": 50},
        "noise": {"kernels": ["delta"], "n_train": 60, "steps": 3, "scales": [1e-3, 0.1]},
        "spacing": {"sizes": [50, 100, 200], "n_test": 30},
        "figure2": {"n": 100, "clusters": 2, "batches": 2}}


FEATURES = {"enabled": True, "n_train": 60, "n_test": 40, "epochs": 1, "flow_steps": 3, "depth": 1,
            "network_widths": [8], "phi_epochs": 1, "kahler_degrees": [2], "kahler_steps": 2, "widths": [4, 8],
            "width_epochs": 1, "n_probe": 10}


def test_default_config_round_trips_through_toml():
    assert load_config(tomllib.loads(DEFAULT_TOML)) == StudyConfig()
    c = load_config({**TINY, "surface": "dwork:0.5"})
    assert load_config(tomllib.loads(to_toml(c))) == c
    c = load_config({**TINY, "feature_learning": FEATURES})
    assert c.feature_learning.enabled and c.feature_learning.widths == (4, 8)
    assert load_config(tomllib.loads(to_toml(c))) == c
    assert not StudyConfig().feature_learning.enabled  # the default run's time does not change


@pytest.mark.parametrize("bad, match", [
    ({"gains": {"stepz": 3}}, r"unknown key\(s\) \['stepz'\] in \[gains\]"),
    ({"colour": 1}, "unknown key"),
    ({"gains": {"steps": 2.5}}, "gains.steps must be an integer"),
    ({"tuning": {"enabled": "yes"}}, "tuning.enabled must be true or false"),
    ({"gains": 3}, r"\[gains\] .* must be a table"),
    ({"gains": {"kernels": ["laplace"]}}, r"gains.kernels must name presets"),
    ({"noise": {"kernels": []}}, r"noise.kernels must name presets"),
    ({"feature_learning": {"widthz": [64]}}, r"unknown key\(s\) \['widthz'\] in \[feature_learning\]"),
    ({"feature_learning": {"widths": [64]}}, r"feature_learning.widths must be a list of at least 2"),
    ({"feature_learning": {"n_probe": 50, "n_test": 40}}, r"feature_learning.n_probe = 50 must be at most"),
    ({"feature_learning": {"epochs": 0}}, r"feature_learning.epochs must be an integer >= 1"),
    ({"feature_learning": {"enabled": 1}}, r"feature_learning.enabled must be true or false"),
])
def test_bad_config_is_refused_by_name(bad, match):
    with pytest.raises(ValueError, match=match):
        load_config(bad)


def test_config_file(tmp_path):
    path = tmp_path / "study.toml"
    path.write_text('surface = "k3"\n[gains]\nsteps = 7\n')
    c = load_config(path)
    assert c.surface == "k3" and c.gains.steps == 7 and c.tuning == StudyConfig().tuning
    path.write_text("surface = \n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(path)


def test_run_stores_every_stage_resumes_and_reports(tmp_path, monkeypatch):
    config = load_config({**TINY, "gains": {**TINY["gains"], "kernels": ["gaussian"]}})
    out = tmp_path / "study"
    first = run_study(config, out, progress=False)
    for stage in ("tuning", "gains", "noise", "spacing", "figure2"):
        assert os.path.isdir(run_module.stage_path(out, stage))
    assert set(first["gains"].kernel.values) == {"gaussian", "gaussian-tuned"}
    with open(first["report"]) as fh:
        report = fh.read()
    assert "| gaussian (gaussian_fs) |" in report and "gains.png" in report and "figure2.png" in report
    for figure in ("gains", "noise", "spacing", "figure2"):
        assert os.path.getsize(out / f"{figure}.png") > 1000
    assert "## Noise study" in report and "## Distance scaling" in report
    assert first["noise"].gain_test.dims == ("kernel", "variant", "scale")
    # feature learning is off by default: no stage, no section
    assert "## Feature learning" not in report and "feature_learning" not in first
    assert not os.path.exists(run_module.stage_path(out, "feature_learning"))

    # a rerun with the same config computes nothing
    def boom(*a, **k):
        raise AssertionError("recomputed a stored stage")

    monkeypatch.setattr(run_module, "gains", boom)
    monkeypatch.setattr(run_module, "tune", boom)
    monkeypatch.setattr(run_module, "figure2_data", boom)
    monkeypatch.setattr(run_module, "_noise", boom)
    monkeypatch.setattr(run_module, "_spacing", boom)
    again = run_study(config, out, progress=False)
    assert float(again["gains"].gain_test.sel(kernel="gaussian")) == float(first["gains"].gain_test.sel(kernel="gaussian"))
    # a changed section recomputes that stage only
    changed = dataclasses.replace(config, figure2=dataclasses.replace(config.figure2, clusters=4))
    with pytest.raises(AssertionError, match="recomputed"):
        run_study(changed, out, progress=False)


def test_feature_learning_section_has_every_model(tmp_path, monkeypatch):
    config = load_config({**TINY, "noise": {"enabled": False}, "spacing": {"enabled": False},
                          "figure2": {"enabled": False}, "feature_learning": FEATURES})
    out = tmp_path / "study"
    first = run_study(config, out, progress=False)
    ds, curves = first["feature_learning"], first["kernel_evolution"]
    expected = ["fs", "gaussian", "gaussian-tuned", "analytic_ntk", "network_adam_8", "network_flow_8",
                "initial_ntk_8", "after_kernel_8", "after_kernel_flow_8", "fs_all_charts", "phi_network",
                "phi_after_kernel", "phi_initial_ntk", "phi_kernel_k2"]
    assert list(ds.model.values) == expected
    for name in ("sigma_train", "sigma_test", "gain_train", "gain_test", "gain_test_one_chart", "seconds"):
        assert np.all(np.isfinite(ds[name].values)), name
    assert list(curves.width.values) == [4, 8] and np.all(np.isfinite(curves.kernel_distance.values))
    with open(first["report"]) as fh:
        report = fh.read()
    assert "## Feature learning: every model on one split" in report
    section = report.split("## Feature learning", 1)[1].split("\n## ", 1)[0]
    for model in expected:
        assert f"| {model} |" in section
    assert "kernel_evolution.png" in report and os.path.getsize(out / "kernel_evolution.png") > 1000

    # a rerun resumes both stages; changing the curves' widths recomputes only the curves
    def boom(*a, **k):
        raise AssertionError("recomputed a stored stage")

    monkeypatch.setattr(run_module, "_feature_learning", boom)
    monkeypatch.setattr(run_module, "_kernel_evolution", boom)
    again = run_study(config, out, progress=False)
    assert float(again["feature_learning"].sigma_test.sel(model="phi_network")) == float(
        ds.sigma_test.sel(model="phi_network"))
    wider = dataclasses.replace(config, feature_learning=dataclasses.replace(config.feature_learning, widths=(4, 16)))
    monkeypatch.setattr(run_module, "_kernel_evolution", lambda *a: (_ for _ in ()).throw(AssertionError("curves")))
    with pytest.raises(AssertionError, match="curves"):
        run_study(wider, out, progress=False)


def test_an_interrupted_stage_is_recomputed(tmp_path):
    config = load_config({**TINY, "tuning": {"enabled": False}, "figure2": {"enabled": False},
                          "noise": {"enabled": False}, "spacing": {"enabled": False}})
    out = tmp_path / "study"
    run_study(config, out, progress=False)
    # make the gains store look interrupted: open_zarr refuses it, the rerun rewrites it
    import zarr

    zarr.open_group(run_module.stage_path(out, "gains"), mode="r+").attrs["mfarray_complete"] = False
    with pytest.raises(ValueError):
        mf.open_zarr(run_module.stage_path(out, "gains"))
    again = run_study(config, out, progress=False)
    assert mf.open_zarr(run_module.stage_path(out, "gains")).sizes["kernel"] == 1
    assert again["gains"].sizes["kernel"] == 1


def test_out_must_be_a_folder(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(FileExistsError, match="out="):
        run_study(load_config(TINY), f, progress=False)


def test_presets_are_table_1_and_refuse_bad_values():
    assert TABLE1["relu"].hyper == {"depth": 1, "sigma_w": 5.716, "sigma_b": 80.52} and TABLE1["relu"].n_train == 2500
    assert TABLE1["gaussian"].hyper["sigma"] == 30.0 and TABLE1["gaussian"].lr == 0.1583
    assert TABLE1["delta"].n_train == 1000 and TABLE1["delta"].lr == 0.3162
    assert TABLE1["gaussian"].replace(sigma=0.1).hyper["sigma"] == 0.1
    with pytest.raises(ValueError, match="sigma"):
        Preset("gaussian_fs", {"sigma": -1.0})
    with pytest.raises(ValueError, match="kernel must name"):
        Preset("laplace")


def test_cli_run_print_config_and_a_config_file(tmp_path):
    from typer.testing import CliRunner

    from mfarray.cli import app

    runner = CliRunner()
    printed = runner.invoke(app, ["run", "--print-config"])
    assert printed.exit_code == 0 and printed.output == DEFAULT_TOML
    path = tmp_path / "study.toml"
    path.write_text(to_toml(load_config({**TINY, "tuning": {"enabled": False}, "figure2": {"enabled": False},
                                         "noise": {"enabled": False}, "spacing": {"enabled": False}})))
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", "--config", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "[gains] done" in result.output and (out / "report.md").exists()
    again = runner.invoke(app, ["run", "--config", str(path), "--out", str(out)])
    assert "[gains] resumed" in again.output
    bad = tmp_path / "bad.toml"
    bad.write_text("[gains]\nstepz = 3\n")
    refused = runner.invoke(app, ["run", "--config", str(bad)])
    assert refused.exit_code != 0 and "stepz" in refused.output
    assert runner.invoke(app, ["run", "--scheduler", "tcp://"]).exit_code != 0


def test_gains_per_cluster_as_the_paper_did():
    from mfarray.experiments.gains import gains

    presets = {"delta": TABLE1["delta"].replace(n_train=300, steps=5)}
    whole = gains(presets, n_test=100)
    clustered = gains(presets, n_test=100, cluster_size=100)
    assert clustered.attrs["cluster_size"] == 100 and int(clustered.steps_done.sel(kernel="delta")) == 5
    # the Delta kernel is block-diagonal in any clustering: per-cluster steps change only the step control
    assert float(clustered.gain_train.sel(kernel="delta")) > 1 and float(whole.gain_train.sel(kernel="delta")) > 1
    np.testing.assert_array_equal(clustered.sigma_test_initial.values, whole.sigma_test_initial.values)


def test_gpu_is_refused_until_a_device_path_is_tested(tmp_path):
    with pytest.raises(ValueError, match="gpu = true"):
        run_study(load_config({"compute": {"gpu": True}}), tmp_path / "x", progress=False)


def test_a_stage_is_recomputed_when_what_it_flows_changes(tmp_path):
    """A stage's record covers its inputs from other sections: the gains and noise stages flow
    the tuned presets, and the tuning stage tunes the gains section's kernels."""
    config = load_config({**TINY, "noise": {**TINY["noise"], "kernels": ["gaussian"]},
                          "spacing": {"enabled": False}, "figure2": {"enabled": False}})
    out = tmp_path / "study"
    first = {k: v.compute() for k, v in run_study(config, out, progress=False).items() if k != "report"}
    retuned = dataclasses.replace(config, tuning=dataclasses.replace(
        config.tuning, spaces={"gaussian": {"sigma": [0.3, 0.31], "lr": [0.05, 0.5]}}))
    again = run_study(retuned, out, progress=False)
    best = json.loads(str(again["tuning"].best_params.sel(kernel="gaussian").values))
    assert 0.3 <= best["sigma"] <= 0.31
    # both stages that flow the tuned preset were recomputed with it
    assert again["gains"].attrs["study_section"] != first["gains"].attrs["study_section"]
    assert again["noise"].attrs["study_section"] != first["noise"].attrs["study_section"]
    assert float(again["gains"].gain_train.sel(kernel="gaussian-tuned")) != float(
        first["gains"].gain_train.sel(kernel="gaussian-tuned"))
    # a kernel added to the gains section is tuned too
    more = dataclasses.replace(retuned, gains=dataclasses.replace(retuned.gains, kernels=("gaussian", "delta")),
                               tuning=dataclasses.replace(retuned.tuning, spaces={
                                   **retuned.tuning.spaces, "delta": {"lr": [0.05, 0.5]}}))
    third = run_study(more, out, progress=False)
    assert list(third["tuning"].kernel.values) == ["gaussian", "delta"]
    assert "delta-tuned" in third["gains"].kernel.values


@pytest.mark.parametrize("field, bad, error", [
    ("lr", float("nan"), ValueError), ("lr", 0.0, ValueError), ("lr", "0.1", TypeError),
    ("steps", -1, ValueError), ("steps", 2.5, TypeError),
    ("n_train", 0, ValueError), ("n_train", 2.5, TypeError), ("n_train", True, TypeError),
    ("loss", "foo", ValueError), ("loss", "mse", ValueError), ("loss", None, TypeError)])
def test_preset_refuses_bad_flow_settings_by_name(field, bad, error):
    """lr=nan, steps=-1, loss='foo', n_train=0 or 2.5 were accepted (the flow caught some later,
    n_train=2.5 as 'n ... got 22.5')."""
    with pytest.raises(error, match=f"Preset {field}"):
        Preset("delta", **{"n_train": 50, "steps": 2, field: bad})
    with pytest.raises(error, match=f"Preset {field}"):
        TABLE1["delta"].replace(**{field: bad})
    with pytest.raises(TypeError, match="'sigma' is neither a Preset field .* nor a hyper-parameter of delta"):
        TABLE1["delta"].replace(sigma=0.1)
    p = Preset("delta", lr=np.float32(0.5), n_train=np.int64(50), steps=np.int64(2))
    assert json.loads(json.dumps(p.to_json()))["n_train"] == 50  # NumPy numbers stored as Python ones


@pytest.mark.parametrize("n_test, error", [(-5, ValueError), (0, ValueError), (2.5, TypeError), (True, TypeError)])
def test_gains_refuses_a_bad_n_test_by_name(n_test, error):
    from mfarray.experiments.gains import gains

    with pytest.raises(error, match="n_test"):
        gains({"d": Preset("delta", n_train=20, steps=1)}, n_test=n_test)


def test_a_preset_keeps_its_dtype_as_a_name():
    """Preset.replace(dtype=np.float32) ran every flow of gains(), then failed writing the JSON record."""
    import numpy as np

    p = TABLE1["gaussian"].replace(dtype=np.float32)
    assert p.hyper["dtype"] == "float32"
    assert json.loads(json.dumps(p.to_json()))["hyper"]["dtype"] == "float32"


def test_preset_replace_takes_hyper_as_a_table_too():
    """replace(hyper={...}) raised 'multiple values for keyword argument hyper'."""
    p = TABLE1["gaussian"].replace(hyper={"sigma": 0.2})
    assert p.hyper == {**TABLE1["gaussian"].hyper, "sigma": 0.2}
    assert p == TABLE1["gaussian"].replace(sigma=0.2)
