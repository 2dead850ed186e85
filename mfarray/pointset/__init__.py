"""Point sets on X as xarray Datasets: construction, sampling, charts, subsets and measures.

A point set has dims ``point``, ``ambient`` (n+1), ``row``/``col`` (k = n-1), the coordinate

    point    (point,) int64            index of the point in the sample it was drawn from (0..N-1),
                                       kept by every stage (select_chart, split, isel, Zarr)

and variables

    z        (point, ambient) complex  homogeneous coordinates, patch coordinate scaled to 1
    patch    (point,) int              chart patch (index of the coordinate set to 1)
    elim     (point,) int              eliminated coordinate (largest |dp/dz_j|, j != patch)
    omega2   (point,) float            |Omega|^2 in the point's chart (Calabi-Yau X only)
    g_fs     (point, row, col) complex pulled-back Fubini-Study metric in the point's chart
    det_g_fs (point,) float
    weight   (point,) float            MC weight |Omega|^2/det g_FS, normalised to mean 1

each with ``attrs["description"]`` and, where there is one, ``attrs["convention"]``
(:data:`mfarray.pointset.provenance.POINTSET_DOCS`).  Attributes: the polynomial
(``Hypersurface.to_attrs``: monomials, real and imaginary coefficient lists), ``n``, ``degree``,
``chunk_size``, ``title``, ``call`` (the Python call that made the set), the versions of
mfarray, numpy, scipy, dask, xarray and zarr (:func:`mfarray.pointset.provenance.provenance`),
and for sampled sets ``seed`` and ``sampler``; the ``mfarray sample`` command adds ``command``.
:func:`select_chart` and :func:`express_in_chart` add ``chart`` = [patch, elim], :func:`split`
adds ``split``.  The per-point geometry always comes from
:func:`mfarray.geometry.local.chart_geometry`.

Lazy in, lazy out: every function taking a point set accepts it lazy (Dask: fresh from
:func:`sample_points`, from ``open_zarr`` or ``.persist()``) or computed, and metrics g as NumPy,
Dask or xarray DataArrays, in any mixture.  Results are lazy where an input is lazy, except
where a value must be known: the floats of :func:`kappa` / :func:`sigma_measure` and the point
index of :func:`select_chart`, each computed in one pass (``dask.compute`` of everything it
needs together), so nothing is computed twice.  Mixed inputs are converted once, where they
enter: computed arrays are chunked like the lazy ones.

Modules: ``construct`` (points_from_z, sample_points, mean-1 weights), ``charts``
(chart_counts, default_chart, select_chart, to_chart, express_in_chart), ``subsets`` (split, sample_chart),
``measures`` (det_metric, kappa, eta, sigma_measure), ``provenance`` (attributes and
descriptions shared with the flow results).
"""

from .charts import chart_counts, default_chart, express_in_chart, select_chart, surface_of, to_chart
from .construct import DEFAULT_CHUNK, MAX_CHUNKS, MAX_POINTS, mean_one, points_from_z, sample_points
from .measures import det_metric, eta, kappa, sigma_measure
from .provenance import versions
from .subsets import SPLIT_STREAM, sample_chart, split

__all__ = [
    "points_from_z", "sample_points", "mean_one", "chart_counts", "default_chart", "select_chart", "surface_of",
    "to_chart", "express_in_chart", "split", "sample_chart", "det_metric", "kappa", "eta", "sigma_measure", "versions",
    "DEFAULT_CHUNK", "MAX_POINTS", "MAX_CHUNKS", "SPLIT_STREAM",
]
