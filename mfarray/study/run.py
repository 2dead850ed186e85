"""The study pipeline behind ``mfarray run``: stages, each a Dataset in a Zarr store, resumable.

Stages, in order (each enabled by its config section, :mod:`.config`)::

    tuning    Bayesian optimisation per Table 1 kernel (mfarray.tune), state saved per batch
    gains     train/test gains of the Table 1 presets and of the tuned ones (experiments.gains)
    noise     Figure 3 left (experiments.noise)
    spacing   Figure 3 right (experiments.spacing)
    figure2   Figure 2's distance matrices (mfarray.cluster.figure2_data)
    feature_learning   issue 13 (off by default): every model on one split
              (experiments.comparison.model_comparison)
    kernel_evolution   issue 13: the kernel distance per width
              (experiments.feature_learning.kernel_evolution)

then the report (:mod:`.report`).  Each stage writes ``<out>/<stage>.zarr`` with its record in
the attrs (``study_section``): its config section and what it takes from elsewhere (the kernels
it tunes, the presets it flows, tuned ones included); a rerun reads every complete store whose
record matches and recomputes the others, so an interrupted run resumes (a stage's store is
refused on open while incomplete, :func:`mfarray.open_zarr`, and rewritten) and a changed
tuning reaches every stage that flows its presets.  Tuning states (``tuning-<kernel>-<key>.json``)
are keyed by space, objective and seed: a longer tuning resumes one, a changed one starts anew.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable
from typing import Any

import xarray as xr

from .. import backend, io
from ..cluster import figure2_data
from ..experiments import presets as P
from ..experiments.gains import gains
from ..geometry import surface_named
from ..pointset import sample_chart, sample_points
from ..tune import GainObjective, as_space, real, tune
from .config import StudyConfig, log_range

__all__ = ["STAGES", "run_study", "stage_path"]

STAGES = ("tuning", "gains", "noise", "spacing", "figure2", "feature_learning", "kernel_evolution")


def stage_path(out: str | os.PathLike, stage: str) -> str:
    """Where a stage's Dataset is stored."""
    return os.path.join(os.fspath(out), f"{stage}.zarr")


def _space(config: StudyConfig, name: str) -> dict:
    space = {}
    for k, v in config.tuning.spaces.get(name, {}).items():
        if log_range(v):
            space[k] = real(float(v[0]), float(v[1]), log=True)
        else:
            space[k] = v
    return as_space(space)


def _tuning_state(out: str, name: str, space: dict, objective: GainObjective, seed: int) -> str:
    """The kernel's tuning state file, one per (space, objective, seed): a changed config starts
    a new file (``tune`` refuses another's), a longer one (``init``, ``iterations``) resumes it."""
    key = json.dumps({"space": {k: d.to_json() for k, d in space.items()}, "objective": objective.describe(),
                      "seed": seed}, sort_keys=True)
    return os.path.join(out, f"tuning-{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.json")


def _tuning(config: StudyConfig, out: str, progress: bool) -> xr.Dataset:
    t = config.tuning
    parts = []
    for name in config.gains.kernels:
        base = P.PRESETS[name]
        space = _space(config, name)
        fixed = {k: v for k, v in base.hyper.items() if k not in space}
        flow = {"steps": t.steps, "lr": base.lr, "loss": base.loss}
        objective = GainObjective(base.kernel, surface=surface_named(config.surface), n_train=t.n_train,
                                  n_test=t.n_test, fresh=t.fresh, points_seed=config.seed, flow=flow, fixed=fixed)
        state = _tuning_state(out, name, space, objective, config.seed)
        ds = tune(objective, space, init=t.init, iterations=t.iterations, batch=t.batch, seed=config.seed,
                  state=state, progress=progress)
        keep = [v for v in ds.data_vars if v not in space]
        part = ds[keep].expand_dims(kernel=[name])
        part["best_params"] = ("kernel", [ds.attrs.get("best_params", "{}")])
        part["best_params"].attrs["description"] = "the best parameters found (JSON)"
        for key in ("holdout_gain_test", "holdout_gain_train"):
            part[key] = ("kernel", [ds.attrs.get(key, float("nan"))])
            part[key].attrs["description"] = f"{key[8:]} of the best parameters on points never used in tuning"
        parts.append(part)
    out_ds = xr.concat(parts, dim="kernel", join="outer")
    out_ds.attrs = {k: v for k, v in parts[0].attrs.items() if k in ("mfarray_version",)}
    return out_ds


def tuned_presets(config: StudyConfig, tuning: xr.Dataset | None) -> dict[str, P.Preset]:
    """The presets of the study's kernels (Table 1's and ``cosine``,
    :data:`~mfarray.experiments.presets.PRESETS`), plus ``<name>-tuned`` from the tuning stage."""
    out = {name: P.PRESETS[name].replace(steps=config.gains.steps) for name in config.gains.kernels}
    if tuning is not None:
        for name in config.gains.kernels:
            if name in tuning.kernel.values:
                best = json.loads(str(tuning.best_params.sel(kernel=name).values))
                if best:
                    out[f"{name}-tuned"] = out[name].replace(**best, source="mfarray.tune")
    return out


def _gains(config: StudyConfig, tuning: xr.Dataset | None, progress: bool) -> xr.Dataset:
    g = config.gains
    return gains(tuned_presets(config, tuning), surface=surface_named(config.surface), n_test=g.n_test,
                 seed=config.seed, cluster_size=g.cluster_size or None, progress=progress)


def _noise_presets(config: StudyConfig, tuning: xr.Dataset | None) -> dict[str, P.Preset]:
    """The preset the noise study flows per kernel: the tuned one where ``tuned`` and the tuning
    ran, else the gains stage's, else the preset's own."""
    n = config.noise
    presets = tuned_presets(config, tuning) if n.tuned else {}
    return {name: presets.get(f"{name}-tuned") or presets.get(name) or P.PRESETS[name].replace(steps=n.steps)
            for name in n.kernels}


def _noise(config: StudyConfig, tuning: xr.Dataset | None, progress: bool) -> xr.Dataset:
    from ..experiments.noise import noise_study

    n = config.noise
    train = sample_chart(surface_named(config.surface), n.n_train, seed=config.seed)
    parts = []
    for name, p in _noise_presets(config, tuning).items():
        parts.append(noise_study(train, {name: p.spec()}, scales=n.scales, steps=n.steps, seed=config.seed,
                                 flow_options={"lr": p.lr, "loss": p.loss}, progress=print if progress else None))
    by_kernel = [v for v in parts[0].data_vars if "kernel" in parts[0][v].dims]
    joined = xr.concat([part[by_kernel] for part in parts], dim="kernel", data_vars="all", coords="minimal",
                       join="exact", compat="override")
    out = parts[0].drop_vars([*by_kernel, "kernel"]).assign(joined.data_vars)
    out.attrs = parts[0].attrs
    return out


def _spacing(config: StudyConfig, progress: bool) -> xr.Dataset:
    from ..experiments.spacing import nearest_distance_scaling

    s = config.spacing
    return nearest_distance_scaling(surface_named(config.surface), sizes=s.sizes, n_test=s.n_test,
                                    seed=config.seed)


def _figure2(config: StudyConfig, progress: bool) -> xr.Dataset:
    f = config.figure2
    pts = sample_points(surface_named(config.surface), max(f.n, 2000), seed=config.seed)
    return figure2_data(pts, n=f.n, clusters=f.clusters, batches=f.batches, seed=config.seed)


def _feature_points(config: StudyConfig, all_charts: bool) -> tuple:
    """The feature-learning split: (train, test) one-chart points (sample_chart, the study's seed),
    and (train, test) all-chart points of the same sizes (sample_points, seed + 1) or (None, None)."""
    f = config.feature_learning
    surface = surface_named(config.surface)
    pts = sample_chart(surface, f.n_train + f.n_test, seed=config.seed).compute()
    train, test = pts.isel(point=slice(0, f.n_train)), pts.isel(point=slice(f.n_train, None))
    if not all_charts:
        return train, test, None, None
    every = sample_points(surface, f.n_train + f.n_test, seed=config.seed + 1).compute()
    return train, test, every.isel(point=slice(0, f.n_train)), every.isel(point=slice(f.n_train, None))


def _with_presets(section: dict, presets: dict[str, P.Preset]) -> dict:
    """A stage's record: its config section and the presets it flows (the tuned ones come from
    the tuning stage's results, not from the stage's own section)."""
    return {**section, "presets": {name: p.to_json() for name, p in presets.items()}}


_CURVE_KEYS = ("n_train", "n_test", "widths", "width_epochs", "n_probe")


def _comparison_record(config: StudyConfig, presets: dict) -> dict:
    """What the feature_learning stage depends on: its settings (not the curves') and the presets it flows."""
    f = config.section("feature_learning")
    f["feature_learning"] = {k: v for k, v in f["feature_learning"].items()
                             if k not in _CURVE_KEYS[2:] and k != "enabled"}
    flowed = {name: {k: v for k, v in p.to_json().items() if k not in ("steps", "n_train")}  # flow_steps, the split
              for name, p in presets.items()}
    return {**f, "presets": flowed}


def _curves_record(config: StudyConfig) -> dict:
    """What the kernel_evolution stage depends on."""
    f = config.section("feature_learning")
    f["feature_learning"] = {k: f["feature_learning"][k] for k in _CURVE_KEYS}
    return f


def _feature_learning(config: StudyConfig, points: Callable[[], tuple], presets: dict, progress: bool) -> xr.Dataset:
    from ..experiments.comparison import ComparisonSpec, model_comparison

    f = config.feature_learning
    train, test, train_all, test_all = points()
    spec = ComparisonSpec(flow_steps=f.flow_steps, depth=f.depth, widths=f.network_widths, epochs=f.epochs,
                          phi_epochs=f.phi_epochs, kahler_degrees=f.kahler_degrees, kahler_steps=f.kahler_steps,
                          seed=config.seed)
    return model_comparison(train, test, train_all=train_all, test_all=test_all, spec=spec, presets=presets,
                            progress=progress)


def _kernel_evolution(config: StudyConfig, points: Callable[[], tuple], progress: bool) -> xr.Dataset:
    from ..experiments.feature_learning import kernel_evolution

    f = config.feature_learning
    train, test, _, _ = points()
    return kernel_evolution(train, test.isel(point=slice(0, f.n_probe)), widths=f.widths, epochs=f.width_epochs,
                            test=test, seed=config.seed, progress=progress)


def _stage(name: str, config: StudyConfig, out: str, compute: Callable[[], xr.Dataset], progress: bool,
           timings: dict, record: dict | None = None) -> xr.Dataset:
    """The stage's stored Dataset if its record (default: its config section) matches, else computed and stored."""
    path = stage_path(out, name)
    section = json.dumps(config.section(name) if record is None else record, sort_keys=True)
    if os.path.exists(path):
        with contextlib.suppress(Exception):  # an incomplete or foreign store: recomputed below
            stored = io.open_zarr(path)
            if stored.attrs.get("study_section") == section:
                timings[name] = float(stored.attrs.get("study_seconds", float("nan")))
                if progress:
                    print(f"[{name}] resumed from {path}", flush=True)
                return stored
    if progress:
        print(f"[{name}] running ...", flush=True)
    t = time.perf_counter()
    ds = compute()
    seconds = time.perf_counter() - t
    ds.attrs.update({"study_section": section, "study_seconds": seconds})
    io.to_zarr(ds, path, overwrite=os.path.exists(path))
    timings[name] = seconds
    if progress:
        print(f"[{name}] done in {seconds:.1f} s -> {path}", flush=True)
    return io.open_zarr(path)


# the file that marks a folder as a study's: only such a folder (or an empty one) is written into
MARKER = ".mfarray-study"


def _written_by_a_study(out: str) -> bool:
    """Whether ``out`` (unmarked) is what an earlier version of the study wrote: at least one stage
    store that records a study section, and nothing but the study's own entries."""
    names = os.listdir(out)
    stores = [n for n in names if n.endswith(".zarr") and n[:-5] in STAGES]
    own = {*stores, "report.md", *(f"{stage}.png" for stage in STAGES)}
    if not stores or any(n not in own and not (n.startswith("tuning-") and n.endswith(".json")) for n in names):
        return False
    for name in stores:
        with contextlib.suppress(Exception):
            if "study_section" in io.open_zarr(os.path.join(out, name)).attrs:
                return True
    return False


def _claim(out: str) -> str:
    """``out`` as the study's folder: created, or empty, or marked by an earlier run; a folder of
    someone else's files is refused (FileExistsError) before anything is written there."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise FileExistsError(f"out={out!r} is a file; pass a folder for the study's stores and report")
    os.makedirs(out, exist_ok=True)
    marker = os.path.join(out, MARKER)
    if not os.path.exists(marker):
        theirs = [] if _written_by_a_study(out) else sorted(os.listdir(out))
        if theirs:
            raise FileExistsError(f"out={out!r} holds files that no mfarray study wrote ({', '.join(theirs[:4])}"
                                  f"{', ...' if len(theirs) > 4 else ''}): the study writes its stores, report.md "
                                  "and figures there, so pass a new or empty folder")
        with open(marker, "w") as fh:
            json.dump({"mfarray_study": 1}, fh)
    return out


def run_study(config: StudyConfig | None = None, out: str | os.PathLike = "mfarray-study", *,
              progress: bool = True) -> dict[str, Any]:
    """Run every enabled stage into ``out`` (created if missing), then write the report.

    ``out`` must be new, empty, or a folder an earlier run wrote (marked by ``.mfarray-study``):
    a folder of other files is refused before anything is written, so no file of the user's is
    replaced by a store, the report or a figure.

    Returns the stage Datasets by name and ``"report"``, the report's path.  Rerun with the same
    config, it reads what is stored and computes only what is missing or changed.
    """
    from .report import write_report

    config = StudyConfig() if config is None else config
    if config.compute.gpu:
        raise ValueError("[compute] gpu = true: the study's stages run on NumPy; running them on CuPy awaits a "
                         "tested device path (benchmarks/gpu_check.py checks the kernel operators); set gpu = false")
    out = _claim(os.fspath(out))
    timings: dict[str, float] = {}
    results: dict[str, Any] = {}
    with backend.use_scheduler(config.compute.scheduler or None):
        tuning = None
        if config.tuning.enabled:  # it tunes the gains section's kernels
            tuning = results["tuning"] = _stage(
                "tuning", config, out, lambda: _tuning(config, out, progress), progress, timings,
                record={**config.section("tuning"), "kernels": list(config.gains.kernels)})
        results["gains"] = _stage("gains", config, out, lambda: _gains(config, tuning, progress), progress, timings,
                                  record=_with_presets(config.section("gains"), tuned_presets(config, tuning)))
        if config.noise.enabled:
            results["noise"] = _stage("noise", config, out, lambda: _noise(config, tuning, progress), progress, timings,
                                      record=_with_presets(config.section("noise"), _noise_presets(config, tuning)))
        for name, fn in (("spacing", _spacing), ("figure2", _figure2)):
            if getattr(config, name).enabled:
                results[name] = _stage(name, config, out, lambda fn=fn: fn(config, progress), progress, timings)
        if config.feature_learning.enabled:
            f = config.feature_learning
            presets = tuned_presets(config, tuning if f.tuned else None)
            split: list = []  # the points, sampled once for both stages (when either runs)

            def points():
                if not split:
                    split.extend(_feature_points(config, f.all_charts))
                return tuple(split)

            results["feature_learning"] = _stage(
                "feature_learning", config, out, lambda: _feature_learning(config, points, presets, progress),
                progress, timings, record=_comparison_record(config, presets))
            results["kernel_evolution"] = _stage(
                "kernel_evolution", config, out, lambda: _kernel_evolution(config, points, progress), progress,
                timings, record=_curves_record(config))
    results["report"] = write_report(config, results, out, timings)
    if progress:
        print(f"report: {results['report']}", flush=True)
    return results
