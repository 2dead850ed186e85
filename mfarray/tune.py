"""Bayesian optimisation of kernel and flow hyper-parameters (paper §3.2, Table 1).

The paper tuned its kernels with Bayesian optimisation and saw the optimiser overfit the one
point set it was tuned on (§3.2).  :func:`tune` runs bayesian-optimization 3.x in its ask/tell
form (``suggest`` / ``register``): each evaluation is one pipeline run, a batch of them runs as
Dask tasks (on the threaded scheduler or a ``dask.distributed`` client), and the state is saved
after every batch so an interrupted tuning resumes where it stopped, suggesting exactly what an
uninterrupted one would have.

Search spaces are mappings of names to :class:`Dim` (:func:`real`, :func:`integer`,
:func:`choice`); ``log=True`` searches log10 of a positive parameter.  The objective is any
``objective(params, seed) -> float | {"target": float, ...}`` to maximise; ``seed`` is the
evaluation's own (``SeedSequence([seed, i])``), so an objective that draws a fresh point set for
every evaluation (``GainObjective(fresh=True)``) never sees the same points twice.
:class:`GainObjective` is the paper's: log10 of the test gain sigma_FS / sigma_flowed of a
frozen-kernel flow, with the kernel's hyper-parameters and the flow's (``lr``, ``steps``,
``loss``, ...) taken from ``params`` by name.  After tuning, the best parameters are scored
once more on a point set never seen during tuning (``objective.holdout``), which is the number
to report.

An evaluation that fails (a :class:`~mfarray.flows.FlowError`, kernel values that are not
finite, a non-finite target) is recorded
as failed with target NaN; the optimiser is told a penalty below every finite target seen so far
(it needs a number), and the record says so (``registered``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import xarray as xr

from . import backend
from .flows import FlowError, evaluate, kernel_flow
from .geometry import Hypersurface, fermat_quintic
from .kernels import Kernel, NonFiniteKernelError, as_kernel, kernel_named
from .pointset import sample_chart
from .pointset.provenance import format_call, provenance

__all__ = ["Dim", "real", "integer", "choice", "as_space", "tune", "best_params", "GainObjective", "KERNELS",
           "named_kernel"]

#: the kernels a study may name (``GainObjective(kernel="relu_ntk")``, ``study.toml``)
KERNELS = ("relu_ntk", "gaussian_fs", "delta", "cosine_ntk", "gaussnet_ntk")

HOLDOUT_STREAM = 0x484F4C44  # "HOLD": the holdout set's seed never equals an evaluation's


@dataclasses.dataclass(frozen=True)
class Dim:
    """One search dimension: a real interval [low, high] (searched in log10 when ``log``), an
    integer range, or a tuple of choices."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple = ()

    def __post_init__(self) -> None:
        if self.choices:
            if self.low is not None or self.high is not None or self.log or self.integer:
                raise ValueError("a Dim of choices has no low/high/log/integer")
            if len(set(self.choices)) != len(self.choices):
                raise ValueError(f"choices must be distinct; got {self.choices!r}")
            return
        for name in ("low", "high"):
            v = getattr(self, name)
            if not backend.is_real(v) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number; got {v!r}")
            if isinstance(v, np.generic):  # NumPy scalars as Python numbers (JSON, equality)
                object.__setattr__(self, name, v.item())
        if not self.low < self.high:
            raise ValueError(f"low must be below high; got low={self.low!r}, high={self.high!r}")
        if self.log and self.low <= 0:
            raise ValueError(f"log=True searches log10 of a positive parameter; got low={self.low!r}")
        if self.integer and (self.log or self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError(f"an integer Dim needs integer low and high and no log; got {self!r}")

    def bounds(self) -> tuple:
        """What bayes_opt searches: (low, high), (low, high, int) or the choices."""
        if self.choices:
            return tuple(self.choices)
        if self.integer:
            return (int(self.low), int(self.high), int)
        return (math.log10(self.low), math.log10(self.high)) if self.log else (float(self.low), float(self.high))

    def value(self, x: Any) -> Any:
        """The parameter for bayes_opt's coordinate ``x``."""
        if self.choices:
            return x
        if self.integer:
            return int(x)
        return float(10.0 ** float(x)) if self.log else float(x)

    def coordinate(self, value: Any) -> Any:
        """bayes_opt's coordinate of a parameter value (inverse of :meth:`value`)."""
        if self.choices or self.integer:
            return value
        return math.log10(value) if self.log else float(value)

    def to_json(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, False, ())}


def real(low: float, high: float, *, log: bool = False) -> Dim:
    """A real parameter in [low, high]; ``log=True`` searches its log10 (widths, rates)."""
    return Dim(low, high, log=log)


def integer(low: int, high: int) -> Dim:
    """An integer parameter in [low, high] (depth, steps)."""
    return Dim(low, high, integer=True)


def choice(*values: Any) -> Dim:
    """A parameter taking one of ``values`` (a loss name)."""
    return Dim(choices=tuple(values))


def as_space(space: Mapping[str, Any]) -> dict[str, Dim]:
    """A search space from Dims, ``(low, high)`` pairs, ``{"low":, "high":, "log":}`` tables (as
    in study.toml) or lists of choices."""
    if not isinstance(space, Mapping) or not space:
        raise ValueError(f"space must be a non-empty mapping of parameter names to ranges; got {space!r}")
    out = {}
    for name, d in space.items():
        if isinstance(d, Dim):
            out[name] = d
        elif isinstance(d, Mapping):
            out[name] = Dim(**d)
        elif isinstance(d, tuple) and len(d) == 2 and all(backend.is_real(v) for v in d):
            out[name] = integer(*d) if all(backend.is_real(v, integer=True) for v in d) else real(*d)
        elif isinstance(d, (list, tuple)):
            out[name] = choice(*d)
        else:
            raise TypeError(f"space[{name!r}] must be a Dim, a (low, high) pair, a table or a list of choices; got {d!r}")
    return out


# ----------------------------------------------------------------------------- tuning


def tune(objective: Callable[[dict, int], Any], space: Mapping[str, Any], *, init: int = 5, iterations: int = 20,
         batch: int = 1, seed: int = 0, state: str | os.PathLike | None = None, holdout: bool = True,
         progress: bool = False) -> xr.Dataset:
    """Maximise ``objective(params, seed)`` over ``space`` by Bayesian optimisation.

    ``init`` random evaluations, then ``iterations`` suggested by the Gaussian-process model
    (upper confidence bound), ``batch`` at a time as parallel Dask tasks (a batch of suggestions
    from the constant-liar strategy).  ``state``: a JSON file written atomically after every
    batch; if it exists, tuning resumes from it (the same space, seed and objective -- its
    ``describe()``, where it has one -- are required) and continues to ``init + iterations``
    evaluations.  ``holdout``: score the best parameters once more with
    ``objective.holdout(params)`` where the objective has one (a point set never seen during
    tuning).

    Returns a Dataset with dim ``evaluation``: one variable per parameter, ``target``, the
    objective's other numbers, ``seconds``, ``failed``, ``error``, ``registered`` (what the
    optimiser was told) and ``seed``; attrs: the space, the best parameters and target, the
    holdout score (``holdout_*``), provenance.
    """
    import dask
    from bayes_opt import BayesianOptimization, acquisition

    space = as_space(space)
    for name, value in (("init", init), ("iterations", iterations), ("batch", batch), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (1 if name == "batch" else 0):
            raise ValueError(f"{name} must be an integer >= {1 if name == 'batch' else 0}; got {value!r}")
    if init + iterations < 1:
        raise ValueError("init + iterations must be at least 1 evaluation")
    base = acquisition.UpperConfidenceBound(kappa=2.576)
    acq = acquisition.ConstantLiar(base) if batch > 1 else base
    with warnings.catch_warnings():  # integer and choice dimensions: bayes_opt 3 calls them experimental
        warnings.filterwarnings("ignore", "Non-float parameters", UserWarning)
        opt = BayesianOptimization(None, {k: d.bounds() for k, d in space.items()}, acquisition_function=acq,
                                   random_state=seed, verbose=0, allow_duplicate_points=True)
    records: list[dict] = []
    if state is not None and os.path.exists(state):
        records = _load(state, space, opt, _about(objective, seed))
    total = init + iterations
    while len(records) < total:
        k = min(batch, total - len(records))
        if len(records) < init:
            k = min(k, init - len(records))
            coords = opt.random_sample(k)
        else:
            coords = [opt.suggest() for _ in range(k)]
        params = [{n: space[n].value(c[n]) for n in space} for c in coords]
        seeds = [_evaluation_seed(seed, len(records) + i) for i in range(k)]
        tasks = [dask.delayed(_evaluate, pure=False)(objective, p, s) for p, s in zip(params, seeds)]
        for p, c, s, out in zip(params, coords, seeds, dask.compute(*tasks)):
            finite = [r["target"] for r in records if not r["failed"]]
            failed = out["failed"]
            told = out["target"] if not failed else _penalty(finite)
            opt.register(c, target=told)
            records.append({"params": p, "seed": s, "registered": told, **out})
            if progress:
                print(f"tune {len(records)}/{total}: {p} -> {out['target']:.4g}{' (failed)' if failed else ''}",
                      flush=True)
        if state is not None:
            _save(state, space, opt, records, _about(objective, seed))
    return _dataset(objective, space, records, seed, holdout, init, iterations, batch)


def best_params(tuned: xr.Dataset) -> dict:
    """The best parameters of a :func:`tune` result; ValueError where no evaluation succeeded."""
    attrs = getattr(tuned, "attrs", {})
    if "best_params" in attrs:
        return json.loads(attrs["best_params"])
    if isinstance(tuned, xr.Dataset) and "objective" in attrs and "failed" in tuned and "error" in tuned:
        errors = tuned["error"].values
        raise ValueError(
            f"no evaluation of this tuning succeeded ({errors.size} failed), so it has no best parameters: "
            f"its `error` variable says why each failed (the first: {str(errors[0]) if errors.size else 'none'}); "
            "tune again over another space, or fix the objective")
    raise ValueError(f"tuned must be a result of mfarray.tune.tune (with attrs['best_params']); "
                     f"got {type(tuned).__name__} without one")


def _evaluation_seed(seed: int, i: int) -> int:
    return int(np.random.SeedSequence([int(seed), i]).generate_state(1)[0])


def _penalty(finite: list[float]) -> float:
    if not finite:
        return -1.0
    lo, hi = min(finite), max(finite)
    return lo - max(hi - lo, 1.0)


def _evaluate(objective: Callable, params: dict, seed: int) -> dict:
    t = time.perf_counter()
    try:
        out = objective(dict(params), seed)
        if not isinstance(out, Mapping):
            out = {"target": out}
        out = {k: float(v) for k, v in out.items()}
        if "target" not in out:
            raise ValueError(f"the objective returned {sorted(out)} without a 'target'")
        if not math.isfinite(out["target"]):
            raise FloatingPointError(f"the objective returned target = {out['target']}")
        return {**out, "failed": False, "error": "", "seconds": time.perf_counter() - t}
    except (FlowError, NonFiniteKernelError, ArithmeticError) as e:  # the parameters' fault, not the caller's
        return {"target": math.nan, "failed": True, "error": f"{type(e).__name__}: {e}",
                "seconds": time.perf_counter() - t}


def _space_json(space: Mapping[str, Dim]) -> dict:
    return {k: d.to_json() for k, d in space.items()}


def _about(objective: Callable, seed: int) -> dict:
    """What a state's records depend on besides the space: the objective (its ``describe()``,
    where it has one) and the seed the evaluation seeds come from."""
    describe = getattr(objective, "describe", None)
    return {"objective": describe() if callable(describe) else None, "seed": int(seed)}


def _save(path: str | os.PathLike, space: Mapping[str, Dim], opt: Any, records: list[dict], about: dict) -> None:
    """Write the optimiser's and our records atomically (a crash leaves the previous state)."""
    folder = os.path.dirname(os.path.abspath(path))
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        inner = os.path.join(tmp, "optimizer.json")
        opt.save_state(inner)
        with open(inner) as f:
            optimizer = json.load(f)
        doc = {"mfarray_tune": 1, "space": _space_json(space), **about, "records": records, "optimizer": optimizer}
        out = os.path.join(tmp, "state.json")
        with open(out, "w") as f:
            json.dump(doc, f, default=_json_default)
        os.replace(out, path)


def _load(path: str | os.PathLike, space: Mapping[str, Dim], opt: Any, about: dict) -> list[dict]:
    with open(path) as f:
        doc = json.load(f)
    if doc.get("mfarray_tune") != 1:
        raise ValueError(f"state={str(path)!r} is not an mfarray tuning state; pass another path")
    if doc["space"] != _space_json(space):
        raise ValueError(f"state={str(path)!r} was tuned over another space ({doc['space']}); "
                         "pass a new state path or the same space")
    for key, value in about.items():  # states written before these were recorded have neither
        if key in doc and doc[key] != value:
            raise ValueError(f"state={str(path)!r} was tuned with another {key} ({doc[key]!r}; now {value!r}): "
                             f"its evaluations do not score this one; pass a new state path or the same {key}")
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(path))) as tmp:
        inner = os.path.join(tmp, "optimizer.json")
        with open(inner, "w") as f:
            json.dump(doc["optimizer"], f)
        opt.load_state(inner)
    records = doc["records"]
    for r in records:
        if r["target"] is None:
            r["target"] = math.nan
    return records


def _json_default(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"{type(v).__name__} is not JSON")


def _dataset(objective: Callable, space: Mapping[str, Dim], records: list[dict], seed: int, holdout: bool,
             init: int, iterations: int, batch: int) -> xr.Dataset:
    n = len(records)
    data: dict[str, Any] = {}
    for name, d in space.items():
        values = [r["params"][name] for r in records]
        data[name] = ("evaluation", np.array(values, dtype=object if d.choices and not all(
            isinstance(v, (int, float)) for v in d.choices) else None))
    extra = sorted({k for r in records for k in r} - {"params", "seed", "registered", "failed", "error", "seconds"})
    for k in extra:
        data[k] = ("evaluation", np.array([r.get(k, math.nan) for r in records], dtype=float))
    data["seconds"] = ("evaluation", np.array([r["seconds"] for r in records], dtype=float))
    data["failed"] = ("evaluation", np.array([r["failed"] for r in records], dtype=bool))
    data["error"] = ("evaluation", np.array([r["error"] for r in records], dtype=str))
    data["registered"] = ("evaluation", np.array([r["registered"] for r in records], dtype=float))
    data["seed"] = ("evaluation", np.array([r["seed"] for r in records], dtype=np.int64))
    ds = xr.Dataset(data, coords={"evaluation": np.arange(n)})
    docs = {"target": "the objective's value (maximised); NaN where the evaluation failed",
            "seconds": "wall time of the evaluation", "failed": "True where the evaluation raised or was not finite",
            "error": "the error of a failed evaluation", "seed": "the seed the objective was given",
            "registered": "what the optimiser was told: the target, or for a failure a penalty below every "
                          "finite target seen before it"}
    for name in space:
        docs[name] = f"the parameter {name} of the evaluation ({space[name].to_json()})"
    for k in extra:
        docs.setdefault(k, f"the objective's {k}")
    for k, text in docs.items():
        ds[k].attrs["description"] = text
    ok = [r for r in records if not r["failed"]]
    attrs = {"space": json.dumps(_space_json(space)), "init": init, "iterations": iterations, "batch": batch,
             "seed": seed, "objective": getattr(objective, "describe", lambda: repr(objective))(),
             **provenance(format_call("mfarray.tune", objective, init=init, iterations=iterations, seed=seed))}
    if ok:
        best = max(ok, key=lambda r: r["target"])
        attrs["best_params"] = json.dumps(best["params"], default=_json_default)
        attrs["best_target"] = best["target"]
        if holdout and hasattr(objective, "holdout"):
            for k, v in objective.holdout(best["params"]).items():
                attrs[f"holdout_{k}"] = float(v)
    ds.attrs.update(attrs)
    return ds


# ----------------------------------------------------------------------------- the paper's objective


def named_kernel(name: str | Kernel | Callable) -> Kernel:
    """A kernel spec by name (:data:`KERNELS`), or the given kernel as a spec."""
    if isinstance(name, str):
        if name not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS} or a kernel spec; got {name!r}")
        return kernel_named(name)
    return as_kernel(name)


@dataclasses.dataclass(frozen=True)
class GainObjective:
    """log10 of the test gain of a frozen-kernel flow, the paper's tuning target (§3.2).

    ``params`` are split by name: the kernel's hyper-parameters (its declared domains) bind
    the kernel, the rest (``lr``, ``steps``, ``loss``, ``adaptive``, ...) go to
    :func:`~mfarray.flows.kernel_flow` over ``flow`` defaults.  Points: one-chart sets of
    ``n_train`` and ``n_test`` points (:func:`~mfarray.pointset.sample_chart`) drawn with
    ``points_seed``, the same for every evaluation, or with the evaluation's seed when
    ``fresh``; :meth:`holdout` scores on a set drawn with a seed no evaluation gets.
    """

    kernel: Any = "gaussian_fs"
    surface: Hypersurface = dataclasses.field(default_factory=fermat_quintic)
    n_train: int = 500
    n_test: int = 500
    fresh: bool = False
    points_seed: int = 0
    flow: Mapping = dataclasses.field(default_factory=lambda: {"steps": 50})
    fixed: Mapping = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "flow", dict(self.flow))
        object.__setattr__(self, "fixed", dict(self.fixed))
        named_kernel(self.kernel)

    def describe(self) -> str:
        """What the score depends on: the kernel with its bound hyper-parameters (and rescalings),
        the flow settings, the points."""
        spec = named_kernel(self.kernel).describe()
        name = self.kernel if isinstance(self.kernel, str) else spec["name"]
        if spec["hyper"]:
            name += "(" + ", ".join(f"{k}={v!r}" for k, v in spec["hyper"].items()) + ")"
        if spec["factors"]:
            name += f" rescaled by {[f['name'] for f in spec['factors']]}"
        return (f"log10 test gain of kernel_flow({name}, {self.flow}, fixed {self.fixed}) on {self.n_train} train / "
                f"{self.n_test} test one-chart points of {self.surface.label}, "
                f"{'fresh points per evaluation' if self.fresh else f'one set (seed {self.points_seed})'}")

    def __call__(self, params: dict, seed: int) -> dict:
        return self.score(params, seed if self.fresh else self.points_seed)

    def holdout(self, params: dict) -> dict:
        """The score of ``params`` on point sets no evaluation used."""
        return self.score(params, int(np.random.SeedSequence([self.points_seed, HOLDOUT_STREAM]).generate_state(1)[0]))

    def score(self, params: dict, points_seed: int) -> dict:
        """Flow on the sets drawn with ``points_seed``; log10 test gain and the numbers behind it."""
        spec = named_kernel(self.kernel)
        values = {**self.fixed, **params}
        hyper = {k: v for k, v in values.items() if k in spec.domains}
        flow = {**self.flow, **{k: v for k, v in values.items() if k not in spec.domains}}
        if "steps" in flow:
            flow["steps"] = int(flow["steps"])
        pts = sample_chart(self.surface, self.n_train + self.n_test, seed=points_seed).compute()
        train, test = pts.isel(point=slice(0, self.n_train)), pts.isel(point=slice(self.n_train, None))
        result = kernel_flow(train, spec.bind(**hyper) if hyper else spec, test=test, **flow)
        ev = evaluate(result)
        gain_test = float(ev.gain_test)
        return {"target": math.log10(gain_test) if gain_test > 0 else -math.inf, "gain_train": float(ev.gain_train),
                "gain_test": gain_test, "sigma_test_final": float(ev.sigma_test_final),
                "sigma_train_final": float(ev.sigma_train_final)}

