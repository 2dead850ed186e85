"""mfarray.plots on the wrong Dataset: an error saying which Dataset the plot needs (the result of
which experiment), not xarray's KeyError or AttributeError."""

import numpy as np
import pytest
import xarray as xr

import mfarray as mf
from mfarray.experiments.spacing import nearest_distance_scaling
from mfarray import plots

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")


def _gains_like():
    k = ["a", "b"]
    return xr.Dataset({v: ("kernel", np.array([2.0, 3.0])) for v in
                       ("gain_train", "gain_test", "paper_gain_train", "paper_gain_test")}, coords={"kernel": k})


def _noise_like():
    shape = (2, 2, 3)
    return xr.Dataset({"gain_test": (("kernel", "variant", "scale"), np.ones(shape)),
                       "distance_to_train": (("variant", "scale"), np.full((2, 3), 0.1)),
                       "distance_to_source": (("variant", "scale"), np.full((2, 3), 0.1))},
                      coords={"kernel": ["a", "b"], "variant": ["paper", "projected"]})


def _spacing_like():
    return nearest_distance_scaling(mf.fermat_quintic(), sizes=[20, 40, 80], n_test=10)


def _figure2_like():
    return mf.figure2_data(mf.sample_points(mf.fermat_quintic(), 200, seed=0), n=60, clusters=2, batches=2)


@pytest.mark.parametrize("plot, needs, right, drop", [
    (plots.plot_gains, "experiments.gains.gains", _gains_like, "gain_test"),
    (plots.plot_noise, "experiments.noise.noise_study", _noise_like, "gain_test"),
    (plots.plot_spacing, "experiments.spacing.nearest_distance_scaling", _spacing_like, "mean"),
    (plots.plot_figure2, "cluster.figure2_data", _figure2_like, "distance")])
def test_a_plot_of_the_wrong_dataset_names_the_one_it_needs(plot, needs, right, drop):
    import matplotlib.pyplot as plt

    points = mf.sample_points(mf.fermat_quintic(), 10, seed=0)
    other = _noise_like() if plot is plots.plot_gains else _gains_like()
    good = right()
    for wrong in (points, other, good.drop_vars(drop), good[drop]):
        with pytest.raises((ValueError, TypeError), match=needs.replace(".", r"\.")):
            plot(wrong)
    assert plot(good) is not None  # the right one still draws
    plt.close("all")
