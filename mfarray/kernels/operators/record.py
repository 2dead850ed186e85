"""What a stored kernel matrix records about itself, and the check that a resumed build
writes the same matrix.

A Zarr store of ``K (n_out, n_in)``, ``K[a, b] = k(x_out[a], x_in[b])`` (the scalar kernel
of eq. 2.23), keeps in its attributes (:data:`ATTR_META`) the shapes, block, dtype, SHA-256
fingerprints of the points and the kernel's identity -- ``as_kernel(kernel).describe()``
(name, function, inputs, hyper-parameters, rescalings 2.16) plus ``"params"`` -- and
(:data:`ATTR_DONE`) the blocks written so far.  All JSON; equal inputs give equal records
across runs, so a rerun resumes and any other rerun is refused.
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np

from ... import backend
from .protocol import kernel_spec

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
