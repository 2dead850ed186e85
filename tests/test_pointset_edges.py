"""Point sets at their edges: impossible charts, empty Dask chunks, ill-conditioned charts,
and the argument checks of the constructors -- each a finding of an adversarial pass that
failed (or hung) on the code before."""

import dask.array as da
import numpy as np
import pytest

import mfarray as mf
from mfarray import linalg

X = mf.fermat_quintic()


@pytest.mark.parametrize("chart", [(0, 0), (5, 0), (-1, 0)])
def test_sample_chart_refuses_a_chart_that_cannot_exist(chart):
    """It doubled its sample for ever (4.1 million points after 40 s) looking for such a chart."""
    with pytest.raises(ValueError, match="patch|elim"):
        mf.sample_chart(X, 10, chart=chart)


def test_sample_chart_refuses_a_surface_name():
    with pytest.raises(TypeError, match="surface must be a"):
        mf.sample_chart("quintic", 10)


def test_a_lazy_point_set_with_an_empty_chunk_works_like_its_computed_self():
    """Filtering lazy z as the package's messages suggest left a 0-point chunk, on which
    linalg.metrics failed with numpy's 'cannot reshape array of size 0'."""
    z = mf.sample_points(X, 100, seed=3).z.data.rechunk(20)
    keep = np.ones(100, dtype=bool)
    keep[20:40] = False  # the whole second chunk
    zf = z[da.from_array(keep, chunks=20)]
    zf.compute_chunk_sizes()
    assert 0 in zf.chunks[0]
    lazy = mf.points_from_z(X, zf)
    eager = mf.points_from_z(X, zf.compute())
    assert mf.sigma_measure(lazy) == pytest.approx(mf.sigma_measure(eager), rel=1e-14)
    assert linalg.metrics(np.zeros((0, 3, 3), dtype=complex)).n == 0
    assert linalg.hermitian_det(np.zeros((0, 3, 3), dtype=complex)).shape == (0,)


def test_hermitian_det_refuses_what_is_not_a_stack_of_square_matrices():
    """Shape (2, 3, 2) returned two numbers."""
    for bad in (np.ones((2, 3, 2)), np.ones(3), np.ones((2, 0, 0))):
        with pytest.raises(ValueError, match="square"):
            linalg.hermitian_det(bad)


def test_express_in_chart_refuses_a_chart_where_the_metric_is_lost_to_rounding():
    """In chart (1, 4), point 780 of seed 11 got g_fs with a negative eigenvalue (cond ~ 1e16) and
    det g_FS 2x too large, silently shifting sigma; the refusal named it 'singular'."""
    ds = mf.sample_points(X, 1000, seed=11).compute()
    with pytest.raises(ValueError, match="ill-conditioned"):
        mf.express_in_chart(ds, 1, 4)


def test_eta_refuses_weights_sigma_refuses():
    ds = mf.sample_points(X, 50, seed=1).compute()
    assert mf.eta(ds.isel(point=[])).shape == (0,)  # an empty set has an empty eta
    with pytest.raises(ValueError, match="weight"):
        mf.eta(ds.assign(weight=ds.weight * 0)).values
    with pytest.raises(ValueError, match="weight"):
        mf.eta(ds.assign(weight=-ds.weight)).values


def test_surface_names_take_an_argument_only_where_they_have_one():
    with pytest.raises(ValueError, match="k3"):
        mf.geometry.surface_named("k3:5")
    with pytest.raises(TypeError, match="psi"):
        mf.dwork_quintic(None)
