"""The study config refuses bad values at load time, naming the key (each of these loaded and then
failed minutes later with a traceback from inside a stage), and a partial table of tuning spaces
keeps the other kernels' defaults."""

import pytest

from mfarray.study import StudyConfig, load_config, run_study


@pytest.mark.parametrize("bad, match", [
    ({"surface": "quintik"}, r"surface = 'quintik'"),
    ({"surface": 3}, r"surface must be a string"),
    ({"seed": -1}, r"seed must be an integer in \[0, 2\*\*32 - 1\]"),
    ({"seed": 2**32}, r"seed must be an integer in \[0, 2\*\*32 - 1\]"),
    ({"gains": {"n_test": 0}}, r"gains.n_test must be an integer >= 1; got 0"),
    ({"gains": {"steps": -2}}, r"gains.steps must be an integer >= 1"),
    ({"gains": {"cluster_size": -5}}, r"gains.cluster_size must be an integer >= 0"),
    ({"gains": {"cluster_size": 1}}, r"gains.cluster_size must be 0 \(no clustering\) or at least 2"),
    ({"gains": {"kernels": [{"a": 1}]}}, r"gains.kernels must name presets"),
    ({"compute": {"scheduler": "nonsense"}}, r"compute.scheduler = 'nonsense' is not a scheduler address"),
    ({"noise": {"n_train": 0}}, r"noise.n_train must be an integer >= 2"),
    ({"noise": {"scales": []}}, r"noise.scales must be a non-empty increasing list of positive numbers"),
    ({"noise": {"scales": [-0.1, "x"]}}, r"noise.scales must be a non-empty increasing list"),
    ({"spacing": {"n_test": 0}}, r"spacing.n_test must be an integer >= 1"),
    ({"spacing": {"sizes": [-10, 20, 30]}}, r"spacing.sizes must be an increasing list of at least 3 positive"),
    ({"spacing": {"sizes": [100, 300]}}, r"spacing.sizes must be an increasing list of at least 3"),
    ({"figure2": {"clusters": 0}}, r"figure2.clusters must be an integer >= 1"),
    ({"figure2": {"n": 10, "clusters": 50}}, r"figure2: each of the 5 batches of 2 points must hold 50 clusters"),
    ({"figure2": {"n": 100, "clusters": 30, "batches": 1}}, r"figure2: clusters=30 of n=100 points"),
    ({"tuning": {"n_train": 0}}, r"tuning.n_train must be an integer >= 1"),
    ({"tuning": {"init": 0, "iterations": 0}}, r"tuning.init \+ tuning.iterations must be at least 1"),
    ({"tuning": {"spaces": {"delta": {"lrr": [0.01, 1.0]}}}}, r"tuning.spaces.delta has no parameter 'lrr'"),
    ({"tuning": {"spaces": {"delta": {"lr": [1.0, 0.01]}}}}, r"tuning.spaces.delta.lr = \[1.0, 0.01\]"),
    ({"tuning": {"spaces": {"delta": {"lr": [-1, 1.0]}}}}, r"tuning.spaces.delta.lr = \[-1, 1.0\]"),
    ({"tuning": {"spaces": {"laplace": {"lr": [0.1, 1.0]}}}}, r"tuning.spaces names no preset 'laplace'"),
    ({"tuning": {"spaces": {"delta": 3}}}, r"tuning.spaces.delta must be a table"),
])
def test_bad_values_are_refused_at_load_naming_the_key(bad, match):
    with pytest.raises(ValueError, match=match):
        load_config(bad)


def test_a_partial_spaces_table_keeps_the_other_kernels_defaults():
    c = load_config({"tuning": {"spaces": {"gaussian": {"sigma": [0.1, 1.0]}}}})
    default = StudyConfig().tuning.spaces
    assert c.tuning.spaces["gaussian"] == {"sigma": [0.1, 1.0]}
    for name in ("relu", "delta", "cosine"):
        assert c.tuning.spaces[name] == default[name]


def test_the_default_config_and_good_values_load():
    assert load_config({}) == StudyConfig()
    load_config({"tuning": {"spaces": {"gaussian": {"sigma": (0.1, 1.0)}, "delta": {"lr": (0.1, 0.2, 0.3)}}}})
    load_config({"surface": "dwork:0.5", "seed": 2**32 - 1, "compute": {"scheduler": "local"},
                 "tuning": {"spaces": {"gaussian": {"sigma": [0.1, 1.0], "lr": [0.01, 1.0]},
                                       "delta": {"lr": [0.01, 1.0], "loss": ["sigma", "sigma_squared"]}}}})


def test_run_refuses_a_folder_of_someone_elses_files(tmp_path):
    """--out . in a project folder replaced the user's report.md and gains.png without a word."""
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "report.md").write_text("my notes")
    config = load_config({"tuning": {"enabled": False}, "noise": {"enabled": False},
                          "spacing": {"enabled": False}, "figure2": {"enabled": False},
                          "gains": {"kernels": ["delta"], "steps": 2, "n_test": 20}})
    with pytest.raises(FileExistsError, match="no mfarray study wrote"):
        run_study(config, mine, progress=False)
    assert (mine / "report.md").read_text() == "my notes"
    assert sorted(p.name for p in mine.iterdir()) == ["report.md"]


def test_a_folder_an_earlier_version_wrote_is_still_a_study(tmp_path):
    """Folders written before the .mfarray-study marker existed were refused as 'files that no
    mfarray study wrote': one holding a stage store and the study's own files is taken over."""
    import os

    from mfarray.study import run as run_module

    config = load_config({"tuning": {"enabled": False}, "noise": {"enabled": False},
                          "spacing": {"enabled": False}, "figure2": {"enabled": False},
                          "gains": {"kernels": ["delta"], "steps": 2, "n_test": 20}})
    out = tmp_path / "study"
    run_study(config, out, progress=False)
    os.remove(out / run_module.MARKER)  # as an earlier version left it
    (out / "tuning-delta.json").write_text("{}")
    again = run_study(config, out, progress=False)
    assert (out / run_module.MARKER).exists() and again["gains"].sizes["kernel"] == 1
    os.remove(out / run_module.MARKER)
    (out / "mine.txt").write_text("not the study's")
    with pytest.raises(FileExistsError, match="mine.txt"):
        run_study(config, out, progress=False)
