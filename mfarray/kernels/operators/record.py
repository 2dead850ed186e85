"""What a stored kernel matrix records about itself, and the check that a resumed build
writes the same matrix.

A Zarr store of ``K (n_out, n_in)``, ``K[a, b] = k(x_out[a], x_in[b])`` (the scalar kernel
of eq. 2.23), keeps in its attributes (:data:`ATTR_META`) the shapes, block, dtype, SHA-256
fingerprints of the points and the kernel's identity -- ``as_kernel(kernel).describe()``
(name, function, inputs, hyper-parameters, rescalings 2.16) plus ``"params"`` -- and
(:data:`ATTR_DONE`) the blocks written so far.  All JSON; equal inputs give equal records
across runs, so a rerun resumes and any other rerun is refused.

A description cannot tell apart two lambdas or closures of one name that differ in a value they
capture, so the record also holds (issue 9) a fingerprint of the kernel's *values* on a fixed
probe (:func:`probe_record`, the top-left ``<= 8 x 8`` entries of ``K``, i.e. the first points of
``x_out`` and ``x_in``), compared on every resume (:func:`check_probe`), and a call-free hash of
the kernel's code and captured values (:func:`code_token`: closures, defaults, referenced
module-level values, partial arguments, and the attributes of callable instances such as an object
with ``__call__`` and ``self.sigma``): when that hash is unchanged the probe is not recomputed,
otherwise the kernel is evaluated on the probe and its values decide.  A kernel holding state the
hash cannot read gets a token unique to the call, so its values always decide.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import types
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ... import backend
from .protocol import kernel_spec

if TYPE_CHECKING:
    import zarr
    from zarr.storage import StoreLike

Array = Any  # a NumPy, CuPy or Dask array

PROBE = 8  # the value probe: the top-left PROBE x PROBE entries of K (within block (0, 0))
PROBE_RTOL = 1e-7  # relative to the probe's largest magnitude: rounding noise, not another kernel

ATTR_META = "mfarray_kernel_operator"
ATTR_DONE = "mfarray_done_blocks"


def fingerprint(x: Array) -> str:
    """SHA-256 of an array's shape, dtype and bytes (NumPy, CuPy or Dask)."""
    a = np.ascontiguousarray(backend.to_numpy(x))
    h = hashlib.sha256()
    h.update(f"{a.shape}|{a.dtype.str}|".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def _json_safe(value, depth=0):
    """A JSON-encodable stand-in for a hyper-parameter (complex -> {"real", "imag"}, arrays
    beyond 64 entries -> shape, dtype and sha256), equal across runs for equal values."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return f if math.isfinite(f) else repr(f)
    if isinstance(value, (complex, np.complexfloating)):
        return {"real": float(value.real), "imag": float(value.imag)}
    if isinstance(value, (list, tuple)) and depth < 3 and len(value) <= 64:
        return [_json_safe(v, depth + 1) for v in value]
    if isinstance(value, dict) and depth < 3:
        return {str(k): _json_safe(v, depth + 1) for k, v in value.items()}
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        a = backend.to_numpy(value)
        if a.size <= 64:
            return _json_safe(a.tolist(), depth)
        return {"array_shape": list(a.shape), "dtype": str(a.dtype), "sha256": fingerprint(a)}
    return repr(value)


def kernel_record(kernel: Callable[..., Array], name: str | None = None,
                  params: Mapping[str, Any] | None = None) -> dict:
    """The kernel's identity in the store: ``as_kernel(kernel).describe()``, with ``name``
    replacing its name and ``params`` (default: its bound hyper-parameters) as ``"params"``."""
    spec = kernel_spec(kernel)
    info = spec.describe()
    if name is not None:
        info["name"] = str(name)
    info["params"] = _json_safe(dict(spec.hyper) if params is None else params)
    json.dumps(info)  # guaranteed JSON by construction; fail loudly otherwise
    return info


def check_rerun(arr: zarr.Array, meta: Mapping[str, Any], path: StoreLike | os.PathLike) -> None:
    """A store being resumed must hold the same matrix: same shapes, block, dtype, points
    and kernel."""
    old = dict(arr.attrs).get(ATTR_META)
    keys = ("kind", "n_out", "n_in", "block", "dtype", "x_out_sha256", "x_in_sha256")
    if old is None or any(old.get(k) != meta[k] for k in keys) or old["kernel"]["name"] != meta["kernel"]["name"]:
        diff = [k for k in keys if old is None or old.get(k) != meta[k]]
        hint = (" (float32 was the default dtype before float64: pass dtype='float32' to resume it)"
                if "dtype" in diff and old.get("dtype") == "float32" else "")
        raise ValueError(
            f"path {path!s} holds a different array (mismatch in {diff or ['kernel']}){hint}; "
            f"pass overwrite=True or choose another path"
        )
    if old["kernel"] != meta["kernel"]:
        raise ValueError(
            f"path {path!s} was built with kernel {old['kernel']}, not {meta['kernel']}; "
            f"pass overwrite=True or choose another path"
        )


# ------------------------------------------------------------------ the kernel's values


def probe_shape(n_out: int, n_in: int, block: int) -> tuple[int, int]:
    """Rows and columns of the value probe: the first ``<= PROBE`` points of each side, all
    inside block (0, 0) so that a build computes the probe with that block, at no extra cost."""
    return min(PROBE, n_out, block), min(PROBE, n_in, block)


def _rounded(P) -> list:
    """The probe rounded to 12 significant digits (so that rounding noise between runs does not
    change its hash), as JSON (non-finite values by name)."""
    P = np.asarray(P, dtype=np.float64)
    return [[float(f"{v:.12g}") if math.isfinite(v) else repr(float(v)) for v in row] for row in P.tolist()]


def probe_record(P: Array) -> dict:
    """The record of the kernel's values on the probe ``P = K[:rows, :cols]`` (float64):
    shape, the rounded values and their SHA-256."""
    vals = _rounded(P)
    sha = hashlib.sha256(json.dumps(vals).encode()).hexdigest()
    return {"rows": int(P.shape[0]), "cols": int(P.shape[1]), "sha256": sha, "values": vals}


def check_probe(old: dict, P: Array, path: StoreLike | os.PathLike) -> None:
    """``P`` (the kernel on the probe now) must equal the stored probe to rounding; otherwise
    the store holds another kernel (e.g. a closure of the same name with another captured
    hyper-parameter), and ValueError says so."""
    new = probe_record(P)
    if new["sha256"] == old.get("sha256"):
        return
    a = np.array([[float(v) for v in r] for r in old.get("values", [])], dtype=np.float64)
    b = np.array([[float(v) for v in r] for r in new["values"]], dtype=np.float64)
    if a.shape == b.shape and a.size:
        scale = float(np.nanmax(np.abs(np.where(np.isfinite(a), a, 0.0)))) or 1.0
        if np.allclose(b, a, rtol=PROBE_RTOL, atol=PROBE_RTOL * scale, equal_nan=True):
            return
        dev = float(np.nanmax(np.abs(a - b)))
    else:
        dev = float("nan")
    raise ValueError(
        f"path {path!s} holds another kernel: its kernel description matches, but the stored values "
        f"differ from this kernel's on the probe K[:{new['rows']}, :{new['cols']}] (max deviation "
        f"{dev:.3g}; e.g. a closure or lambda with another captured hyper-parameter); pass "
        f"overwrite=True to replace it, or choose another path"
    )


# ------------------------------------------------------------------ the kernel's code

_SIMPLE = (type(None), bool, int, float, complex, str, bytes, type(Ellipsis), np.number, np.bool_)
_LIMIT = 64  # containers beyond this many entries are not captured (opaque)
_DEPTH = 40  # nesting beyond this is not captured (opaque)


@dataclasses.dataclass
class _Walk:
    """The state of one :func:`code_token` walk: what could not be captured, and the states of
    the objects already seen (each function or object is walked once)."""

    opaque: list = dataclasses.field(default_factory=list)
    memo: dict = dataclasses.field(default_factory=dict)
    keep: list = dataclasses.field(default_factory=list)  # the memo's objects, alive during the walk


def _state(obj, walk: _Walk, depth: int = 0, path: frozenset = frozenset()):
    """A JSON stand-in for what determines a callable's values, without calling it: code
    (bytecode, constants, names), defaults, captured cells, referenced module-level values and
    functions, partial arguments, spec fields, and the attributes of callable instances, of bound
    methods' ``self`` and of any other object referred to.  No memory addresses: equal across runs
    for the same code and values.

    What cannot be captured (a large container, a lazy array, an object without readable
    attributes, too deep a nesting) is named in ``walk.opaque``; :func:`code_token` then gives an
    unstable token, so that the kernel's values decide."""
    if isinstance(obj, _SIMPLE):
        return _json_safe(obj)
    if isinstance(obj, type):  # a class: by name
        return {"class": f"{obj.__module__}.{obj.__qualname__}"}
    if isinstance(obj, types.ModuleType):
        return {"module": obj.__name__}
    if isinstance(obj, (types.BuiltinFunctionType, np.ufunc)):
        return {"builtin": f"{getattr(obj, '__module__', None)}.{getattr(obj, '__qualname__', obj.__name__)}"}
    if depth > _DEPTH:
        walk.opaque.append(f"depth:{type(obj).__qualname__}")
        return type(obj).__qualname__
    key = id(obj)
    if key in path:  # a cycle (a function referring to itself, an object holding itself)
        return f"cycle:{type(obj).__qualname__}"
    if key in walk.memo:
        return walk.memo[key]
    walk.keep.append(obj)
    state = _walk(obj, walk, depth + 1, path | {key})
    walk.memo[key] = state
    return state


def _walk(obj, walk, depth, path):
    def sub(v):
        return _state(v, walk, depth, path)

    if isinstance(obj, (list, tuple, set, frozenset)):
        if len(obj) > _LIMIT:
            walk.opaque.append(f"size:{type(obj).__qualname__}")
            return type(obj).__qualname__
        items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
        return [sub(v) for v in items]
    if isinstance(obj, dict):
        if len(obj) > _LIMIT:
            walk.opaque.append("size:dict")
            return "dict"
        return {str(k): sub(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if hasattr(obj, "shape") and hasattr(obj, "dtype") and not callable(obj):
        if isinstance(obj, np.ndarray) or backend.is_cupy(obj):  # read (hashed when large)
            return _json_safe(obj)
        walk.opaque.append(f"array:{type(obj).__qualname__}")  # lazy or wrapped: never computed here
        return type(obj).__qualname__
    if isinstance(obj, types.CodeType):
        return {"code": obj.co_code.hex(), "consts": [sub(c) for c in obj.co_consts], "names": list(obj.co_names)}
    if isinstance(obj, functools.partial):
        return {"partial": sub(obj.func), "args": sub(obj.args), "keywords": sub(obj.keywords)}
    if isinstance(obj, types.MethodType):
        return {"method": sub(obj.__func__), "self": sub(obj.__self__)}
    if isinstance(obj, types.FunctionType):
        g = obj.__globals__
        cells = []
        for c in obj.__closure__ or ():
            try:
                cells.append(sub(c.cell_contents))
            except ValueError:  # an empty cell
                cells.append(None)
        return {"function": f"{obj.__module__}.{obj.__qualname__}", "code": sub(obj.__code__),
                "defaults": sub(obj.__defaults__), "kwdefaults": sub(obj.__kwdefaults__), "closure": cells,
                "globals": {n: sub(g[n]) for n in sorted(set(_all_names(obj.__code__))) if n in g}}
    if dataclasses.is_dataclass(obj):  # Kernel, Rescaling, domains
        return {"dataclass": type(obj).__qualname__,
                "fields": {f.name: sub(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
    # any other object (a callable instance, a value a function refers to): its class, its
    # __call__ if any, and its attributes
    out = {"instance": f"{type(obj).__module__}.{type(obj).__qualname__}"}
    call = vars(type(obj)).get("__call__") or next(
        (vars(c)["__call__"] for c in type(obj).__mro__ if "__call__" in vars(c)), None)
    if isinstance(call, types.FunctionType):
        out["call"] = sub(call)
    attrs = _attributes(obj)
    if attrs is None:
        walk.opaque.append(f"object:{type(obj).__qualname__}")
    else:
        out["attributes"] = sub(attrs)
    return out


def _attributes(obj):
    """An object's attributes (``__dict__`` and ``__slots__``) as a dict, or None when it has
    neither (a C object whose state cannot be read here)."""
    slots = []
    for cls in type(obj).__mro__:
        names = getattr(cls, "__slots__", ())
        slots += [names] if isinstance(names, str) else [n for n in names if n not in ("__dict__", "__weakref__")]
    if not hasattr(obj, "__dict__") and not slots:
        return None
    attrs = dict(vars(obj)) if hasattr(obj, "__dict__") else {}
    attrs.update({n: getattr(obj, n) for n in slots if hasattr(obj, n)})
    return attrs


def _all_names(code) -> list:
    names = list(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            names += _all_names(c)
    return names


def code_token(kernel: Callable[..., Array]) -> str:
    """SHA-256 of the kernel's code and captured values (:func:`_state`), computed without
    calling it.  Only a shortcut: equal tokens skip the value probe on resume; unequal (or
    unstable) tokens cost one small probe evaluation, whose values decide.  A kernel with state
    that cannot be read (see :func:`_state`) gets a token unique to this call."""
    walk = _Walk()
    try:
        state = _state(kernel, walk)
        text = json.dumps(state, sort_keys=True, default=lambda o: type(o).__qualname__)
    except Exception as exc:  # noqa: BLE001 - never fail a build over the shortcut
        walk.opaque.append(f"error:{type(exc).__name__}")
        text = ""
    if walk.opaque:
        text = f"unstable:{uuid.uuid4().hex}:{sorted(set(walk.opaque))}:{text}"
    return hashlib.sha256(text.encode()).hexdigest()
