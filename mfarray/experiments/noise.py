"""Figure 3 left, the noise study (paper §3.2): test gain against distance from the train set.

The paper's test points are its train points plus Gaussian noise of growing variance, so that
the test set moves continuously from "the train set" (noise 0: the train gain, ~1e6 for the
Gaussian and Delta kernels) to "points far from every train point" (gain ~1 at mean shortest
FS distance ~1).  Noised points are off X, where Omega is not defined; two variants are kept:

    paper      the noised points themselves, with |Omega|^2, g_FS and the weights evaluated off
               X by the chart formulas (flagged: on_surface = False, approximate = True;
               mfarray.pointset.offsurface.points_in_chart)
    projected  the noised points moved back onto X by Newton steps along the normal
               (mfarray.geometry.projection.project_to_hypersurface); points that do not
               converge are dropped and counted (projection_failed)

Both variants are computed in the train chart; the few points where it is numerically singular
(at noise ~1, z_patch ~ 0) are dropped and counted (``chart_failed``).

Noise convention (one choice, recorded in the attribute ``noise``): every train point's stored
homogeneous coordinates z (the affine representative of the train chart, z_patch = 1, all
|z_i| <= 1) get z + scale * xi, with xi complex, Re xi_i and Im xi_i independent standard normal
(so each real feature Re z_i, Im z_i, the paper's NTK inputs, gets Gaussian noise of standard
deviation ``scale``; E|xi|^2 = 2 (n+1)).  The patch coordinate is noised too; the noised point
is then rescaled to z_patch = 1 in the train chart.  ONE draw xi is used for every scale (common
random numbers: the curves are smooth in scale, and scale 0 is the train points themselves, their
geometry recomputed to rounding).  The draw comes from ``SeedSequence(seed, spawn_key=(NOISE_STREAM,))``.

Two distances per test set (both FS geodesic, eq. 3.2, means over the test points): to the
nearest train point (the paper's axis; it saturates near the typical spacing of the train set,
Figure 3 right) and to the point's own unnoised source (grows with the noise up to ~1.1, so only
this axis reaches the paper's distance 1).

The flow runs once per kernel, on the train set alone; every test set is then scored with
:func:`mfarray.predict` (the dual form g = g_FS - Theta(test, train) A, 2.12), so the flow does
not depend on the test sets.  gain = sigma(g_FS) / sigma(g_flowed) (B.11) on the test points,
with their weights and |Omega|^2, as :func:`mfarray.evaluate` defines it for the train set.
Far from the train set a predicted metric g_FS - Theta A need not be positive definite (the
update learnt at a train point overshoots g_FS at a test point where g_FS differs): such points
are counted (``invalid_fraction``) and left out of that kernel's test sigmas, never scored as
metrics.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from .. import backend
from ..flows import evaluate, kernel_flow, predict
from ..flows.evaluate import sigma_of
from ..flows.frozen import kernel_spec
from ..kernels import kernel_named
from ..geometry.distance import nearest
from ..geometry.local import chart_geometry
from ..geometry.projection import (
    DEFAULT_STEPS,
    DEFAULT_TOL,
    fs_distance_rows,
    project_to_hypersurface,
)
from ..pointset.charts import surface_of
from ..pointset.offsurface import points_in_chart
from ..pointset.provenance import describe, format_call, json_attrs, provenance

__all__ = ["DEFAULT_SCALES", "NOISE_DOCS", "NOISE_STREAM", "VARIANTS", "noise_draw", "noise_study", "noised_points"]

VARIANTS = ("paper", "projected")

#: 8 scales from 1e-4 to 1, log spaced (the paper's Figure 3 left spans distances ~1e-3 .. 1)
DEFAULT_SCALES: tuple[float, ...] = tuple(float(s) for s in np.logspace(-4, 0, 8))

SINGULAR_TOL = 1e-10  # points_in_chart's default: relative gradient below this is a critical point of p

NOISE_STREAM = 0x4E4F4953  # "NOIS": the noise draw never shares a random stream with sampling or split

NOISE_CONVENTION = (
    "z_test = z + scale * xi at every train point, z its stored homogeneous coordinates (z_patch = 1 in the train "
    "chart), xi complex with Re xi_i, Im xi_i independent standard normal (each real feature Re z_i, Im z_i gets "
    "N(0, scale^2) noise, the patch coordinate included); one draw xi for every scale, from "
    "SeedSequence(seed, spawn_key=(NOISE_STREAM,)); the noised point is rescaled to z_patch = 1 in the train chart")

_VARIANT_TEXT = {
    "paper": "the noised points themselves, off X: |Omega|^2, g_FS and weights are the chart formulas evaluated off X "
             "(on_surface = False, approximate = True), as in the paper",
    "projected": "the noised points moved back onto X by Newton steps along the normal (geometry.projection); points "
                 "that do not converge are dropped (projection_failed)",
}

NOISE_DOCS: dict[str, dict[str, str]] = {
    "kernel": {"description": "the kernel of the flow: its name and bound hyper-parameters (attribute kernels holds "
                              "each kernel's full record)"},
    "variant": {"description": "how the noised test points are made: " + "; ".join(
        f"{k}: {v}" for k, v in _VARIANT_TEXT.items())},
    "scale": {"description": "noise scale: standard deviation of the Gaussian noise on each real and imaginary part "
                             "of the train points' homogeneous coordinates (attribute noise)",
              "convention": "0 is the train set itself"},
    "gain_test": {"description": "sigma_test_initial / sigma_test_final: how many times the flow, predicted at the "
                                 "noised test points (mfarray.predict), reduced sigma (B.11) there; over the points "
                                 "whose predicted metric is valid (see invalid_fraction)",
                  "convention": "> 1 is an improvement; inf where the final sigma is 0"},
    "sigma_test_initial": {"description": "sigma measure (B.11) of g_FS at the noised test points whose predicted "
                                          "metric is valid, with their weights and |Omega|^2 (approximate for the "
                                          "paper variant)",
                           "convention": "E_w[|1 - eta|], kappa (B.10) from the same points"},
    "sigma_test_final": {"description": "sigma measure (B.11) of the flow's metrics predicted at the noised test "
                                        "points (mfarray.predict), where they are valid",
                         "convention": "E_w[|1 - eta|], kappa (B.10) from the same points"},
    "invalid_fraction": {"description": "fraction of the test points where the predicted metric g_FS - Theta A is "
                                        "not a valid metric (not positive definite, mfarray.linalg): left out of the "
                                        "test sigmas and gain",
                         "convention": "in [0, 1]; 0 near the train set"},
    "gain_train": {"description": "sigma_train_initial / sigma_train_final of the flow on the train set "
                                  "(mfarray.evaluate): the gain at scale 0"},
    "sigma_train_initial": {"description": "sigma measure (B.11) of g_FS on the train set"},
    "sigma_train_final": {"description": "sigma measure (B.11) of the flowed metrics on the train set"},
    "steps_done": {"description": "flow steps done on the train set (of attribute steps)"},
    "distance_to_train": {"description": "mean over the test points of the FS geodesic distance (3.2) to the nearest "
                                         "train point: the paper's axis of Figure 3 left",
                          "convention": "radians, in [0, pi/2]; saturates near the train set's typical spacing"},
    "distance_to_source": {"description": "mean over the test points of the FS geodesic distance (3.2) to the train "
                                          "point it was made from (its unnoised source)",
                           "convention": "radians, in [0, pi/2]"},
    "residual_test": {"description": "mean relative residual |p(z)| / sum_k |c_k z^m_k| of the test points: how far "
                                     "off X they are",
                      "convention": "~1e-16 on X (projected variant), order 1 for random points of P^n"},
    "n_test": {"description": "number of test points scored (the train size, less the points that failed to "
                              "project or where the train chart is singular)"},
    "chart_failed": {"description": "fraction of the noised (or projected) points dropped because the train chart is "
                                    "numerically singular there (z_patch ~ 0 or dp/dz_elim ~ 0: |Omega|^2, g_FS or "
                                    "det g_FS not finite and positive, or p critical)",
                     "convention": "in [0, 1]; 0 except at large noise"},
    "on_surface": {"description": "whether the variant's test points lie on X (their |Omega|^2 and pull-backs are "
                                  "those of X)"},
    "approximate": {"description": "whether the variant's |Omega|^2, g_FS and weights are chart formulas evaluated "
                                   "off X (the paper's variant)"},
    "projection_failed": {"description": "fraction of the noised points whose Newton projection onto X did not "
                                         "converge (dropped from the projected variant)",
                          "convention": "in [0, 1]"},
    "projection_distance": {"description": "mean FS geodesic distance (3.2) the projection moved the noised points "
                                           "(those that converged)",
                            "convention": "radians"},
}


# ----------------------------------------------------------------------- inputs
def _check_train(train: Any) -> tuple[xr.Dataset, tuple[int, int]]:
    if not isinstance(train, xr.Dataset):
        raise TypeError(f"train must be a point set in one chart (an xarray.Dataset from mfarray.select_chart); "
                        f"got {type(train).__name__}")
    missing = [v for v in ("z", "patch", "elim", "g_fs", "weight", "omega2") if v not in train]
    if missing:
        raise ValueError(f"train is not a point set on a Calabi-Yau hypersurface: it has no {missing} "
                         "(make it with mfarray.sample_points and mfarray.select_chart)")
    if train.sizes.get("point", 0) < 1:
        raise ValueError("train holds no points")
    train = train.compute()
    pairs = np.unique(np.stack([train["patch"].values, train["elim"].values], axis=1), axis=0)
    if len(pairs) != 1:
        raise ValueError(f"train must be in one chart (mfarray.select_chart); its points are in {len(pairs)} charts")
    return train, (int(pairs[0][0]), int(pairs[0][1]))


def _check_scales(scales: Any) -> np.ndarray:
    try:
        values = np.asarray(scales, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"scales must be a sequence of noise scales (real numbers >= 0); got {scales!r}") from None
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"scales must be a non-empty 1-D sequence of noise scales >= 0; got {scales!r}")
    if not (np.all(np.isfinite(values)) and np.all(values >= 0)):
        raise ValueError(f"scales must be finite real numbers >= 0; got {values.tolist()}")
    if len(np.unique(values)) != values.size:
        raise ValueError(f"scales must be distinct (they index the scale dimension); got {values.tolist()}")
    return values


def _check_variants(variants: Any) -> tuple[str, ...]:
    if isinstance(variants, str):
        variants = (variants,)
    try:
        out = tuple(variants)
    except TypeError:
        raise ValueError(f"variants must be a sequence of {VARIANTS}; got {variants!r}") from None
    bad = [v for v in out if v not in VARIANTS]
    if not out or bad or len(set(out)) != len(out):
        raise ValueError(f"variants must be distinct names among {VARIANTS}; got {variants!r}")
    return out


def _check_seed(seed: Any) -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer (it seeds the noise draw); got {seed!r}")
    return int(seed)


def _kernel_label(spec: Any) -> str:
    record = spec.describe()
    hyper = ", ".join(f"{k}={v!r}" for k, v in record["hyper"].items())
    extra = f" rescaled x{len(record['factors'])}" if record["factors"] else ""
    return f"{record['name']}({hyper}){extra}"


def _check_kernels(kernels: Any) -> list[tuple[str, Any, Any]]:
    """[(label, spec, kernel as given)]: a kernel, a name, a sequence of them or {label: kernel}."""
    if isinstance(kernels, Mapping):
        items = [(str(label), k) for label, k in kernels.items()]
    elif isinstance(kernels, (str,)) or callable(kernels):
        items = [(None, kernels)]
    else:
        try:
            items = [(None, k) for k in kernels]
        except TypeError:
            raise ValueError(f"kernels must be a kernel spec, a kernel name, a sequence of them or a dict "
                             f"{{label: kernel}}; got {type(kernels).__name__}") from None
    if not items:
        raise ValueError("kernels is empty: give at least one kernel")
    out = []
    for label, k in items:
        k = kernel_named(k, "kernels entries") if isinstance(k, str) else k
        if not callable(k):
            raise ValueError(f"kernels: {k!r} is not a kernel (a spec from mfarray.kernels, a partial of one, or a "
                             "name such as 'delta')")
        try:
            spec = kernel_spec(k)
        except TypeError as exc:
            raise ValueError(f"kernels: {exc}") from None
        out.append((label or _kernel_label(spec), spec, k))
    labels = [label for label, _, _ in out]
    if len(set(labels)) != len(labels):
        raise ValueError(f"kernels must be distinct (they index the kernel dimension); got {labels}: pass a dict "
                         "{label: kernel} to name them")
    return out


# ------------------------------------------------------------------------ noise
def noise_draw(n_points: int, n_ambient: int, seed: int) -> np.ndarray:
    """The standard noise xi (n_points, n_ambient) complex128: Re and Im independent N(0, 1),
    from ``SeedSequence(seed, spawn_key=(NOISE_STREAM,))``."""
    for name, v in (("n_points", n_points), ("n_ambient", n_ambient)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer; got {v!r}")
    rng = np.random.default_rng(np.random.SeedSequence(_check_seed(seed), spawn_key=(NOISE_STREAM,)))
    re = rng.standard_normal((n_points, n_ambient))
    im = rng.standard_normal((n_points, n_ambient))
    return re + 1j * im


def noised_points(train: xr.Dataset, scale: float, *, variant: str = "paper", seed: int = 0,
                  projection: Mapping[str, Any] | None = None) -> tuple[xr.Dataset, dict[str, float]]:
    """One test set of the study: (point set, info) for the train set noised at ``scale``.

    ``variant="paper"``: the noised points, off X, flagged (``on_surface`` False, ``approximate``
    True); ``"projected"``: moved back onto X (``projection``: keywords of
    :func:`~mfarray.geometry.projection.project_to_hypersurface`), the points that fail to
    converge dropped.  Both in the train chart (points where it is numerically singular
    dropped), with the train points' ``point`` index (the source of each test point) and a
    ``source_z`` variable (the unnoised source).  info: ``chart_failed`` (fraction dropped for
    the chart) and, for the projected variant, ``projection_failed`` (fraction) and
    ``projection_distance`` (mean FS distance moved; NaN where nothing converged).  Noise
    convention: the module docstring.
    """
    train, chart = _check_train(train)
    scale = float(_check_scales([scale])[0])
    (variant,) = _check_variants(variant)
    return _noised(train, chart, scale, variant, noise_draw(train.sizes["point"], train.sizes["ambient"], seed),
                   dict(projection or {}))


def _chart_usable(surface: Any, z: np.ndarray, chart: tuple[int, int]) -> np.ndarray:
    """(N,) bool: the train chart is usable at z, the test of points_in_chart (finite |Omega|^2,
    g_FS and det g_FS > 0; not a critical point of p)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        geo = chart_geometry(surface, z, patch=chart[0], elim=chart[1])
        grad = surface.relative_gradient(geo.z, geo.dp)
    finite = [np.all(np.isfinite(backend.per_row(a)), axis=1) for a in (geo.z, geo.omega2, geo.g_fs)]
    return finite[0] & finite[1] & finite[2] & np.isfinite(geo.det_g_fs) & (geo.det_g_fs > 0) & (grad >= SINGULAR_TOL)


def _noised(train, chart, scale, variant, xi, projection):
    surface = surface_of(train)
    z0 = train["z"].values
    point = train["point"].values
    zn = z0 + scale * xi if scale > 0 else z0.copy()
    info: dict[str, float] = {}
    if variant == "paper":
        keep = np.ones(zn.shape[0], dtype=bool)
        z, on_surface = zn, False
    else:
        options = {"steps": DEFAULT_STEPS, "tol": DEFAULT_TOL, **projection, "strict": False}
        proj = project_to_hypersurface(surface, zn, **options)
        keep = np.asarray(proj.converged)
        z, on_surface = proj.z, True
        info["projection_failed"] = float(1.0 - keep.mean())
        info["projection_distance"] = float(np.mean(fs_distance_rows(zn[keep], z[keep]))) if keep.any() else np.nan
    usable = np.zeros_like(keep)
    usable[keep] = _chart_usable(surface, z[keep], chart)
    info["chart_failed"] = float(np.mean(keep & ~usable))
    keep &= usable
    if not keep.any():
        raise ValueError(f"no {variant} test point at scale {scale:g} is usable (projected onto X and in a regular "
                         "train chart): pass smaller scales or more projection steps (projection={'steps': ...})")
    ds = points_in_chart(surface, z[keep], patch=chart[0], elim=chart[1], on_surface=on_surface, point=point[keep],
                         singular_tol=SINGULAR_TOL, attrs={"noise_scale": scale, "noise_variant": variant})
    ds["source_z"] = (("point", "ambient"), z0[keep])
    ds["source_z"].attrs = {"description": "homogeneous coordinates of the train point this test point was made from "
                                           "(its unnoised source)", "convention": "as the train set's z"}
    return ds, info


# ------------------------------------------------------------------------ study
def noise_study(train: xr.Dataset, kernels: Any, *, scales: Sequence[float] = DEFAULT_SCALES, steps: int = 300,
                variants: Sequence[str] = VARIANTS, seed: int = 0, flow_options: Mapping[str, Any] | None = None,
                projection: Mapping[str, Any] | None = None,
                progress: Callable[[str], Any] | None = None) -> xr.Dataset:
    """The noise study of Figure 3 left as a Dataset with dims (kernel, variant, scale).

    Parameters
    ----------
    train : a point set in one chart (``mfarray.select_chart``), lazy or computed, on a
        Calabi-Yau hypersurface.
    kernels : a kernel spec (``functools.partial(mfarray.kernels.gaussian_fs, sigma=0.05,
        squared=True)``, ``mfarray.kernels.relu_ntk``), a name of one in ``mfarray.kernels``
        (``"delta"``), a sequence of these, or ``{label: kernel}``.  Default labels: the name
        and bound hyper-parameters.
    scales : noise scales >= 0, distinct (default 8 from 1e-4 to 1, log spaced); the noise
        convention is in the module docstring and the attribute ``noise``.
    steps : flow steps on the train set (``mfarray.kernel_flow``), once per kernel.
    variants : ``"paper"`` (noised points off X, formulas evaluated there, flagged
        approximate) and/or ``"projected"`` (noised points projected back onto X).
    seed : the noise draw (one draw for every scale).
    flow_options : further keywords of :func:`mfarray.kernel_flow` (``lr``, ``loss``,
        ``method`` ...); ``train``, ``kernel``, ``steps`` and ``test`` are this function's.
    projection : keywords of :func:`~mfarray.geometry.projection.project_to_hypersurface`
        (``steps``, ``tol``, ``polish``, ``max_move``).
    progress : called with a line of text after each flow and each test set (e.g. ``print``).

    Returns a Dataset (every variable described, :data:`NOISE_DOCS`): ``gain_test``,
    ``sigma_test_initial``, ``sigma_test_final``, ``invalid_fraction`` (kernel, variant, scale;
    far from the train set a predicted metric may not be positive definite: such points are
    counted in ``invalid_fraction`` and left out of that kernel's test sigmas);
    ``distance_to_train`` (mean shortest FS distance to the train set, the paper's axis),
    ``distance_to_source`` (mean FS distance to the point's unnoised source), ``residual_test``,
    ``n_test``, ``chart_failed`` (variant, scale); ``gain_train``, ``sigma_train_initial``,
    ``sigma_train_final``, ``steps_done`` (kernel); ``on_surface``, ``approximate`` (variant);
    with the projected variant ``projection_failed`` and ``projection_distance`` (scale).  Attributes: the settings (noise
    convention, seed, steps, scales, chart, kernels' records, flow and projection options, the
    surface), ``train_call`` and the provenance (``call``, versions).

    ValueError/TypeError naming the argument for a train set that is not a one-chart point set,
    unknown kernels or variants, negative, non-finite or repeated scales, a bad seed or steps, and
    options this function sets itself.
    """
    call = format_call("mfarray.experiments.noise.noise_study", train, kernels, scales=scales, steps=steps,
                       variants=variants, seed=seed, flow_options=flow_options, projection=projection)
    train, chart = _check_train(train)
    scales_ = _check_scales(scales)
    variants_ = _check_variants(variants)
    seed = _check_seed(seed)
    if isinstance(steps, (bool, np.bool_)) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive integer (flow steps on the train set); got {steps!r}")
    flow_options = dict(flow_options or {})
    clash = sorted({"train", "kernel", "steps", "test", "g0", "g0_test"} & set(flow_options))
    if clash:
        raise ValueError(f"flow_options must not set {clash}: noise_study runs the flow from g_FS on the train set "
                         "alone (pass steps= to noise_study)")
    projection = dict(projection or {})
    if "strict" in projection:
        raise ValueError("projection must not set 'strict': noise_study counts the points that fail to project")
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be a callable taking a line of text, or None; got {type(progress).__name__}")
    kernel_items = _check_kernels(kernels)
    surface = surface_of(train)
    train_z = train["z"].values
    xi = noise_draw(train.sizes["point"], train.sizes["ambient"], seed)

    shape = (len(variants_), len(scales_))
    d_train, d_source, residual = (np.full(shape, np.nan) for _ in range(3))
    n_test = np.zeros(shape, np.int64)
    chart_failed = np.full(shape, np.nan)
    failed = np.full(len(scales_), np.nan)
    moved = np.full(len(scales_), np.nan)
    tests: dict[tuple[int, int], xr.Dataset] = {}
    for j, scale in enumerate(scales_):
        for i, variant in enumerate(variants_):
            ds, info = _noised(train, chart, float(scale), variant, xi, projection)
            tests[i, j] = ds
            z = ds["z"].values
            d_train[i, j] = float(np.mean(nearest(z, train_z)[1]))
            d_source[i, j] = float(np.mean(fs_distance_rows(z, ds["source_z"].values)))
            residual[i, j] = float(np.mean(ds["residual"].values))
            n_test[i, j] = ds.sizes["point"]
            chart_failed[i, j] = info["chart_failed"]
            if variant == "projected":
                failed[j], moved[j] = info["projection_failed"], info["projection_distance"]
            if progress:
                progress(f"noise_study: test set {variant} at scale {scale:.3g}: {n_test[i, j]} points, "
                         f"distance to train {d_train[i, j]:.3g}, to source {d_source[i, j]:.3g}")

    nk = len(kernel_items)
    gain, sigma0, sigma1, invalid = (np.full((nk, *shape), np.nan) for _ in range(4))
    train_vars = {name: np.full(nk, np.nan) for name in ("gain_train", "sigma_train_initial", "sigma_train_final")}
    steps_done = np.zeros(nk, dtype=np.int64)
    records = []
    for a, (label, spec, kernel) in enumerate(kernel_items):
        result = kernel_flow(train, kernel, steps=int(steps), **flow_options)
        ev = evaluate(result)
        for name in train_vars:
            train_vars[name][a] = float(ev[name])
        steps_done[a] = int(result.attrs.get("steps_done", steps))
        records.append({"label": label, **spec.describe()})
        for (i, j), ds in tests.items():
            g, valid = _predict_valid(result, ds, kernel, flow_options.get("features"))
            invalid[a, i, j] = 1.0 - float(np.mean(valid))
            if not valid.any():
                continue
            omega2, weight = ds["omega2"].values[valid], ds["weight"].values[valid]
            s0 = sigma_of(ds["g_fs"].values[valid], omega2, weight, "g_fs")
            s1 = sigma_of(g[valid], omega2, weight, "the predicted metrics")
            sigma0[a, i, j], sigma1[a, i, j] = s0, s1
            gain[a, i, j] = s0 / s1 if s1 > 0 else np.inf
        if progress:
            progress(f"noise_study: {label}: train gain {train_vars['gain_train'][a]:.3g}, test gains "
                     + " ".join(f"{v:.3g}" for v in gain[a].ravel()))

    kv, vs = ("kernel", "variant", "scale"), ("variant", "scale")
    data = {
        "gain_test": (kv, gain), "sigma_test_initial": (kv, sigma0), "sigma_test_final": (kv, sigma1),
        "invalid_fraction": (kv, invalid),
        "distance_to_train": (vs, d_train), "distance_to_source": (vs, d_source), "residual_test": (vs, residual),
        "n_test": (vs, n_test), "chart_failed": (vs, chart_failed),
        **{name: (("kernel",), v) for name, v in train_vars.items()}, "steps_done": (("kernel",), steps_done),
        "on_surface": (("variant",), np.array([v == "projected" for v in variants_])),
        "approximate": (("variant",), np.array([v == "paper" for v in variants_])),
    }
    if "projected" in variants_:
        data.update(projection_failed=(("scale",), failed), projection_distance=(("scale",), moved))
    attrs = {
        "title": f"mfarray noise study (paper §3.2, Figure 3 left) on {surface.label}",
        **surface.to_attrs(), "n": int(surface.n), "degree": int(surface.degree),
        "chart": [int(chart[0]), int(chart[1])], "n_train": int(train.sizes["point"]),
        "noise": NOISE_CONVENTION, "noise_stream": NOISE_STREAM, "seed": seed, "steps": int(steps),
        "scales": [float(s) for s in scales_], "variants": list(variants_),
        "kernels": json.dumps(records), "flow_options": json.dumps(_json_safe(flow_options)),
        "projection": json.dumps(_json_safe({"steps": DEFAULT_STEPS, "tol": DEFAULT_TOL, **projection})),
        "gain": "sigma(g_FS) / sigma(g_flowed) (B.11) on the test points, the flowed metrics from mfarray.predict "
                "(the flow ran once per kernel on the train set alone)",
        "train_call": train.attrs.get("call", "unknown"), **provenance(call),
    }
    out = xr.Dataset(data, coords={"kernel": [label for label, _, _ in kernel_items], "variant": list(variants_),
                                   "scale": scales_}, attrs=json_attrs(attrs))
    return describe(out, NOISE_DOCS)


def _predict_valid(result: xr.Dataset, ds: xr.Dataset, kernel: Any,
                   features: Callable | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(g (N, k, k), valid (N,) bool): the flow's metrics predicted at ds (far from the train set
    the kernel's update can overshoot g_FS: those metrics are NaN and marked invalid)."""
    ds = ds[[v for v in ("z", "patch", "elim", "g_fs", "weight", "omega2") if v in ds]]  # what predict reads
    g = predict(result, ds, kernel=kernel, features=features, invalid="nan")
    return g.values, g.valid.values


def _json_safe(options: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in options.items():
        if isinstance(value, (bool, int, str, type(None))) or (isinstance(value, float) and math.isfinite(value)):
            out[str(key)] = value
        else:
            out[str(key)] = repr(value)
    return out
