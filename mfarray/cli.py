"""The ``mfarray`` command line (typer: typed options, help text and errors for free)."""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from . import backend
from .io.location import is_url, locate

if TYPE_CHECKING:
    from .geometry import Hypersurface

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Metric flows with neural networks on Calabi-Yau hypersurfaces.")


def parse_surface(spec: str) -> Hypersurface:
    """'quintic' | 'cubic' | 'k3' | 'fermat:N' | 'dwork:PSI' -> Hypersurface (a usage error otherwise)."""
    from .geometry import surface_named

    try:
        return surface_named(spec)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def check_sampleable(X: Hypersurface) -> None:
    """A usage error for ``--surface`` unless a few points of ``X`` can be sampled (a curve in
    P^1 is a set of points; a high-degree Fermat surface defeats the sampler's Newton steps),
    before anything is written."""
    from . import pointset

    try:
        pointset.sample_points(X, 64, seed=0).z.values
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--surface") from None


def sample_command(*, n: int, seed: int, out: str | os.PathLike, surface: str, chunk_size: int) -> str:
    """The ``mfarray sample`` command line with every option that shapes the store spelt out
    (defaults included), as recorded in its ``command`` attribute: running it again writes the
    same store.  ``--overwrite`` is left out (it changes what may be replaced, not the data), so
    a run resuming an interrupted store with ``--overwrite`` writes the same attributes."""
    argv = ["mfarray", "sample", "--n", str(n), "--seed", str(seed), "--out", os.fspath(out),
            "--surface", surface, "--chunk-size", str(chunk_size)]
    return shlex.join(argv)


def _options(command: object) -> dict[str, str] | None:
    """The options of a recorded ``mfarray sample`` command ({'--n': '300', ...}), None if it is not one."""
    try:
        argv = shlex.split(command) if isinstance(command, str) else []
    except ValueError:
        return None
    if argv[:2] != ["mfarray", "sample"] or len(argv) % 2:
        return None
    return dict(zip(argv[2::2], argv[3::2]))


def _differing(stored: object, ours: str) -> list[str] | None:
    """The options (--out aside: it names the store being resumed, however spelt) of the
    recorded command ``stored`` that ``ours`` sets otherwise, as '--seed 3' (stored) and
    '--seed 5' (ours) pairs; None when ``stored`` is not a recorded ``mfarray sample`` command."""
    theirs, mine = _options(stored), _options(ours)
    if theirs is None or mine is None:
        return None
    keys = sorted((theirs.keys() | mine.keys()) - {"--out"})
    return [f"{k} {theirs.get(k, '(unset)')} (this run: {k} {mine.get(k, '(unset)')})"
            for k in keys if theirs.get(k) != mine.get(k)]


SCHEDULER_HELP = ("Dask scheduler for the lazy computations: tcp://host:8786 (a running dask scheduler), "
                  "'local' (a LocalCluster, one worker process per core), a number of local worker processes, "
                  "or 'threads'; default $MFARRAY_SCHEDULER, else threads (docs/distributed.md)")


def use_scheduler_option(scheduler: str | None) -> backend.Scheduler:
    """``backend.use_scheduler`` for a ``--scheduler`` option (None: ``MFARRAY_SCHEDULER``), its
    errors turned into a usage error naming the option or the variable.  Use it as a context
    manager around the command's work (a LocalCluster it starts is closed at the end)."""
    try:
        return backend.use_scheduler(scheduler)
    except (ValueError, ImportError, ConnectionError) as exc:  # the message names MFARRAY_SCHEDULER if it was that
        raise typer.BadParameter(str(exc), param_hint="--scheduler" if scheduler is not None else None) from None


@app.callback()
def main() -> None:
    """mfarray commands."""


@app.command()
def sample(
    n: int = typer.Option(100_000, "--n", min=1, help="number of points"),
    seed: int = typer.Option(0, min=0, help="random seed (same seed, same points)"),
    out: str = typer.Option("points.zarr", help="output Zarr store: a path or an fsspec URL (memory://, s3://, ...)"),
    surface: str = typer.Option("quintic", help="quintic | cubic | k3 | fermat:N | dwork:PSI"),
    chunk_size: int = typer.Option(50_000, min=1, help="points per Dask chunk (memory per task)"),
    overwrite: bool = typer.Option(False, help="replace an existing point-set store written by mfarray "
                                                "(anything else at --out is refused)"),
    scheduler: str | None = typer.Option(None, help=SCHEDULER_HELP),
) -> None:
    """Sample Shiffman-Zelditch points with weights and g_FS, write them to a Zarr store.

    ``--overwrite`` replaces only a point-set store that mfarray wrote; a file, a directory
    that is not such a store (e.g. ``--out .``) or another kind of store is refused.  Running
    the same command again after an interruption resumes the store from the chunks it had
    written (the result equals an uninterrupted run), whatever the spelling of ``--out``
    (relative, absolute, from another folder); on the complete store it wrote, it has nothing to
    do and says so (exit status 0).  The store
    records this command (attribute ``command``, every option spelt out) besides the Python
    call (``call``) and the other attributes of ``mfarray.sample_points``.  ``--scheduler`` (or
    ``MFARRAY_SCHEDULER``) runs the chunks on a dask.distributed cluster (the same store; not
    recorded in ``command``, like ``--overwrite``); ``--out`` must then be a path or URL every
    worker can write to."""
    from . import io

    X = parse_surface(surface)
    try:  # a URL whose protocol fsspec does not know, or whose driver is not installed (s3fs ...)
        locate(out)
    except (ImportError, ValueError) as exc:
        raise typer.BadParameter(f"{out}: {exc}", param_hint="--out") from None
    check_sampleable(X)
    if overwrite:  # --overwrite replaces only a point-set store mfarray wrote (checked before sampling)
        try:
            io.check_replaceable(out, "pointset")
        except FileExistsError as exc:
            raise typer.BadParameter(str(exc), param_hint="--out") from None
    with use_scheduler_option(scheduler) as sched:
        if sched.client is not None:
            typer.echo(f"scheduler {sched.address} ({len(sched.client.scheduler_info()['workers'])} workers)")
        _sample(X, n=n, seed=seed, out=out, surface=surface, chunk_size=chunk_size, overwrite=overwrite)


def _sample(X: Hypersurface, *, n: int, seed: int, out: str, surface: str, chunk_size: int,
            overwrite: bool) -> None:
    from . import io, pointset
    from .io.location import followed
    from .io.marks import root_attrs

    try:
        ds = pointset.sample_points(X, n, seed=seed, chunk_size=chunk_size)
    except ValueError as exc:  # n, chunk_size out of range: the message names the argument
        hint = "--chunk-size" if "chunk_size" in str(exc) else "--n"
        raise typer.BadParameter(str(exc), param_hint=hint) from None
    ds.attrs["command"] = sample_command(n=n, seed=seed, out=out, surface=surface, chunk_size=chunk_size)
    stored = root_attrs(followed(locate(out))) or {}
    differ = _differing(stored.get("command"), ds.attrs["command"])
    if differ == []:  # the store this command started, --out spelt otherwise: keep its record
        ds.attrs["command"] = stored["command"]
    if not overwrite and io.holds(out, ds):
        typer.echo(f"{out} already holds these {n} points (a complete store of this command): nothing to do")
        return _summary(X, io.open_zarr(out))
    typer.echo(f"sampling {n} points on {X.label} (seed {seed}, chunks of {chunk_size}) -> {out}")
    start = time.perf_counter()
    try:  # an interrupted store of this same command resumes; anything else at --out is refused
        io.to_zarr(ds, out, overwrite=overwrite, progress=True)
    except FileExistsError as exc:
        why = str(exc).replace("overwrite=True", "--overwrite")
        if differ:
            why += f"; the store there was written by `{stored['command']}`: it differs in {'; '.join(differ)}"
        raise typer.BadParameter(why, param_hint="--out") from None
    elapsed = time.perf_counter() - start
    typer.echo(f"wrote {n} points in {elapsed:.1f} s ({n / elapsed:,.0f} points/s)")
    _summary(X, io.open_zarr(out))


def _summary(X: Hypersurface, stored) -> None:
    from . import pointset

    counts = pointset.chart_counts(stored)
    best = max(counts, key=counts.get)
    typer.echo(f"charts used: {len(counts)}; most populated (patch, elim) = {best} with {counts[best]} points")
    if X.is_calabi_yau:
        typer.echo(f"sigma of the Fubini-Study metric (B.11): {pointset.sigma_measure(stored):.4f}")


@app.command()
def run(
    config: Path | None = typer.Option(None, "--config", help="a study.toml (see --print-config); default: the built-in study"),
    out: str = typer.Option("mfarray-study", help="output folder (local): a Zarr store per stage, report.md and PNGs"),
    print_config: bool = typer.Option(False, "--print-config", help="print the default config (TOML) and exit"),
    scheduler: str | None = typer.Option(None, help=SCHEDULER_HELP + "; overrides [compute] scheduler"),
) -> None:
    """Run the paper's study (§3): tuning, train/test gains of the Table 1 kernels and tuned ones,
    the noise study (Figure 3 left), the distance scaling (Figure 3 right) and Figure 2, into
    --out with a Markdown report.

    With no options: the built-in study on the Fermat quintic (a few minutes on 2 cores).  Rerun
    with the same config after an interruption, it resumes from the stages already stored; a
    changed section recomputes only its stage."""
    import dataclasses

    from . import study

    if print_config:
        typer.echo(study.DEFAULT_TOML, nl=False)
        return
    if is_url(out):
        raise typer.BadParameter(f"{out} is a URL; the study writes a local folder (stores, report.md, figures): "
                                 f"pass a local folder, then copy it", param_hint="--out")
    try:
        cfg = study.load_config(config)
    except (ValueError, OSError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--config") from None
    if scheduler is not None:
        use_scheduler_option(scheduler).close()  # a usage error now, not after the first stages
        cfg = dataclasses.replace(cfg, compute=dataclasses.replace(cfg.compute, scheduler=scheduler))
    typer.echo(f"mfarray run: {cfg.surface}, seed {cfg.seed} -> {out}")
    start = time.perf_counter()
    try:
        results = study.run_study(cfg, out, progress=True)
    except FileExistsError as exc:
        raise typer.BadParameter(str(exc), param_hint="--out") from None
    typer.echo(f"done in {time.perf_counter() - start:.0f} s; report: {results['report']}")


if __name__ == "__main__":  # pragma: no cover
    app()
