"""The study's configuration: one frozen dataclass per section, read from TOML.

``mfarray run --print-config`` prints :data:`DEFAULT_TOML`, the built-in default (the Fermat
quintic, minutes on 2 cores); ``mfarray run --config study.toml`` reads a file of the same form,
where every key is optional and unknown keys are refused by name.  Each stage's section is
recorded in its stored Dataset, so a rerun with the same section resumes from the store and a
changed section recomputes that stage.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from collections.abc import Mapping
from typing import Any

__all__ = [
    "DEFAULT_TOML",
    "Compute",
    "FeatureLearning",
    "Figure2",
    "Gains",
    "Noise",
    "Spacing",
    "StudyConfig",
    "Tuning",
    "load_config",
    "to_toml",
]


def _known_kernels(names: tuple, section: str) -> None:
    from ..experiments.presets import PRESETS

    unknown = [k for k in names if not isinstance(k, str) or k not in PRESETS]
    if unknown or not names:
        raise ValueError(f"{section}.kernels must name presets among {sorted(PRESETS)}; got {list(names)}")


def _integers(obj: Any, section: str, **least: int) -> None:
    """Each named field an integer >= its least value (ValueError naming ``section.field``)."""
    for name, lo in least.items():
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ValueError(f"{section}.{name} must be an integer >= {lo}; got {value!r}")


def _increasing(values: tuple, what: str, least: int, kind: type | tuple = (int, float)) -> None:
    """``values`` an increasing list of at least ``least`` positive numbers of ``kind``."""
    ok = len(values) >= least and all(isinstance(v, kind) and not isinstance(v, bool) and 0 < v < float("inf")
                                      for v in values)
    if not ok or any(a >= b for a, b in zip(values, values[1:])):
        noun = "integers" if kind is int else "numbers"
        raise ValueError(f"{what} must be {'a non-empty' if least == 1 else 'an'} increasing list of "
                         f"{'' if least == 1 else f'at least {least} '}positive {noun}; got {list(values)}")


# what a tuning space may search besides the kernel's hyper-parameters: kernel_flow's step options
FLOW_PARAMETERS = ("lr", "loss", "adaptive", "normalize", "clip", "grow", "max_halvings")


def log_range(value: Any) -> bool:
    """Whether a tuning-space entry is a range ``[low, high]`` of two numbers (searched in log10),
    rather than a list of choices."""
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)


def _check_space(name: str, space: Any) -> None:
    """A preset's tuning space: known parameters, each [low, high] with 0 < low < high (searched
    in log10) or a list of choices."""
    from ..experiments.presets import PRESETS
    from ..kernels import kernel_named

    if name not in PRESETS:
        raise ValueError(f"tuning.spaces names no preset {name!r}; presets: {sorted(PRESETS)}")
    if not isinstance(space, Mapping):
        raise ValueError(f"tuning.spaces.{name} must be a table of parameter -> [low, high]; got {space!r}")
    known = (*kernel_named(PRESETS[name].kernel).domains, *FLOW_PARAMETERS)
    for key, value in space.items():
        if key not in known:
            raise ValueError(f"tuning.spaces.{name} has no parameter {key!r}; it searches {sorted(known)}")
        numeric = log_range(value)
        if numeric and not 0 < value[0] < value[1] < float("inf"):
            raise ValueError(f"tuning.spaces.{name}.{key} = {value}: a range [low, high] is searched in log10, so "
                             "it needs 0 < low < high")
        if not numeric and not (isinstance(value, (list, tuple)) and value):
            raise ValueError(f"tuning.spaces.{name}.{key} must be [low, high] or a non-empty list of choices; "
                             f"got {value!r}")


@dataclasses.dataclass(frozen=True)
class Gains:
    """Train/test gains of frozen-kernel flows: presets (``kernels``: Table 1's relu, gaussian,
    delta, and cosine) on ``n_test`` test points, ``steps`` per flow; ``cluster_size`` > 0
    clusters the train points (§3.1)."""

    kernels: tuple = ("relu", "gaussian", "delta", "cosine")
    n_test: int = 1000
    steps: int = 100
    cluster_size: int = 0

    def __post_init__(self) -> None:
        _known_kernels(self.kernels, "gains")
        _integers(self, "gains", n_test=1, steps=1, cluster_size=0)
        if self.cluster_size == 1:
            raise ValueError("gains.cluster_size must be 0 (no clustering) or at least 2 points per cluster; got 1")


@dataclasses.dataclass(frozen=True)
class Tuning:
    """Bayesian optimisation per kernel (mfarray.tune): ``init`` random + ``iterations`` guided
    evaluations on ``n_train``/``n_test`` points with ``steps``, fresh points per evaluation
    when ``fresh``; the tuned presets join the gains table.  ``spaces``: per Table 1 kernel,
    parameter -> [low, high] searched in log10 (or a list of choices)."""

    enabled: bool = True
    init: int = 3
    iterations: int = 5
    batch: int = 1
    n_train: int = 500
    n_test: int = 500
    steps: int = 30
    fresh: bool = True
    spaces: Mapping = dataclasses.field(default_factory=lambda: {
        "relu": {"sigma_w": [0.1, 10.0], "sigma_b": [0.01, 100.0], "lr": [0.01, 1.0]},
        "gaussian": {"sigma": [0.005, 30.0], "lr": [0.01, 1.0]},
        "delta": {"lr": [0.01, 1.0]},
        "cosine": {"sigma_w": [0.3, 30.0], "lr": [0.01, 1.0]},
    })

    def __post_init__(self) -> None:
        _integers(self, "tuning", init=0, iterations=0, batch=1, n_train=1, n_test=1, steps=1)
        if self.init + self.iterations < 1:
            raise ValueError("tuning.init + tuning.iterations must be at least 1 evaluation")
        if not isinstance(self.spaces, Mapping):
            raise ValueError(f"tuning.spaces must be a table of kernel -> parameter ranges; got {self.spaces!r}")
        for name, space in self.spaces.items():
            _check_space(name, space)


@dataclasses.dataclass(frozen=True)
class Noise:
    """Figure 3 left: test = train + complex Gaussian noise of each ``scale``, both variants
    (off X as in the paper, and projected back onto X); each kernel's tuned preset where
    ``tuned`` and the tuning ran, else Table 1's."""

    enabled: bool = True
    kernels: tuple = ("relu", "gaussian", "delta")
    tuned: bool = True

    def __post_init__(self) -> None:
        _known_kernels(self.kernels, "noise")
        _integers(self, "noise", n_train=2, steps=1)
        _increasing(self.scales, "noise.scales", 1)

    n_train: int = 1000
    steps: int = 100
    scales: tuple = (1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


@dataclasses.dataclass(frozen=True)
class Spacing:
    """Figure 3 right: nearest-train FS distance of ``n_test`` test points against N = ``sizes``."""

    enabled: bool = True
    sizes: tuple = (100, 300, 1000, 3000, 10000)
    n_test: int = 1000

    def __post_init__(self) -> None:  # the report fits a power law: 3 sizes at least
        _increasing(self.sizes, "spacing.sizes", 3, int)
        _integers(self, "spacing", n_test=1)


@dataclasses.dataclass(frozen=True)
class Figure2:
    """Figure 2: distance matrices of ``n`` points, ``clusters`` clusters, ``batches`` batches."""

    enabled: bool = True
    n: int = 1000
    clusters: int = 10
    batches: int = 5

    def __post_init__(self) -> None:
        _integers(self, "figure2", n=2, clusters=1, batches=1)
        if self.clusters > self.n // self.batches:
            raise ValueError(f"figure2: each of the {self.batches} batches of {self.n // self.batches} points must "
                             f"hold {self.clusters} clusters; raise figure2.n or lower clusters / batches")
        from ..cluster.figure import size_for_clusters

        try:
            size_for_clusters(self.n, self.clusters)
        except ValueError as exc:
            raise ValueError(f"figure2: {exc}") from None


@dataclasses.dataclass(frozen=True)
class FeatureLearning:
    """Issue 13 (off by default): every model on one train/test split, and the kernel distance per width.

    The split: ``n_train`` / ``n_test`` one-chart points (and as many all-chart points for the
    chart-free models where ``all_charts``).  The models (mfarray.experiments.comparison): g_FS,
    the gains kernels (tuned too where ``tuned`` and the tuning ran), the network's
    infinite-width, initial and after-kernels, the ``depth`` x ``network_widths`` network under
    Adam (``epochs``) and under the kernel flows' integrator (``flow_steps``), the phi-network
    (``phi_epochs``), its frozen empirical metric-NTK after training and at initialisation, and the
    phi-kernel (``kahler_degrees``; these three flow ``kahler_steps``).  The curves
    (experiments.feature_learning.kernel_evolution): 1 hidden ReLU layer per width in ``widths``,
    SGD for ``width_epochs``, the kernel measured on the first ``n_probe`` test points.  At the
    defaults the two stages took 26 s on 2 quiet cores, and the phi-network's two frozen kernels add
    26 s more (benchmarks/bench_model_comparison.py runs the comparison at 5000 points).
    """

    enabled: bool = False
    n_train: int = 2000
    n_test: int = 1000
    all_charts: bool = True
    tuned: bool = True
    epochs: int = 20
    flow_steps: int = 100
    depth: int = 3
    network_widths: tuple = (64,)
    phi_epochs: int = 20
    kahler_degrees: tuple = (3,)
    kahler_steps: int = 30
    widths: tuple = (64, 256, 1024)
    width_epochs: int = 5
    n_probe: int = 200

    def __post_init__(self) -> None:
        _integers(self, "feature_learning", n_train=2, n_test=2, epochs=1, flow_steps=0, depth=1, phi_epochs=1,
                  kahler_steps=0, width_epochs=1, n_probe=2)
        for name, least in (("network_widths", 1), ("kahler_degrees", 0), ("widths", 2)):
            values = getattr(self, name)
            if len(values) < least or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
                raise ValueError(f"feature_learning.{name} must be a list of at least {least} positive integers; "
                                 f"got {list(values)}")
        if self.n_probe > self.n_test:
            raise ValueError(f"feature_learning.n_probe = {self.n_probe} must be at most n_test = {self.n_test} (the "
                             f"probe is the first n_probe test points)")


@dataclasses.dataclass(frozen=True)
class Compute:
    """Where it runs: ``scheduler`` a dask.distributed address ("" = threads here, or
    MFARRAY_SCHEDULER); ``gpu`` (not yet: the study runs on NumPy, true is refused)."""

    scheduler: str = ""
    gpu: bool = False

    def __post_init__(self) -> None:
        from ..backend import _parse_address

        _parse_address(self.scheduler, "compute.scheduler")


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """The whole study: the surface (``quintic``, ``dwork:0.5``, ``k3``, ...), the seed and one
    section per stage."""

    surface: str = "quintic"
    seed: int = 0
    gains: Gains = Gains()
    tuning: Tuning = Tuning()
    noise: Noise = Noise()
    spacing: Spacing = Spacing()
    figure2: Figure2 = Figure2()
    feature_learning: FeatureLearning = FeatureLearning()
    compute: Compute = Compute()

    def __post_init__(self) -> None:
        from ..geometry import surface_named

        if not isinstance(self.surface, str):
            raise ValueError(f"surface must be a string such as 'quintic' or 'dwork:0.5'; got {self.surface!r}")
        try:
            surface_named(self.surface)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"surface = {self.surface!r}: {exc}") from None
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be an integer in [0, 2**32 - 1] (the tuner's range); got {self.seed!r}")

    def section(self, name: str) -> dict:
        """A stage's settings with the study-wide ones, as JSON-ready data (what its store records)."""
        return {"surface": self.surface, "seed": self.seed, name: _plain(getattr(self, name))}

    def to_dict(self) -> dict:
        return _plain(self)


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _build(cls: type, data: Mapping, where: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in [{where}] of the study config; known: {sorted(fields)}")
    default = cls()
    values = {}
    for name, value in data.items():
        current = getattr(default, name)
        if cls is Tuning and name == "spaces" and isinstance(value, Mapping):  # per kernel over the defaults
            value = {**current, **value}
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ValueError(f"[{name}] of the study config must be a table; got {value!r}")
            values[name] = _build(type(current), value, name)
        elif isinstance(current, tuple):
            if not isinstance(value, list):
                raise ValueError(f"{where}.{name} must be a list; got {value!r}")
            values[name] = tuple(value)
        elif isinstance(current, bool):
            if not isinstance(value, bool):
                raise ValueError(f"{where}.{name} must be true or false; got {value!r}")
            values[name] = value
        elif isinstance(current, (int, float)) and not isinstance(current, bool):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                    isinstance(current, int) and not isinstance(value, int)):
                raise ValueError(f"{where}.{name} must be {'an integer' if isinstance(current, int) else 'a number'}; "
                                 f"got {value!r}")
            values[name] = value
        else:
            values[name] = value
    return cls(**values)


def load_config(source: str | Mapping | None = None) -> StudyConfig:
    """The study config from a TOML file path, a mapping, or None (the default)."""
    if source is None:
        return StudyConfig()
    if isinstance(source, Mapping):
        data = source
    else:
        with open(source, "rb") as f:
            try:
                data = tomllib.load(f)
            except tomllib.TOMLDecodeError as exc:
                raise ValueError(f"the study config {str(source)!r} is not valid TOML: {exc}") from None
    return _build(StudyConfig, data, "study")


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {v!r} as TOML")


def to_toml(config: StudyConfig) -> str:
    """The config as TOML text that :func:`load_config` reads back to an equal config."""
    data = config.to_dict()
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for section, values in data.items():
        if not isinstance(values, dict):
            continue
        doc = (type(getattr(config, section)).__doc__ or "").split("\n\n")[0]
        lines += ["", "# " + " ".join(doc.replace("``", "").split()), f"[{section}]"]
        for k, v in values.items():
            if isinstance(v, dict) and all(isinstance(x, dict) for x in v.values()):
                for sub, table in v.items():
                    lines.append(f"{k}.{sub} = {_toml_value(table)}")
            else:
                lines.append(f"{k} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"


DEFAULT_TOML = to_toml(StudyConfig())
