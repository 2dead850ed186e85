"""Kernel specs: a scalar kernel and everything a dispatcher must know about it, in one object.

A metric flow with the Kronecker metric-NTK Theta_{ijkl}(x, x') = delta_ik delta_jl k(x, x')
(paper eq. 2.21-2.23) needs more than the function k: what it reads (homogeneous points z, or
real features of z), whether k(x, x') depends on x and x' alone (so the matrix may be computed
tile by tile), whether it is symmetric, and its hyper-parameters (to record a run and to key a
stored kernel).  Function attributes and ``functools.partial`` keywords lose that information
under nesting, rescaling (2.16) and closures; a :class:`Kernel` keeps it::

    k = Kernel(fn, inputs="points", name="gaussian_fs")     # fn(x1, x2, **hyper) -> (n1, n2)
    k2 = k.bind(sigma=0.3)                                  # hyper-parameters, checked by name
    k3 = k2.rescale(h)                                      # h(x1) k(x1, x2) h(x2)   (2.16)
    k3(x1, x2)                                              # the (n1, n2) matrix
    as_kernel(functools.partial(k, sigma=0.3)) == k2        # partials (nested too) become binds
    k2.describe()                                           # JSON-safe record of all of it

``inputs`` is ``"points"`` (homogeneous coordinates z (n, n+1), complex: the FS kernels) or
``"features"`` (real feature vectors (n, d) such as ``patch_features(z)``: the NTKs).  A plain
callable has no spec: :func:`as_kernel` gives it the neutral one (features, pairwise, symmetric,
``opaque=True``); flows refuse opaque kernels because they cannot know what to feed them.

A user closure is wrapped once, ``Kernel(closure, inputs="points")``, and is then bound and
rescaled like any spec.  :meth:`Kernel.describe` knows a function by its qualified name and its
*bound* hyper-parameters only: two closures that differ only in a value they capture (or two
opaque callables of one qualified name) describe alike in a record.  Give them different
names, or make the value a keyword hyper-parameter (``def k(a, b, *, sigma): ...`` then
``.bind(sigma=...)``).  Zarr kernel stores also fingerprint the kernel's values on a probe
block and its code, so they do tell such kernels apart (``operators/record.py``).

Strict values.  A spec declares a domain for each hyper-parameter (:mod:`.checks`, e.g.
``sigma``: a finite real number > 0); every bound or call-time value is checked against it, so
``relu_ntk.bind(sigma_w=inf)`` or ``cosine_ntk(x, x, sigma_w=nan)`` raise a ValueError naming the
kernel and the hyper-parameter.  A kernel of features refuses complex inputs (TypeError: pass real
features such as ``patch_features(z)``), and every call checks its values: NaN or inf (an overflow,
non-finite inputs) raise :class:`NonFiniteKernelError` naming the kernel, never passed on.

Decorated kernels (:func:`kernel`) pickle by reference, like the functions they replace: the
bare function stays importable as ``<module>.<name>.fn``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
from collections.abc import Callable, Mapping
from typing import Any

from .checks import NonFiniteKernelError, check_finite_values, check_hyper, kernel_input, require_real

__all__ = ["Kernel", "Rescaling", "as_kernel", "kernel", "kernel_named", "INPUT_KINDS", "NonFiniteKernelError",
           "check_finite_values", "require_real"]

INPUT_KINDS = ("points", "features")

Array = Any  # a NumPy, CuPy or Dask array


@dataclasses.dataclass(frozen=True)
class Rescaling:
    """A deterministic factor h(x) (n,) of the rescaling trick (2.15-2.16), on the given inputs."""

    fn: Callable
    inputs: str = "features"
    name: str = ""

    def __post_init__(self):
        if not callable(self.fn):
            raise TypeError(f"Rescaling needs a callable h(x); got {type(self.fn).__name__}")
        if self.inputs not in INPUT_KINDS:
            raise ValueError(f"inputs must be one of {INPUT_KINDS}; got {self.inputs!r}")

    def __call__(self, x: Array) -> Array:
        """h(x): the (n,) factors, checked finite (lazily, chunk by chunk, for Dask)."""
        h = self.fn(x)
        if tuple(h.shape) != (x.shape[0],):
            raise ValueError(f"the rescaling {self.describe()['name']} returned shape {tuple(h.shape)} "
                             f"for {x.shape[0]} inputs; h(x) must have shape (n,)")
        return _finite(h)

    def describe(self) -> dict:
        return {"name": self.name or _qualname(self.fn), "inputs": self.inputs}


def _qualname(fn) -> str:
    """``module.qualname`` of a function; a ``functools.partial`` with its function and bound
    arguments spelt out (two partials of other functions or values must not describe alike)."""
    if isinstance(fn, functools.partial):
        args = [json.dumps(_json_safe(a)) for a in fn.args]
        args += [f"{k}={json.dumps(_json_safe(v))}" for k, v in sorted(fn.keywords.items())]
        return f"functools.partial({', '.join([_qualname(fn.func), *args])})"
    mod = getattr(fn, "__module__", None) or type(fn).__module__
    qual = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{mod}.{qual}"


def _json_safe(value, depth=0):
    """A JSON-safe stand-in for a hyper-parameter (numbers, strings, lists; else repr)."""
    import numpy as np

    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, (complex, np.complexfloating)):
        return {"real": float(value.real), "imag": float(value.imag)}
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and depth < 3:
        return [_json_safe(v, depth + 1) for v in value]
    if isinstance(value, Mapping) and depth < 3:
        return {str(k): _json_safe(v, depth + 1) for k, v in value.items()}
    return repr(value)


@dataclasses.dataclass(frozen=True)
class Kernel:
    """A scalar kernel ``fn(x1, x2, **hyper) -> (n1, n2)`` with its metadata.

    fn : the bare function.
    inputs : ``"points"`` (homogeneous z) or ``"features"`` (real features of z).
    pairwise : k(x, x') depends on x and x' alone (False for the Delta kernel, whose value
        depends on the whole second point set): only pairwise kernels may be tiled.
    symmetric : k(x, x') = k(x', x).
    hyper : bound hyper-parameters (keywords of fn).
    factors : rescalings h (2.16), applied as h(x1)[:, None] * k * h(x2)[None, :].
    name : short name for records (default: fn's qualified name).
    opaque : True for a plain callable wrapped without being told what it reads.
    domains : the allowed values of each hyper-parameter (:mod:`.checks`), checked when bound
        and at every call; hyper-parameters without a domain are passed as given.
    """

    fn: Callable
    inputs: str = "features"
    pairwise: bool = True
    symmetric: bool = True
    hyper: Mapping = dataclasses.field(default_factory=dict)
    factors: tuple = ()
    name: str = ""
    opaque: bool = False
    domains: Mapping = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not callable(self.fn):
            raise TypeError(f"Kernel needs a callable fn(x1, x2, **hyper); got {type(self.fn).__name__}")
        if self.inputs not in INPUT_KINDS:
            raise ValueError(f"inputs must be one of {INPUT_KINDS}; got {self.inputs!r}")
        object.__setattr__(self, "hyper", dict(self.hyper))
        object.__setattr__(self, "factors", tuple(self.factors))
        if not self.name:
            inner = self.fn.func if isinstance(self.fn, functools.partial) else self.fn
            object.__setattr__(self, "name", getattr(inner, "__name__", None) or _qualname(inner))
        for h in self.factors:
            if not isinstance(h, Rescaling):
                raise TypeError("factors must be Rescaling objects (see Kernel.rescale)")
        _check_names(self.fn, self.hyper, self.name)
        object.__setattr__(self, "domains", dict(self.domains))
        if self.domains:
            _check_names(self.fn, self.domains, self.name)
            object.__setattr__(self, "hyper", check_hyper(self.domains, self.hyper, self.name))

    # ------------------------------------------------------------------ evaluation
    def __call__(self, *inputs, **hyper) -> Array:
        """k(x1, x2=None, **hyper) -> (n1, n2); x2 defaults to x1.  The inputs may also be
        passed by fn's own names (``gaussian_fs(z1=..., z2=...)``); keywords given here override
        the bound ones for this call (and are checked against the domains).  Inputs of a kernel of
        features must be real (TypeError); values that are not finite raise
        :class:`NonFiniteKernelError`."""
        x1, x2 = self._split_inputs(inputs, hyper)
        if hyper:
            _check_names(self.fn, hyper, self.name)
            hyper = check_hyper(self.domains, hyper, self.name)
        same = x2 is x1
        x1 = kernel_input(x1, self._input_names[0], self.name, self.inputs)
        x2 = x1 if same else kernel_input(x2, self._input_names[1], self.name, self.inputs)
        K = self.fn(x1, x2, **{**self.hyper, **hyper})
        for h in self.factors:
            h1 = h(x1)
            h2 = h1 if x2 is x1 else h(x2)
            K = h1[:, None] * K * h2[None, :]
        return check_finite_values(K, lambda: self._label(hyper), (x1, x2))

    def _label(self, hyper=None) -> str:
        """``kernel NAME(h=..., ...)`` with the hyper-parameters of a call, for messages."""
        values = {**self.hyper, **(hyper or {})}
        text = ", ".join(f"{k}={v!r}" for k, v in values.items())
        extra = f", rescaled x{len(self.factors)}" if self.factors else ""
        return f"kernel {self.name}({text}){extra}"

    @functools.cached_property
    def _input_names(self) -> tuple:
        return _signature(self.fn)[0]

    def _split_inputs(self, inputs, hyper):
        names = self._input_names
        if len(inputs) > 2:
            raise TypeError(f"kernel {self.name} takes 2 positional inputs ({', '.join(names)}) and "
                            f"hyper-parameters by keyword; got {len(inputs)} positional arguments")
        x = list(inputs) + [None] * (2 - len(inputs))
        for i, name in enumerate(names):
            if name in hyper:
                if i < len(inputs):
                    raise TypeError(f"kernel {self.name} got multiple values for {name!r}")
                x[i] = hyper.pop(name)
        if x[0] is None:
            raise TypeError(f"kernel {self.name} needs its input {names[0]!r}")
        return x[0], x[0] if x[1] is None else x[1]

    def __hash__(self):
        hyper = tuple(sorted((k, _hashable(v)) for k, v in self.hyper.items()))
        return hash((self.fn, self.inputs, self.pairwise, self.symmetric, hyper, self.factors,
                     self.name, self.opaque))

    # ------------------------------------------------------------------ composition
    def bind(self, **hyper) -> Kernel:
        """The same kernel with more hyper-parameters bound (names checked against fn, values
        against the domains)."""
        return dataclasses.replace(self, hyper={**self.hyper, **hyper})

    def rescale(self, h: Rescaling | Callable[[Array], Array]) -> Kernel:
        """h(x1) k(x1, x2) h(x2) (eq. 2.16); ``h`` a :class:`Rescaling` on this kernel's inputs
        or a plain callable (taken to act on the same inputs as the kernel)."""
        if not isinstance(h, Rescaling):
            if not callable(h):
                raise TypeError(f"h must be callable h(x) -> (n,); got {type(h).__name__}")
            h = Rescaling(h, self.inputs)
        if h.inputs != self.inputs:
            hint = (f" ({self.name} is a plain callable, taken to read features: wrap it once, "
                    f"Kernel(fn, inputs={h.inputs!r}))" if self.opaque else "")
            raise ValueError(
                f"the rescaling {h.describe()['name']} acts on {h.inputs} but the kernel {self.name} "
                f"reads {self.inputs}: both must see the same inputs{hint}"
            )
        return dataclasses.replace(self, factors=self.factors + (h,))

    # ------------------------------------------------------------------ records
    def describe(self) -> dict:
        """JSON-safe description: name, function, inputs, pairwise, symmetric, hyper, factors."""
        info = {
            "name": self.name,
            "function": _qualname(self.fn),
            "inputs": self.inputs,
            "pairwise": bool(self.pairwise),
            "symmetric": bool(self.symmetric),
            "hyper": _json_safe(dict(sorted(self.hyper.items()))),
            "factors": [h.describe() for h in self.factors],
            "opaque": bool(self.opaque),
        }
        json.dumps(info)
        return info

    def __repr__(self):
        hyper = ", ".join(f"{k}={v!r}" for k, v in self.hyper.items())
        extra = f", rescaled x{len(self.factors)}" if self.factors else ""
        return f"Kernel({self.name}({hyper}), inputs={self.inputs!r}{extra})"


def _finite(h):
    """h itself, refused (ValueError) where not finite; a Dask h is checked chunk by chunk when
    it is computed (lazy in, lazy out)."""
    from .. import backend

    if backend.is_dask(h):
        return h.map_blocks(_finite, dtype=h.dtype)
    xp = backend.namespace(h)
    if not bool(xp.all(xp.isfinite(h))):
        raise ValueError("the rescaling h(x) is not finite at some inputs")
    return h


def _hashable(value):
    try:
        hash(value)
    except TypeError:
        return json.dumps(_json_safe(value), sort_keys=True)
    return value


def _signature(fn):
    """(names of fn's two inputs, names of its hyper-parameters or None for "any").

    The inputs are fn's first two positional parameters (``("x1", "x2")`` when it has no
    signature); the hyper-parameters are its other keyword parameters, None where fn takes
    ``**kwargs`` or has no signature (nothing to check)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature
        return ("x1", "x2"), None
    inputs = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][:2]
    inputs = tuple(inputs) if len(inputs) == 2 else ("x1", "x2")
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return inputs, None
    hyper = [p.name for p in params
             if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in inputs]
    return inputs, hyper


def _check_names(fn, hyper, name):
    allowed = _signature(fn)[1]
    unknown = sorted(set(hyper) - set(allowed)) if allowed is not None else []
    if unknown:
        raise TypeError(f"kernel {name} has no hyper-parameter {unknown[0]!r}; it takes {allowed}")


def kernel(inputs: str = "features", *, pairwise: bool = True, symmetric: bool = True, name: str = "",
           domains: Mapping | None = None) -> Callable[[Callable[..., Array]], Kernel]:
    """Decorator: ``@kernel("points")`` turns ``fn(x1, x2, **hyper)`` into a :class:`Kernel`;
    ``domains`` declares the allowed values of its hyper-parameters (:mod:`.checks`)."""

    def wrap(fn):
        spec = Kernel(fn, inputs=inputs, pairwise=pairwise, symmetric=symmetric, name=name,
                      domains=domains or {})
        # gaussian_fs.__doc__ shows the formula; __name__/__module__/__qualname__ for records
        # and error messages; __wrapped__ for inspect.signature
        for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
            object.__setattr__(spec, attr, getattr(fn, attr, None))
        object.__setattr__(spec, "__wrapped__", fn)
        if "<locals>" not in fn.__qualname__:
            # the module name now holds the spec: pickle finds the function as <name>.fn
            fn.__qualname__ = f"{fn.__qualname__}.fn"
        return spec

    return wrap


def kernel_named(name: str, what: str = "kernel") -> Kernel:
    """The kernel spec of :mod:`mfarray.kernels` called ``name`` (``"gaussian_fs"``,
    ``"relu_ntk"``, ...); ValueError naming ``what`` and the choices otherwise."""
    from .. import kernels

    known = getattr(kernels, name, None) if isinstance(name, str) else None
    if not isinstance(known, Kernel):
        names = sorted(n for n in kernels.__all__ if isinstance(getattr(kernels, n, None), Kernel))
        raise ValueError(f"{what} must name a kernel of mfarray.kernels, one of {names}; got {name!r}")
    return known


def as_kernel(obj: Callable[..., Array]) -> Kernel:
    """The :class:`Kernel` of ``obj``: itself, a ``functools.partial`` (nested too) of one with
    its keywords bound, or, for any other callable, the neutral opaque spec.

    A keyword partial of a plain callable gives the opaque spec of that callable with the
    keywords bound (so records show them); a partial with positional arguments is opaque as a
    whole, and refused (TypeError) when it wraps a spec: hyper-parameters are keywords."""
    if isinstance(obj, Kernel):
        return obj
    if isinstance(obj, functools.partial):
        inner = as_kernel(obj.func)
        if obj.args:
            if inner.opaque:
                return Kernel(obj, name=inner.name, opaque=True)
            raise TypeError(
                "a kernel partial may bind hyper-parameters by keyword only "
                f"(functools.partial(kernel, sigma=...)); got positional arguments {obj.args!r}"
            )
        return inner.bind(**obj.keywords)
    if callable(obj):
        return Kernel(obj, opaque=True)
    raise TypeError(f"a kernel must be callable k(x1, x2) -> (n1, n2); got {type(obj).__name__}")

