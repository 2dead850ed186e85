"""Strict kernels: what a kernel accepts (hyper-parameters, inputs) and what it may return.

Hyper-parameter domains: the values a kernel hyper-parameter may take, checked in one place.

A :class:`~mfarray.kernels.spec.Kernel` declares a domain for each of its hyper-parameters
(``Kernel(fn, domains={...})`` or ``@kernel(..., domains={...})``).  Every value that reaches the
kernel is checked against it -- when bound (``Kernel.bind``, ``functools.partial`` read by
``as_kernel``, ``Kernel(..., hyper=...)``) and when given at a call (``k(x1, x2, sigma=...)``) --
so a NaN, an infinity, a negative width, a bool, a string or a complex number is refused before
any kernel value is computed: TypeError for a value of the wrong kind, ValueError for one out of
range, each naming the kernel, the hyper-parameter and what it may be.  The checked value is
what the kernel receives (NumPy and 0-d array scalars become Python numbers)::

    Real(low=0, low_open=True)      a finite real number > 0 (bools, strings, complex refused)
    Integer(low=0, high=1000)       an integer (NumPy integers too; bools and floats refused)
    Flag()                          True or False (NumPy bools too)
    Choice(("gemm", "entrywise"))   one of the given strings
    FloatDType()                    None, float32 or float64 (a computation dtype)
    Optional(Integer(low=1))        None, or a value of the inner domain

Widths and weight scales that a kernel squares are bounded by :data:`SQUARED_MAX` = 1e150, so
that their squares are float64 numbers.

Inputs (:func:`kernel_input`): arrays (n, d) of numbers; a kernel of features refuses complex
inputs (:func:`require_real`: casting would drop the imaginary part).  Values
(:func:`check_finite_values`): NaN or inf -- an overflow, an input that is not finite, a kernel
undefined somewhere -- raise :class:`NonFiniteKernelError` (a ValueError) naming the kernel,
never passed on.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import backend

if TYPE_CHECKING:
    from numpy.typing import DTypeLike

__all__ = ["Real", "Integer", "Flag", "Choice", "FloatDType", "Optional", "check_hyper", "SQUARED_MAX",
           "NonFiniteKernelError", "require_real", "kernel_input", "check_finite_values"]

#: the largest magnitude of a hyper-parameter that a kernel squares (1e300 is still a float64)
SQUARED_MAX = 1e150

Array = Any  # a NumPy, CuPy or Dask array


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _range_text(low, high, low_open, high_open) -> str:
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{_fmt(low)}, {_fmt(high)}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {_fmt(low)}"
    if high is not None:
        return f" {'<' if high_open else '<='} {_fmt(high)}"
    return ""


def _in_range(v, low, high, low_open, high_open) -> bool:
    if low is not None and not (v > low if low_open else v >= low):
        return False
    return high is None or (v < high if high_open else v <= high)


def _is_bool(value) -> bool:
    return isinstance(value, (bool, np.bool_))


def _scalar(value):
    """A 0-d NumPy array as its scalar; anything else unchanged."""
    if isinstance(value, np.ndarray) and value.shape == ():
        return value[()]
    return value


def _got(value) -> str:
    return f"got {value!r} of type {type(value).__name__}"


@dataclasses.dataclass(frozen=True)
class Real:
    """A finite real number (float, int, NumPy real scalar or 0-d array), optionally in a range;
    returned as a Python float."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    doc: str = ""

    def describe(self) -> str:
        if self.low == 0 and self.low_open and self.high is None:
            return "a positive finite real number"
        return "a finite real number" + _range_text(self.low, self.high, self.low_open, self.high_open)

    def check(self, value: Any, where: str) -> float:
        value = _scalar(value)
        if _is_bool(value) or not isinstance(value, numbers.Real):
            raise TypeError(f"{where} must be {self.describe()}{_doc(self)}; {_got(value)}")
        try:
            v = float(value)
        except OverflowError:  # an int or Fraction beyond float64
            v = math.inf
        if not math.isfinite(v) or not _in_range(v, self.low, self.high, self.low_open, self.high_open):
            raise ValueError(f"{where} must be {self.describe()}{_doc(self)}; got {value!r}")
        return v


@dataclasses.dataclass(frozen=True)
class Integer:
    """An integer (int or NumPy integer; bools and floats refused), optionally in a range;
    returned as a Python int."""

    low: int | None = None
    high: int | None = None
    doc: str = ""

    def describe(self) -> str:
        return "an integer" + _range_text(self.low, self.high, False, False)

    def check(self, value: Any, where: str) -> int:
        value = _scalar(value)
        if _is_bool(value) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{where} must be {self.describe()}{_doc(self)}; {_got(value)}")
        v = int(value)
        if not _in_range(v, self.low, self.high, False, False):
            raise ValueError(f"{where} must be {self.describe()}{_doc(self)}; got {value!r}")
        return v


@dataclasses.dataclass(frozen=True)
class Flag:
    """True or False (a NumPy bool too); returned as a Python bool."""

    doc: str = ""

    def describe(self) -> str:
        return "True or False"

    def check(self, value: Any, where: str) -> bool:
        value = _scalar(value)
        if not _is_bool(value):
            raise TypeError(f"{where} must be {self.describe()}{_doc(self)}; {_got(value)}")
        return bool(value)


@dataclasses.dataclass(frozen=True)
class Choice:
    """One of the given strings."""

    options: tuple
    doc: str = ""

    def describe(self) -> str:
        return "one of " + ", ".join(repr(o) for o in self.options)

    def check(self, value: Any, where: str) -> str:
        if not isinstance(value, str):
            raise TypeError(f"{where} must be {self.describe()}{_doc(self)}; {_got(value)}")
        if value not in self.options:
            raise ValueError(f"{where} must be {self.describe()}{_doc(self)}; got {value!r}")
        return value


@dataclasses.dataclass(frozen=True)
class FloatDType:
    """None (the kernel's default) or a float32 / float64 dtype (a NumPy dtype, type or name);
    returned as its name, "float32" or "float64" (what a record holds and a rebuild reads)."""

    doc: str = ""

    def describe(self) -> str:
        return "None, float32 or float64"

    def check(self, value: Any, where: str) -> DTypeLike | None:
        if value is None:
            return None
        try:
            dt = np.dtype(value)
        except TypeError:
            dt = None
        if dt is None or dt not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError(f"{where} must be {self.describe()}{_doc(self)}; {_got(value)}")
        return dt.name


@dataclasses.dataclass(frozen=True)
class Optional:
    """None, or a value of the inner domain."""

    inner: object

    def describe(self) -> str:
        return f"None or {self.inner.describe()}"

    def check(self, value: Any, where: str) -> Any:
        if value is None:
            return None
        try:
            return self.inner.check(value, where)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{exc} (or None)") from None


def _doc(domain) -> str:
    return f" ({domain.doc})" if getattr(domain, "doc", "") else ""


def check_hyper(domains: Mapping, values: Mapping, kernel_name: str) -> dict:
    """``values`` checked against ``domains`` (names without a domain pass unchanged): a new
    dict of the checked values.  Raises TypeError/ValueError naming the kernel and the
    hyper-parameter."""
    out = dict(values)
    for name, value in values.items():
        domain = domains.get(name)
        if domain is not None:
            out[name] = domain.check(value, f"{kernel_name}: hyper-parameter {name}")
    return out


# ------------------------------------------------------------------ inputs and values


class NonFiniteKernelError(ValueError):
    """A kernel returned NaN or inf (or was given non-finite inputs); the message names the kernel,
    and, inside an operator, the tile."""


def require_real(x: Array, name: str, kernel_name: str) -> Array:
    """Refuse (TypeError) a complex ``x``: kernels of features read real feature vectors, and
    casting would drop the imaginary part."""
    dt = getattr(x, "dtype", None)
    if dt is not None and getattr(dt, "kind", None) == "c":
        raise TypeError(
            f"{kernel_name} reads real features, but {name} is complex ({dt}): casting it would drop the "
            "imaginary part.  Pass real features, e.g. mfarray.kernels.patch_features(z) for homogeneous "
            "points z, or use a kernel of points such as gaussian_fs"
        )
    return x


def kernel_input(x: Any, name: str, kernel_name: str, inputs: str) -> Array:
    """A kernel input as an array (n, d) of numbers: lists and tuples become NumPy arrays; other
    non-arrays (TypeError), other shapes (ValueError), non-numeric dtypes (TypeError) and, for a
    kernel of features (``inputs="features"``), complex dtypes (TypeError, :func:`require_real`)
    are refused."""
    what = "homogeneous points z (n, n+1)" if inputs == "points" else "real features (n, d)"
    if isinstance(x, (list, tuple)):
        try:
            x = np.asarray(x)
        except ValueError:  # ragged
            raise ValueError(f"kernel {kernel_name}: {name} must be an array of {what}; got a ragged "
                             f"{type(x).__name__}") from None
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"kernel {kernel_name}: {name} must be an array of {what}; got {type(x).__name__}")
    if len(x.shape) != 2:
        raise ValueError(f"kernel {kernel_name}: {name} must be an array of {what}, 2-d; got shape {tuple(x.shape)}")
    if getattr(x.dtype, "kind", None) not in ("b", "i", "u", "f", "c"):
        raise TypeError(f"kernel {kernel_name}: {name} must hold numbers; got dtype {x.dtype}")
    if inputs == "features":
        require_real(x, name, kernel_name)
    return x


def check_finite_values(K: Array, label: str | Callable[[], str], inputs: Iterable[Array] = ()) -> Array:
    """``K`` itself, refused (:class:`NonFiniteKernelError`) where it holds NaN or inf.

    ``label``: the kernel's name for the message (a string, or a callable giving it, called only
    on failure); ``inputs``: the arrays it was computed from, blamed when they are not finite.
    One pass (a sum) when every value is finite; a Dask ``K`` is checked chunk by chunk when it is
    computed (lazy in, lazy out).  Values that are not numbers (no dtype, or integer/bool) pass."""
    dt = getattr(K, "dtype", None)
    if getattr(dt, "kind", None) not in ("f", "c"):
        return K
    if backend.is_dask(K):
        text = label() if callable(label) else label
        return K.map_blocks(check_finite_values, text, dtype=K.dtype, meta=K._meta)
    xp = backend.namespace(K)
    with _quiet():
        if bool(xp.isfinite(xp.sum(K))):  # the common case: one pass; NaN and inf propagate
            return K
        bad = ~xp.isfinite(K)
        n_bad = int(xp.sum(bad))
    if n_bad == 0:  # finite values whose sum overflowed
        return K
    text = label() if callable(label) else label
    first = tuple(int(i[0]) for i in xp.nonzero(bad))
    for name, x in zip(("x1", "x2"), inputs):
        if _not_finite(x):
            raise NonFiniteKernelError(
                f"{text} got non-finite inputs: {name} has NaN or inf entries, so {n_bad} of its "
                f"{K.size} values are not finite; the inputs of a kernel must be finite")
    raise NonFiniteKernelError(
        f"{text} returned non-finite values (NaN or inf) at {n_bad} of {K.size} entries of its "
        f"{tuple(K.shape)} block, first at {list(first)}: its hyper-parameters (or inputs) are too "
        "large for float64 arithmetic, or the kernel is undefined there; use smaller values or "
        "rescale the inputs")


def _not_finite(x) -> bool:
    dt = getattr(x, "dtype", None)
    if getattr(dt, "kind", None) not in ("f", "c") or backend.is_dask(x):
        return False
    xp = backend.namespace(x)
    return not bool(xp.all(xp.isfinite(x)))


def _quiet():
    """NumPy's overflow warnings silenced while checking (the sum may overflow harmlessly)."""
    return np.errstate(over="ignore", invalid="ignore")
