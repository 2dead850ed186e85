"""The ``mfarray`` command line (typer: typed options, help text and errors for free)."""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from .geometry import Hypersurface

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Metric flows with neural networks on Calabi-Yau hypersurfaces.")


def parse_surface(spec: str) -> Hypersurface:
    """'quintic' | 'cubic' | 'k3' | 'fermat:N' | 'dwork:PSI' -> Hypersurface."""
    from . import geometry

    name, _, arg = spec.partition(":")
    name = name.strip().lower().replace("-", "_")
    try:
        if name in ("quintic", "fermat_quintic"):
            return geometry.fermat_quintic()
        if name in ("cubic", "cubic_curve"):
            return geometry.cubic_curve()
        if name in ("k3", "quartic", "quartic_k3"):
            return geometry.quartic_k3()
        if name == "fermat":
            return geometry.fermat(int(arg))
        if name == "dwork":
            return geometry.dwork_quintic(complex(arg.replace(" ", "")))
    except ValueError as exc:
        raise typer.BadParameter(f"{spec!r}: {exc}") from None
    raise typer.BadParameter(
        f"unknown surface {spec!r}; use quintic, cubic, k3, fermat:N or dwork:PSI (e.g. dwork:0.5)"
    )


def sample_command(*, n: int, seed: int, out: str | os.PathLike, surface: str, chunk_size: int) -> str:
    """The ``mfarray sample`` command line with every option that shapes the store spelt out
    (defaults included), as recorded in its ``command`` attribute: running it again writes the
    same store.  ``--overwrite`` is left out (it changes what may be replaced, not the data), so
    a run resuming an interrupted store with ``--overwrite`` writes the same attributes."""
    argv = ["mfarray", "sample", "--n", str(n), "--seed", str(seed), "--out", os.fspath(out),
            "--surface", surface, "--chunk-size", str(chunk_size)]
    return shlex.join(argv)


@app.callback()
def main() -> None:
    """mfarray commands."""


@app.command()
def sample(
    n: int = typer.Option(100_000, "--n", min=1, help="number of points"),
    seed: int = typer.Option(0, min=0, help="random seed (same seed, same points)"),
    out: Path = typer.Option(Path("points.zarr"), help="output Zarr store"),
    surface: str = typer.Option("quintic", help="quintic | cubic | k3 | fermat:N | dwork:PSI"),
    chunk_size: int = typer.Option(50_000, min=1, help="points per Dask chunk (memory per task)"),
    overwrite: bool = typer.Option(False, help="replace an existing point-set store written by mfarray "
                                                "(anything else at --out is refused)"),
) -> None:
    """Sample Shiffman-Zelditch points with weights and g_FS, write them to a Zarr store.

    ``--overwrite`` replaces only a point-set store that mfarray wrote; a file, a directory
    that is not such a store (e.g. ``--out .``) or another kind of store is refused.  Running
    the same command again after an interruption resumes the store from the chunks it had
    written (the result equals an uninterrupted run); a complete store is left alone.  The store
    records this command (attribute ``command``, every option spelt out) besides the Python
    call (``call``) and the other attributes of ``mfarray.sample_points``."""
    from . import io, pointset

    X = parse_surface(surface)
    if overwrite:  # --overwrite replaces only a point-set store mfarray wrote (checked before sampling)
        try:
            io.check_replaceable(out, "pointset")
        except FileExistsError as exc:
            raise typer.BadParameter(str(exc), param_hint="--out") from None
    typer.echo(f"sampling {n} points on {X.label} (seed {seed}, chunks of {chunk_size}) -> {out}")
    start = time.perf_counter()
    ds = pointset.sample_points(X, n, seed=seed, chunk_size=chunk_size)
    ds.attrs["command"] = sample_command(n=n, seed=seed, out=out, surface=surface, chunk_size=chunk_size)
    try:  # an interrupted store of this same command resumes; anything else at --out is refused
        io.to_zarr(ds, out, overwrite=overwrite, progress=True)
    except FileExistsError as exc:
        raise typer.BadParameter(str(exc).replace("overwrite=True", "--overwrite"), param_hint="--out") from None
    elapsed = time.perf_counter() - start
    stored = io.open_zarr(out)
    typer.echo(f"wrote {n} points in {elapsed:.1f} s ({n / elapsed:,.0f} points/s)")
    counts = pointset.chart_counts(stored)
    best = max(counts, key=counts.get)
    typer.echo(f"charts used: {len(counts)}; most populated (patch, elim) = {best} with {counts[best]} points")
    if X.is_calabi_yau:
        typer.echo(f"sigma of the Fubini-Study metric (B.11): {pointset.sigma_measure(stored):.4f}")


if __name__ == "__main__":  # pragma: no cover
    app()
