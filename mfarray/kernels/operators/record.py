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
the kernel's code and captured values (:func:`code_token`): when that hash is unchanged the probe
is not recomputed, otherwise the kernel is evaluated on the probe and its values decide.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import types

import numpy as np

from ... import backend
from .protocol import kernel_spec

PROBE = 8  # the value probe: the top-left PROBE x PROBE entries of K (within block (0, 0))
PROBE_RTOL = 1e-7  # relative to the probe's largest magnitude: rounding noise, not another kernel

ATTR_META = "mfarray_kernel_operator"
ATTR_DONE = "mfarray_done_blocks"


def fingerprint(x) -> str:
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


def kernel_record(kernel, name=None, params=None) -> dict:
    """The kernel's identity in the store: ``as_kernel(kernel).describe()``, with ``name``
    replacing its name and ``params`` (default: its bound hyper-parameters) as ``"params"``."""
    spec = kernel_spec(kernel)
    info = spec.describe()
    if name is not None:
        info["name"] = str(name)
    info["params"] = _json_safe(dict(spec.hyper) if params is None else params)
    json.dumps(info)  # guaranteed JSON by construction; fail loudly otherwise
    return info


def check_rerun(arr, meta, path):
    """A store being resumed must hold the same matrix: same shapes, block, dtype, points
    and kernel."""
    old = dict(arr.attrs).get(ATTR_META)
    keys = ("kind", "n_out", "n_in", "block", "dtype", "x_out_sha256", "x_in_sha256")
    if old is None or any(old.get(k) != meta[k] for k in keys) or old["kernel"]["name"] != meta["kernel"]["name"]:
        diff = [k for k in keys if old is None or old.get(k) != meta[k]]
        raise ValueError(
            f"path {path!s} holds a different array (mismatch in {diff or ['kernel']}); "
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


def probe_record(P) -> dict:
    """The record of the kernel's values on the probe ``P = K[:rows, :cols]`` (float64):
    shape, the rounded values and their SHA-256."""
    vals = _rounded(P)
    sha = hashlib.sha256(json.dumps(vals).encode()).hexdigest()
    return {"rows": int(P.shape[0]), "cols": int(P.shape[1]), "sha256": sha, "values": vals}


def check_probe(old: dict, P, path):
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

_SIMPLE = (type(None), bool, int, float, complex, str, np.number, np.bool_)


def _state(obj, depth: int, seen: set):
    """A JSON stand-in for what determines a callable's values, without calling it: code
    (bytecode, constants, names), defaults, captured cells, referenced module-level constants and
    functions, partial arguments, spec fields.  No memory addresses: equal across runs for the
    same code.  State of callable *instances* (their attributes) is not included."""
    if isinstance(obj, _SIMPLE):
        return _json_safe(obj)
    if depth > 6:
        return type(obj).__qualname__
    if isinstance(obj, (list, tuple)) and len(obj) <= 64:
        return [_state(v, depth + 1, seen) for v in obj]
    if isinstance(obj, dict) and len(obj) <= 64:
        return {str(k): _state(v, depth + 1, seen) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if hasattr(obj, "shape") and hasattr(obj, "dtype") and not callable(obj):
        try:
            return _json_safe(obj)
        except Exception:  # noqa: BLE001 - e.g. a lazy array: identify by type only
            return type(obj).__qualname__
    if isinstance(obj, types.CodeType):
        return {
            "code": obj.co_code.hex(),
            "consts": [_state(c, depth + 1, seen) for c in obj.co_consts],
            "names": list(obj.co_names),
        }
    if isinstance(obj, types.ModuleType):
        return {"module": obj.__name__}
    if isinstance(obj, functools.partial):
        return {"partial": _state(obj.func, depth + 1, seen), "args": _state(obj.args, depth + 1, seen),
                "keywords": _state(obj.keywords, depth + 1, seen)}
    if isinstance(obj, types.MethodType):
        return {"method": _state(obj.__func__, depth + 1, seen), "self": type(obj.__self__).__qualname__}
    if isinstance(obj, types.FunctionType):
        name = f"{obj.__module__}.{obj.__qualname__}"
        if id(obj) in seen:
            return name
        seen = seen | {id(obj)}
        g = obj.__globals__
        refs = {}
        for n in _all_names(obj.__code__):
            if n in g:
                v = g[n]
                if isinstance(v, (_SIMPLE, types.FunctionType, functools.partial, tuple)) or (
                    hasattr(v, "shape") and hasattr(v, "dtype") and not callable(v)
                ) or dataclasses.is_dataclass(v):
                    refs[n] = _state(v, depth + 1, seen)
        cells = []
        for c in obj.__closure__ or ():
            try:
                cells.append(_state(c.cell_contents, depth + 1, seen))
            except ValueError:  # an empty cell
                cells.append(None)
        return {"function": name, "code": _state(obj.__code__, depth + 1, seen),
                "defaults": _state(obj.__defaults__, depth + 1, seen),
                "kwdefaults": _state(obj.__kwdefaults__, depth + 1, seen), "closure": cells, "globals": refs}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):  # Kernel, Rescaling
        return {"dataclass": type(obj).__qualname__,
                "fields": {f.name: _state(getattr(obj, f.name), depth + 1, seen) for f in dataclasses.fields(obj)}}
    if callable(obj) and not isinstance(obj, type):
        call = type(obj).__call__  # callable(obj): its type defines __call__
        return {"instance": f"{type(obj).__module__}.{type(obj).__qualname__}",
                "call": _state(call, depth + 1, seen) if isinstance(call, types.FunctionType) else None}
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _all_names(code) -> list:
    names = list(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            names += _all_names(c)
    return names


def code_token(kernel) -> str:
    """SHA-256 of the kernel's code and captured values (:func:`_state`), computed without
    calling it.  Only a shortcut: equal tokens skip the value probe on resume; unequal (or
    unstable) tokens cost one small probe evaluation, whose values decide."""
    try:
        state = _state(kernel, 0, set())
        text = json.dumps(state, sort_keys=True, default=lambda o: type(o).__qualname__)
    except Exception as exc:  # noqa: BLE001 - never fail a build over the shortcut
        text = f"unhashable:{type(exc).__name__}:{id(kernel)}"
    return hashlib.sha256(text.encode()).hexdigest()
