"""The paper's study as one pipeline (issue 11): configuration, stages and report.

    config   StudyConfig (frozen dataclasses per section), TOML in and out
    run      run_study: the stages (tuning, gains, noise, spacing, figure2, and when enabled
             feature_learning and kernel_evolution), each a Zarr store, resumed on rerun
    report   report.md + PNGs

``mfarray run`` (:mod:`mfarray.cli`) is this package's command line.
"""

from .config import DEFAULT_TOML, StudyConfig, load_config
from .run import run_study

__all__ = ["DEFAULT_TOML", "StudyConfig", "load_config", "run_study"]
