r"""phi-networks: the Kähler potential correction phi of (B.6) as an MLP of invariant
features, with the metric g = g_FS + i dd-bar phi and its parameter gradient in closed form.

Model
-----
With the normalised degree-k sections s_hat (N, n_s) of a :class:`SectionFrame`, the
features are the real coordinates (:func:`mfarray.linalg.hermitian_to_real`, F = n_s^2 of them)
of the projector

    M = s_hat s_hat^dagger,     M_cd = s_hat_c conj(s_hat_d)      (projectively invariant;
                                                                    k = 1: z zbar^T / |z|^2),

and phi = MLP(u(M)) is a fully connected network F -> widths -> 1 with a smooth activation
(:data:`ACTIVATIONS`), affine layers

    z^0 = s_0 u W_0 + s_b b_0,   h^l = act(z^l),   z^{l+1} = s_{l+1} h^l W_{l+1} + s_b b_{l+1},
    phi = z^L,

``W_l`` of shape (d_l, d_{l+1}) (fan-in first) and the flat parameter order of
:func:`mfarray.networks.flatten` (W_0 row-major, b_0, W_1, ...).  Parameterisation
(:class:`PhiNetwork` ``parameterization``): ``"ntk"`` (the house standard of
:mod:`mfarray.networks`: s_l = sigma_w / sqrt(d_l), s_b = sigma_b, parameters N(0, 1)) or
``"standard"`` (s_l = s_b = 1, W_l ~ N(0, sigma_w^2 / d_l), b_l ~ N(0, sigma_b^2), LeCun
initialisation: the same function at initialisation, different Adam dynamics).  With
``zero_head=True`` (default) the output layer starts at zero, so phi = 0 and g = g_FS at
initialisation (a positive-definite start; its gradient is not zero).

The metric
----------
g_{a bbar} = g_FS,ab + d_a dbar_b phi in each point's own chart (the chart of the frame), with no
finite differences: forward mode carries through the layers, per point and unit, the value,
the holomorphic derivatives d_a z (kd complex) and the mixed derivatives d_a dbar_b z (a
Hermitian kd x kd matrix: kd^2 reals).  The input jets follow from the identities of
:mod:`mfarray.kahler.sections` (V = D s_hat, k the degree):

    d_a M_cd       = V_ac conj(s_hat_d)
    d_a dbar_b M_cd = V_ac conj(V_bd) - k g_FS,ab M_cd,

pushed through the real-linear map u = hermitian_to_real(M) (whose complex-linear extension
u_j = sum_cd conj(B_j)_cd M_cd gives du and dd-bar u).  An affine layer acts on all of them
with the same weights (bias on the value only); the activation h = act(z) gives

    d_a h = act'(z) d_a z,     d_a dbar_b h = act''(z) d_a z conj(d_b z) + act'(z) d_a dbar_b z.

Representation: the jets of a layer are one real array of shape (C, B, d) with
C = 1 + 2 kd + kd^2 channels -- value; Re d_a z, Im d_a z; d_a dbar_a z (real); Re and Im of
d_a dbar_b z for a < b -- so each affine layer is a single (C B, d_l) x (d_l, d_{l+1}) GEMM.

The parameter gradient
----------------------
For per-point cotangents G (N, kd, kd) (the loss gradients dl/dg of :mod:`mfarray.losses`,
convention dl = Re tr(G^dagger dg)), :func:`metric_vjp` returns sum_x Re tr(G_x^dagger dg_x/dtheta)
(P,), by hand-written reverse mode through the forward-mode computation above (the adjoint of
each channel map, including the act''' terms of the value channel).

The parameter tangent
---------------------
:func:`metric_jvp` returns dg/dtheta . v (N, kd, kd) for a direction v (P,): forward mode in the
parameters through the same jets (each layer's channels and their tangents, the activation's
jets differentiated once more: act''' dz dz^dagger and the polarised outer product).  It is the
transpose of :func:`metric_vjp` (tested to rounding), and with it the linearised phi-network
(:class:`mfarray.kahler.TangentPotential`, the after-kernel) flows without an N x P Jacobian.

Cost: the jets make every GEMM 1 + 2 kd + kd^2 (16 for the quintic) times that of a plain
forward pass, the pull-back twice that again; the elementwise work is of the same order.  Blocks
of 64-256 points are fastest (the jets stay in cache), with a :class:`Workspace` reused from
block to block (fresh arrays cost page faults: 1.3-1.8x slower).  For many small blocks hold
BLAS to one thread (:func:`mfarray.backend.one_blas_thread`) and run blocks in parallel, as
:mod:`mfarray.kahler.training` does: OpenBLAS threads on these small GEMMs made a training step
5-20x slower on a busy 2-core machine.  Measured (3 x 64, one thread, blocks of 128): forward
and pull-back 6.3 s, forward alone about 3 s, per 10^5 points.

Bare array code: NumPy or CuPy (namespace from the frame; CuPy untested), float64 / complex128.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .. import backend, linalg, networks
from .sections import MAX_DEGREE, SectionFrame, section_count

if TYPE_CHECKING:
    from ..geometry.hypersurface import Hypersurface

Array = Any

__all__ = ["ACTIVATIONS", "PARAMETERIZATIONS", "PhiNetwork", "layer_widths", "num_params", "init", "unflatten",
           "Features", "features", "phi", "phi_jets", "metric", "metric_and_pullback", "metric_vjp", "phi_vjp",
           "metric_jvp", "phi_jvp",
           "Workspace", "default_chunk"]

ACTIVATIONS = ("gelu", "tanh", "softplus")
PARAMETERIZATIONS = ("ntk", "standard")

default_chunk = 256
"""Points per block in :func:`metric`, :func:`phi_jets` and :func:`metric_vjp`: a block's jets,
(1 + 2 kd + kd^2) x chunk x width floats per layer (2 MB for kd = 3, width 64), stay in cache
(measured: 128-256 points per block are fastest, 4096 half as fast)."""


@dataclass(frozen=True)
class PhiNetwork:
    """Configuration of a phi-network (module docstring).

    Parameters
    ----------
    widths : tuple of int
        Hidden widths (at least one), e.g. ``(64, 64, 64)``; the input width n_s^2 comes from
        the surface and k, the output width is 1.
    activation : {"gelu", "tanh", "softplus"}
        Smooth activation (three derivatives are used).  ``gelu`` is exact (erf).
    k : int >= 1
        Degree of the sections whose projector s_hat s_hat^dagger gives the features.
    seed : int >= 0
        Initialisation seed (layer l draws from ``SeedSequence(seed, spawn_key=(l,))``, as
        :func:`mfarray.networks.init`).
    parameterization : {"ntk", "standard"}
    sigma_w, sigma_b : float >= 0
        Weight and bias scales (module docstring).
    zero_head : bool
        Start the output layer at zero (phi = 0, g = g_FS at initialisation).
    """

    widths: tuple = (64, 64, 64)
    activation: str = "gelu"
    k: int = 1
    seed: int = 0
    parameterization: str = "ntk"
    sigma_w: float = 1.0
    sigma_b: float = 1.0
    zero_head: bool = True

    def __post_init__(self):
        if isinstance(self.widths, (str, bytes)) or not hasattr(self.widths, "__iter__"):
            raise TypeError(f"widths must be a tuple of hidden widths (ints), e.g. (64, 64, 64); got {self.widths!r}")
        widths = tuple(self.widths)
        if not all(isinstance(w, (int, np.integer)) and not isinstance(w, bool) for w in widths):
            raise TypeError(f"widths must be integers (hidden widths), e.g. (64, 64, 64); got {self.widths!r}")
        widths = tuple(int(w) for w in widths)
        if not widths or any(w < 1 for w in widths):
            raise ValueError(f"widths must be one or more hidden widths >= 1, e.g. (64, 64, 64); got {self.widths!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS} (smooth: the metric needs act''); "
                             f"got {self.activation!r}")
        if self.parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}; got {self.parameterization!r}")
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or not 1 <= self.k <= MAX_DEGREE:
            raise ValueError(f"k must be an integer in [1, {MAX_DEGREE}] (the degree of the sections); got {self.k!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0; got {self.seed!r}")
        for name in ("sigma_w", "sigma_b"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float, np.floating)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0; got {v!r}")
            object.__setattr__(self, name, float(v))
        object.__setattr__(self, "widths", widths)
        object.__setattr__(self, "k", int(self.k))
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "zero_head", bool(self.zero_head))

    def to_attrs(self) -> dict:
        """JSON-able description (for Dataset attributes); :meth:`from_attrs` inverts it."""
        return {"widths": list(self.widths), "activation": self.activation, "k": self.k, "seed": self.seed,
                "parameterization": self.parameterization, "sigma_w": self.sigma_w, "sigma_b": self.sigma_b,
                "zero_head": self.zero_head}

    @classmethod
    def from_attrs(cls, attrs: dict) -> PhiNetwork:
        return cls(**{**attrs, "widths": tuple(attrs["widths"])})


# ----------------------------------------------------------------------------- shapes and parameters
def _all_widths(config: PhiNetwork, n_sections: int) -> tuple:
    return (n_sections * n_sections, *config.widths, 1)


def layer_widths(config: PhiNetwork, surface: Hypersurface) -> tuple:
    """``(n_s^2, *config.widths, 1)``: the widths of every layer for sections of ``surface``."""
    return _all_widths(config, section_count(surface, config.k))


def num_params(config: PhiNetwork, surface: Hypersurface) -> int:
    """Number of parameters P of the network for ``surface``."""
    return networks.num_params(networks.MLP(layer_widths(config, surface)))


def _scales(config: PhiNetwork, widths: tuple) -> tuple[tuple, float]:
    """Forward-pass scales: (s_l for each layer, s_b)."""
    if config.parameterization == "ntk":
        return tuple(config.sigma_w / math.sqrt(d) for d in widths[:-1]), config.sigma_b
    return tuple(1.0 for _ in widths[:-1]), 1.0


def init(config: PhiNetwork, surface: Hypersurface, *, like: Array | None = None) -> Array:
    """Initial flat parameters (P,) float64 (module docstring); ``like`` moves them to its namespace."""
    widths = layer_widths(config, surface)
    mlp = networks.MLP(widths)
    layers = [list(layer) for layer in networks.init(mlp, config.seed)]
    if config.parameterization == "standard":
        for l, d in enumerate(widths[:-1]):
            layers[l][0] = layers[l][0] * (config.sigma_w / math.sqrt(d))
            layers[l][1] = layers[l][1] * config.sigma_b
    if config.zero_head:
        layers[-1] = [np.zeros_like(a) for a in layers[-1]]
    flat = networks.flatten(tuple(tuple(layer) for layer in layers))
    flat = np.ascontiguousarray(flat, dtype=np.float64)
    if like is not None:
        flat = backend.namespace(like).asarray(flat)
    return flat


def unflatten(config: PhiNetwork, params: Array, n_sections: int) -> tuple:
    """Flat parameters -> ((W_0, b_0), ..., (W_L, b_L)) views (networks' order)."""
    widths = _all_widths(config, n_sections)
    mlp = networks.MLP(widths)
    if getattr(params, "ndim", None) != 1 or params.shape[0] != networks.num_params(mlp):
        raise ValueError(f"params must be a flat vector of shape ({networks.num_params(mlp)},) for widths {widths} "
                         f"(from init(config, surface)); got shape {tuple(getattr(params, 'shape', ()))}")
    return networks.unflatten(mlp, params)


# ----------------------------------------------------------------------------- workspace
class Workspace:
    """Reusable arrays for the jets of one block at a time (module docstring, Cost).

    Fresh arrays of a few hundred kB per layer and block cost page faults on every call (measured:
    forward + pull-back 1.3-1.8x slower); a workspace keeps them, keyed by name and shape, so
    blocks of one size reuse the same memory (one set per block shape: use it for blocks of a few
    sizes).  One per thread; a pull-back made with it (:func:`metric_and_pullback`) is valid until
    the workspace's next forward pass (then it raises RuntimeError).
    """

    def __init__(self) -> None:
        self._arrays: dict = {}
        self.generation = 0

    def get(self, name: Any, shape: tuple, like: Array, dtype: Any = None) -> Array:
        """An uninitialised array ``name`` of ``shape`` in ``like``'s namespace (kept for reuse)."""
        m = _raw(like)
        dtype = m.float64 if dtype is None else dtype
        key = (name, tuple(shape), np.dtype(dtype).str, m.__name__)
        a = self._arrays.get(key)
        if a is None:
            a = self._arrays[key] = m.empty(shape, dtype=dtype)
        return a


class _Fresh(Workspace):
    """A workspace that keeps nothing (one-off calls)."""

    def get(self, name: Any, shape: tuple, like: Array, dtype: Any = None) -> Array:
        m = _raw(like)
        return m.empty(shape, dtype=m.float64 if dtype is None else dtype)


# ----------------------------------------------------------------------------- activations
def _raw(x):
    """The array module itself (numpy or cupy): ufuncs with ``out=`` and einsum for the hot path."""
    return backend.cupy() if backend.is_cupy(x) else np


def _erf(x, out=None):
    if backend.is_cupy(x):
        from cupyx.scipy.special import erf
    else:
        from scipy.special import erf
    return erf(x) if out is None else erf(x, out=out)


_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _act(name, z, out0, out1, out2, out3, tmp1, tmp2):
    """act, act', act'' (and act''' when ``out3`` is given) at z into the ``out`` arrays (z's
    shape), with two scratch arrays: no allocation."""
    m = _raw(z)
    if name == "tanh":
        t, d1 = m.tanh(z, out=out0), out1
        m.multiply(t, t, out=d1)
        m.subtract(1.0, d1, out=d1)  # 1 - t^2
        m.multiply(t, d1, out=out2)
        out2 *= -2.0  # -2 t t'
        if out3 is not None:  # 2 t' (3 t^2 - 1)
            m.multiply(t, t, out=out3)
            out3 *= 3.0
            out3 -= 1.0
            out3 *= d1
            out3 *= 2.0
        return
    if name == "softplus":
        m.logaddexp(0.0, z, out=out0)
        p = out1  # the logistic function 0.5 (1 + tanh(z/2)), without overflow
        m.multiply(z, 0.5, out=p)
        m.tanh(p, out=p)
        p += 1.0
        p *= 0.5
        m.subtract(1.0, p, out=out2)
        out2 *= p  # p (1 - p)
        if out3 is not None:  # p (1 - p) (1 - 2 p)
            m.multiply(p, -2.0, out=out3)
            out3 += 1.0
            out3 *= out2
        return
    # gelu(z) = z Phi(z): Phi' = pdf, pdf' = -z pdf
    cdf, pdf = tmp1, tmp2
    m.multiply(z, _INV_SQRT2, out=cdf)
    _erf(cdf, out=cdf)
    cdf += 1.0
    cdf *= 0.5
    m.multiply(z, z, out=out2)  # z^2 (until act'' is formed)
    m.multiply(out2, -0.5, out=pdf)
    m.exp(pdf, out=pdf)
    pdf *= _INV_SQRT2PI
    m.multiply(z, cdf, out=out0)
    m.multiply(z, pdf, out=out1)
    out1 += cdf  # Phi + z pdf
    if out3 is not None:  # (z^2 - 4) z pdf
        m.subtract(out2, 4.0, out=out3)
        out3 *= z
        out3 *= pdf
    m.subtract(2.0, out2, out=out2)
    out2 *= pdf  # (2 - z^2) pdf


def _act_value(name, z):
    m = _raw(z)
    if name == "tanh":
        return m.tanh(z)
    if name == "softplus":
        return m.logaddexp(0.0, z)
    return z * 0.5 * (1.0 + _erf(z * _INV_SQRT2))


# ----------------------------------------------------------------------------- channel layout
class _Layout(NamedTuple):
    kd: int
    C: int  # 1 + 2 kd + kd^2
    re: slice  # Re d_a z (kd channels)
    im: slice  # Im d_a z
    d: slice  # re and im
    dd: slice  # all kd^2 mixed channels
    diag: slice  # d_a dbar_a z
    pr: slice  # Re d_a dbar_b z, a < b
    pi: slice  # Im d_a dbar_b z, a < b
    pairs: tuple  # ((a, b), ...) with a < b, the order of pr and pi
    aa: np.ndarray  # diag then pairs: the (a, b) of each mixed channel's complex entry
    bb: np.ndarray


@functools.lru_cache(maxsize=None)
def _layout(kd: int) -> _Layout:
    ia, ib = np.triu_indices(kd, 1)
    C = 1 + 2 * kd + kd * kd
    npair = len(ia)
    s = 1 + 2 * kd
    return _Layout(kd, C, slice(1, 1 + kd), slice(1 + kd, s), slice(1, s), slice(s, C), slice(s, s + kd),
                   slice(s + kd, s + kd + npair), slice(s + kd + npair, C), tuple(zip(ia.tolist(), ib.tolist())),
                   np.concatenate([np.arange(kd), ia]), np.concatenate([np.arange(kd), ib]))


@functools.lru_cache(maxsize=None)
def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The pairs c < d (row-major) of n indices."""
    return np.triu_indices(n, 1)


_R2 = 1.0 / math.sqrt(2.0)


def _rank1_features(A, Bv, xp):
    """u_j = sum_cd conj(B_j)_cd T_cd for T_cd = A_c conj(Bv_d) and the basis B_j of
    :func:`mfarray.linalg.real_basis`: A, Bv (..., n) complex -> (..., n^2) complex.  On T
    Hermitian it is hermitian_to_real(T); it is complex-linear in T, so it also maps the
    derivatives d_a M = V_a s_hat^dagger and V_a V_b^dagger of M = s_hat s_hat^dagger to those of u:
    T_cc, then per pair c < d, (T_cd + T_dc)/sqrt2 and -i (T_cd - T_dc)/sqrt2 (T is never formed)."""
    n = A.shape[-1]
    ic, id_ = _pairs(n)
    Bc = xp.conj(Bv)
    x = A[..., ic] * Bc[..., id_]  # T_cd
    y = A[..., id_] * Bc[..., ic]  # T_dc
    out = xp.empty(tuple(A.shape[:-1]) + (n * n,), dtype=xp.complex128)
    out[..., :n] = A * Bc
    out[..., n::2] = (x + y) * _R2
    out[..., n + 1::2] = (y - x) * (1j * _R2)
    return out


def _add_outer(lay, H, x, y, a2, ws):
    """H[dd] += act'' * (real coordinates of dz dz^dagger), dz = x + i y (kd, B, d):
    |dz_a|^2 on the diagonal; Re, Im of dz_a conj(dz_b) = (x_a x_b + y_a y_b) + i (y_a x_b - x_a y_b)."""
    m = _raw(H)
    px, py, t = (ws.get(name, x.shape, x) for name in ("px", "py", "t3"))
    m.multiply(x, a2, out=px)
    m.multiply(y, a2, out=py)
    m.multiply(px, x, out=t)
    H[lay.diag] += t
    m.multiply(py, y, out=t)
    H[lay.diag] += t
    t = t[0]
    R, I = H[lay.pr], H[lay.pi]
    for p, (a, b) in enumerate(lay.pairs):
        m.multiply(px[a], x[b], out=t)
        R[p] += t
        m.multiply(py[a], y[b], out=t)
        R[p] += t
        m.multiply(py[a], x[b], out=t)
        I[p] += t
        m.multiply(px[a], y[b], out=t)
        I[p] -= t


def _add_polar(lay, H, x, y, dx, dy, a, ws):
    """H[dd] += a * (real coordinates of dz z^dagger + z dz^dagger), z = x + i y, dz = dx + i dy
    (kd, B, d): the derivative of :func:`_add_outer`'s z z^dagger along dz.  Diagonal
    2 (x_a dx_a + y_a dy_a); for a < b, Re: x_a dx_b + dx_a x_b + y_a dy_b + dy_a y_b, Im:
    y_a dx_b + dy_a x_b - x_a dy_b - dx_a y_b."""
    m = _raw(H)
    ax, ay, adx, ady, t = (ws.get(name, x.shape, x) for name in ("pax", "pay", "padx", "pady", "pt"))
    m.multiply(x, a, out=ax)
    m.multiply(y, a, out=ay)
    m.multiply(dx, a, out=adx)
    m.multiply(dy, a, out=ady)
    m.multiply(ax, dx, out=t)
    H[lay.diag] += t
    H[lay.diag] += t
    m.multiply(ay, dy, out=t)
    H[lay.diag] += t
    H[lay.diag] += t
    t = t[0]
    R, I = H[lay.pr], H[lay.pi]
    for p, (i, j) in enumerate(lay.pairs):
        for u, v in ((ax, dx), (adx, x), (ay, dy), (ady, y)):
            m.multiply(u[i], v[j], out=t)
            R[p] += t
        for u, v, add in ((ay, dx, True), (ady, x, True), (ax, dy, False), (adx, y, False)):
            m.multiply(u[i], v[j], out=t)
            if add:
                I[p] += t
            else:
                I[p] -= t

def _outer_adjoint(lay, ob, x, y, ws):
    """Adjoint of the real coordinates of dz dz^dagger (see :func:`_add_outer`): the cotangents
    ``ob`` (kd^2, B, d) of the mixed channels -> (xbar, ybar) as one (2 kd, B, d) array."""
    m = _raw(ob)
    kd = lay.kd
    out = ws.get("A", (2 * kd,) + tuple(ob.shape[1:]), ob)
    xbar, ybar = out[:kd], out[kd:]
    d2 = ws.get("t3", x.shape, x)
    m.multiply(ob[:kd], 2.0, out=d2)
    m.multiply(x, d2, out=xbar)
    m.multiply(y, d2, out=ybar)
    t = d2[0]
    R, I = ob[kd:kd + len(lay.pairs)], ob[kd + len(lay.pairs):]
    for p, (a, b) in enumerate(lay.pairs):
        Rp, Ip = R[p], I[p]
        m.multiply(x[b], Rp, out=t)
        xbar[a] += t
        m.multiply(y[b], Ip, out=t)
        xbar[a] -= t
        m.multiply(x[a], Rp, out=t)
        xbar[b] += t
        m.multiply(y[a], Ip, out=t)
        xbar[b] += t
        m.multiply(y[b], Rp, out=t)
        ybar[a] += t
        m.multiply(x[b], Ip, out=t)
        ybar[a] += t
        m.multiply(y[a], Rp, out=t)
        ybar[b] += t
        m.multiply(x[a], Ip, out=t)
        ybar[b] -= t
    return out


# ----------------------------------------------------------------------------- features
class Features(NamedTuple):
    """The input jets at N points: u (N, F) real, du (N, kd, F) complex holomorphic
    derivatives d_a u, ddu (N, kd, kd, F) complex Hermitian in (a, b): d_a dbar_b u."""

    u: Array
    du: Array
    ddu: Array


def _check_frame(config, frame):
    if not isinstance(frame, SectionFrame):
        raise TypeError(f"frame must be a SectionFrame (mfarray.kahler.section_frame); got {type(frame).__name__}")
    if frame.k != config.k:
        raise ValueError(f"frame has sections of degree k = {frame.k} but the network's config has k = {config.k}: "
                         f"build the frame with section_exponents(surface, {config.k})")
    return backend.namespace(frame.s)


def _complex_jets(frame: SectionFrame, pairs: tuple[np.ndarray, np.ndarray] | None = None):
    """(u, du, ddu) of the features, ddu only for the (a, b) in ``pairs`` (default: all)."""
    xp = backend.namespace(frame.s)
    s, V, g, k = frame.s, frame.ds, frame.g_fs, frame.k
    kd = V.shape[1]
    u = xp.real(_rank1_features(s, s, xp))  # M = s_hat s_hat^dagger
    du = _rank1_features(V, s[:, None, :], xp)  # d_a M_cd = V_ac conj(s_d)
    if pairs is None:
        a, b = np.repeat(np.arange(kd), kd), np.tile(np.arange(kd), kd)
    else:
        a, b = pairs
    ai, bi = xp.asarray(a), xp.asarray(b)
    # d_a dbar_b M_cd = V_ac conj(V_bd) - k g_FS,ab M_cd
    ddu = _rank1_features(V[:, ai], V[:, bi], xp)
    ddu -= (k * g[:, ai, bi])[:, :, None] * u[:, None, :]
    return u, du, ddu


def features(frame: SectionFrame) -> Features:
    """The input jets of the network at the frame's points, in its charts (module docstring);
    ``u`` equals ``hermitian_to_real(s_hat s_hat^dagger)``."""
    xp = backend.namespace(frame.s)
    u, du, ddu = _complex_jets(frame)
    N, kd = frame.ds.shape[:2]
    return Features(u, du, xp.reshape(ddu, (N, kd, kd, -1)))


def _input_channels(frame: SectionFrame, lay: _Layout, xp, ws):
    """The input jets as channels (C, N, F) (layout of :class:`_Layout`)."""
    u, du, dd = _complex_jets(frame, (lay.aa, lay.bb))  # dd: (N, kd + npair, F), diagonal first
    kd = lay.kd
    N, F = u.shape
    X = ws.get("X", (lay.C, N, F), u)
    X[0] = u
    duT = xp.permute_dims(du, (1, 0, 2))
    X[lay.re] = xp.real(duT)
    X[lay.im] = xp.imag(duT)
    ddT = xp.permute_dims(dd, (1, 0, 2))
    X[lay.diag] = xp.real(ddT[:kd])
    X[lay.pr] = xp.real(ddT[kd:])
    X[lay.pi] = xp.imag(ddT[kd:])
    return X


# ----------------------------------------------------------------------------- forward / reverse
def _affine(Hin, W, s, sb, b, out):
    """All channels times s W, the bias on the value channel: (C, B, d) -> ``out`` (C, B, d')
    (one GEMM)."""
    C, B, d = Hin.shape
    _raw(Hin).matmul(Hin.reshape(C * B, d), W, out=out.reshape(C * B, W.shape[1]))
    if s != 1.0:
        out *= s
    if sb != 0.0:
        out[0] += sb * b
    return out


def _forward(config, layers, X, lay, keep, ws):
    """Jets of every layer from the input channels X (C, B, F); returns the output channels
    (C, B) and, with ``keep``, the tape [(Z^l, H^l, act', act'', act''') for each hidden layer].

    Per hidden layer: H[0] = act(z), H[1:] = act'(z) Z[1:] (d and dd channels), then
    H[dd] += act''(z) (dz dz^dagger)."""
    widths = (X.shape[2],) + tuple(W.shape[1] for W, _ in layers)
    scales, sb = _scales(config, widths)
    m = _raw(X)
    C, B = X.shape[:2]
    tape = []
    W0, b0 = layers[0]
    Z = _affine(X, W0, scales[0], sb, b0, ws.get(("Z", 0), (C, B, widths[1]), X))
    for l in range(1, len(layers)):
        d = widths[l]
        tag = l if keep else 0  # the tape keeps every layer's arrays; evaluation reuses one set
        a1, a2 = ws.get(("a1", tag), (B, d), X), ws.get(("a2", tag), (B, d), X)
        a3 = ws.get(("a3", tag), (B, d), X) if keep else None
        H = ws.get(("H", tag), (C, B, d), X)
        _act(config.activation, Z[0], H[0], a1, a2, a3, ws.get("s1", (B, d), X), ws.get("s2", (B, d), X))
        m.multiply(Z[1:], a1, out=H[1:])
        _add_outer(lay, H, Z[lay.re], Z[lay.im], a2, ws)
        if keep:
            tape.append((Z, H, a1, a2, a3))
        W, b = layers[l]
        Z = _affine(H, W, scales[l], sb, b, ws.get(("Z", l if keep else l % 2), (C, B, widths[l + 1]), X))
    return Z[:, :, 0], tape


def _forward_tangent(config, layers, dlayers, X, lay, ws):
    """The output channels (C, B) of :func:`_forward` and their derivative along the parameter
    direction ``dlayers`` (forward mode in the parameters; the inputs X do not depend on them).

    Per affine layer dZ = s (dH W + H dW) + s_b db (bias on the value channel); per activation,
    differentiating H of :func:`_forward`: dH[0] = act' dZ[0], dH[1:] = act' dZ[1:] + act'' dZ[0]
    Z[1:], dH[dd] += act^(3) dZ[0] (dz dz^dagger) + act'' (t z^dagger + z t^dagger), t the
    tangent of dz (:func:`_add_polar`)."""
    widths = (X.shape[2],) + tuple(W.shape[1] for W, _ in layers)
    scales, sb = _scales(config, widths)
    m = _raw(X)
    C, B = X.shape[:2]
    (W0, b0), (dW0, db0) = layers[0], dlayers[0]
    Z = _affine(X, W0, scales[0], sb, b0, ws.get(("Z", 0), (C, B, widths[1]), X))
    dZ = _affine(X, dW0, scales[0], sb, db0, ws.get(("dZ", 0), (C, B, widths[1]), X))
    for l in range(1, len(layers)):
        d = widths[l]
        a1, a2, a3, t = (ws.get(name, (B, d), X) for name in ("a1", "a2", "a3", "ta"))
        H, dH, T = (ws.get(name, (C, B, d), X) for name in ("H", "dH", "tH"))
        _act(config.activation, Z[0], H[0], a1, a2, a3, ws.get("s1", (B, d), X), ws.get("s2", (B, d), X))
        m.multiply(Z[1:], a1, out=H[1:])
        _add_outer(lay, H, Z[lay.re], Z[lay.im], a2, ws)
        m.multiply(dZ, a1, out=dH)
        m.multiply(dZ[0], a2, out=t)
        m.multiply(Z[1:], t, out=T[1:])
        dH[1:] += T[1:]
        m.multiply(dZ[0], a3, out=t)
        _add_outer(lay, dH, Z[lay.re], Z[lay.im], t, ws)
        _add_polar(lay, dH, Z[lay.re], Z[lay.im], dZ[lay.re], dZ[lay.im], a2, ws)
        (W, b), (dW, db) = layers[l], dlayers[l]
        shape = (C, B, widths[l + 1])
        Z = _affine(H, W, scales[l], sb, b, ws.get(("Z", l % 2), shape, X))
        dZ = _affine(dH, W, scales[l], 0.0, b, ws.get(("dZ", l % 2), shape, X))
        dZ += _affine(H, dW, scales[l], sb, db, ws.get("tZ", shape, X))
    return Z[:, :, 0], dZ[:, :, 0]

def _channel_dot(a, b, out):
    """out = sum_c a[c] b[c] for (c, B, d) arrays."""
    if isinstance(a, np.ndarray):
        return np.einsum("cbw,cbw->bw", a, b, out=out)
    out[...] = (a * b).sum(axis=0)  # CuPy's einsum has no out=
    return out


def _reverse(config, layers, X, lay, tape, Zbar, grads, ws):
    """Accumulate into ``grads`` (views of the flat gradient) the pull-back of the output
    cotangent Zbar (C, B) through the tape of :func:`_forward`.

    Through an activation (H as in :func:`_forward`, Hb its cotangent):
    Zb[1:] = act' Hb[1:];  Zb[d] += act'' A with A = adjoint of dz dz^dagger applied to Hb[dd];
    Zb[0] = act' Hb[0] + act'' sum_{c >= 1} Z[c] Hb[c] + act''' <dz dz^dagger, Hb[dd]>, where the
    last pairing is sum_{c in d} Z[c] A[c] / 2 (the outer product is homogeneous of degree 2)."""
    widths = (X.shape[2],) + tuple(W.shape[1] for W, _ in layers)
    scales, sb = _scales(config, widths)
    m = _raw(X)
    C, B = X.shape[:2]
    Zb = Zbar[:, :, None]
    for l in range(len(layers) - 1, -1, -1):
        W, _ = layers[l]
        d, d_out = widths[l], widths[l + 1]
        Hin = X if l == 0 else tape[l - 1][1]
        Zb2 = Zb.reshape(C * B, d_out)
        gW, gb = grads[l]
        prod = ws.get("gW", (d, d_out), X)
        m.matmul(Hin.reshape(C * B, d).T, Zb2, out=prod)
        if scales[l] != 1.0:
            prod *= scales[l]
        gW += prod
        if sb != 0.0:
            gb += sb * Zb[0].sum(axis=0)
        if l == 0:
            break
        Hb = ws.get("Hb", (C, B, d), X)
        m.matmul(Zb2, W.T, out=Hb.reshape(C * B, d))
        if scales[l] != 1.0:
            Hb *= scales[l]
        Z, _, a1, a2, a3 = tape[l - 1]
        A = _outer_adjoint(lay, Hb[lay.dd], Z[lay.re], Z[lay.im], ws)  # (2 kd, B, d)
        zsum, osum = ws.get("zsum", (B, d), X), ws.get("osum", (B, d), X)
        _channel_dot(Z[1:], Hb[1:], zsum)
        _channel_dot(Z[lay.d], A, osum)
        Zb = ws.get("Zb", (C, B, d), X)  # the old Zb was consumed by the GEMMs above
        m.multiply(Hb[1:], a1, out=Zb[1:])
        A *= a2
        Zb[lay.d] += A
        zsum *= a2
        osum *= a3
        osum *= 0.5
        m.multiply(Hb[0], a1, out=Zb[0])
        Zb[0] += zsum
        Zb[0] += osum
    return grads


def _dd_to_metric(out, lay, xp):
    """The kd^2 mixed output channels of ``out`` (C, B) -> Hermitian (B, kd, kd) complex."""
    kd = lay.kd
    ia, ib = lay.aa[kd:], lay.bb[kd:]
    B = out.shape[1]
    m = xp.zeros((B, kd, kd), dtype=xp.complex128)
    diag = np.arange(kd)
    m[:, diag, diag] = xp.permute_dims(out[lay.diag], (1, 0))
    if len(ia):
        pair = xp.permute_dims(out[lay.pr], (1, 0)) + 1j * xp.permute_dims(out[lay.pi], (1, 0))
        m[:, ia, ib] = pair
        m[:, ib, ia] = xp.conj(pair)
    return m


def _with_fs(g_fs, out, lay, xp):
    """g = g_FS + d dbar phi, exactly Hermitian (the Hermitian part of g_FS, whose chart formula
    leaves round-off on the imaginary diagonal)."""
    return 0.5 * (g_fs + xp.conj(xp.matrix_transpose(g_fs))) + _dd_to_metric(out, lay, xp)


def _metric_cotangent(G, lay, xp):
    """Cotangent of the output channels (C, B) for dl = Re tr(G^dagger dg): the adjoint of
    :func:`_dd_to_metric` (zero on the value and first-derivative channels)."""
    kd = lay.kd
    ia, ib = lay.aa[kd:], lay.bb[kd:]
    out = xp.zeros((lay.C, G.shape[0]), dtype=xp.float64)
    diag = np.arange(kd)
    out[lay.diag] = xp.permute_dims(xp.real(G[:, diag, diag]), (1, 0))
    if len(ia):
        up, lo = G[:, ia, ib], G[:, ib, ia]
        out[lay.pr] = xp.permute_dims(xp.real(up + lo), (1, 0))
        out[lay.pi] = xp.permute_dims(xp.imag(up - lo), (1, 0))
    return out


def _prepare(config, params, frame):
    """(namespace, float64 params, layer views, layout), with the checks naming the argument."""
    xp = _check_frame(config, frame)
    if not (backend.is_cupy(params) or isinstance(params, np.ndarray)):
        params = np.asarray(params)
    if not xp.isdtype(params.dtype, "real floating"):
        raise ValueError(f"params must be a real float vector (from init(config, surface)); got dtype {params.dtype}")
    params = xp.astype(params, xp.float64, copy=False)
    layers = unflatten(config, params, frame.s.shape[1])
    return xp, params, layers, _layout(frame.ds.shape[1])


def _chunks(N, chunk):
    chunk = default_chunk if chunk is None else int(chunk)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1; got {chunk}")
    return [slice(i, min(i + chunk, N)) for i in range(0, N, chunk)] or [slice(0, 0)]


def phi(config: PhiNetwork, params: Array, frame: SectionFrame) -> Array:
    """phi = MLP(hermitian_to_real(s_hat s_hat^dagger)) at the frame's points, (N,) real.

    A plain forward pass, written independently of the jets (tests differentiate it)."""
    xp, params, layers, _ = _prepare(config, params, frame)
    s = frame.s
    h = linalg.hermitian_to_real(s[:, :, None] * xp.conj(s)[:, None, :])
    widths = (h.shape[1],) + tuple(W.shape[1] for W, _ in layers)
    scales, sb = _scales(config, widths)
    for l, (W, b) in enumerate(layers):
        h = scales[l] * (h @ W) + sb * b
        if l < len(layers) - 1:
            h = _act_value(config.activation, h)
    return h[:, 0]


def phi_jets(config: PhiNetwork, params: Array, frame: SectionFrame, *, chunk: int | None = None) -> tuple:
    """(phi (N,), d_a phi (N, kd) complex, d_a dbar_b phi (N, kd, kd) complex Hermitian), in the
    frame's charts, by the forward-mode jets."""
    xp, params, layers, lay = _prepare(config, params, frame)
    N = frame.s.shape[0]
    ws = Workspace()
    vals, ds, dds = [], [], []
    for sl in _chunks(N, chunk):
        out, _ = _forward(config, layers, _input_channels(frame.take(sl), lay, xp, ws), lay, False, ws)
        vals.append(xp.asarray(out[0], copy=True))
        ds.append(xp.permute_dims(out[lay.re] + 1j * out[lay.im], (1, 0)))
        dds.append(_dd_to_metric(out, lay, xp))
    return xp.concat(vals), xp.concat(ds), xp.concat(dds)


def metric(config: PhiNetwork, params: Array, frame: SectionFrame, *, chunk: int | None = None,
           workspace: Workspace | None = None) -> Array:
    """g = g_FS + i dd-bar phi, (N, kd, kd) complex Hermitian, in the frame's charts (blocks of
    ``chunk`` points; ``workspace`` to reuse arrays over calls, default one for this call)."""
    xp, params, layers, lay = _prepare(config, params, frame)
    N = frame.s.shape[0]
    ws = Workspace() if workspace is None else workspace
    ws.generation += 1
    parts = []
    for sl in _chunks(N, chunk):
        out, _ = _forward(config, layers, _input_channels(frame.take(sl), lay, xp, ws), lay, False, ws)
        parts.append(_with_fs(frame.g_fs[sl], out, lay, xp))
    return xp.concat(parts)


def _zero_grads(config, params, n, xp):
    flat = xp.zeros_like(params)
    return flat, unflatten(config, flat, n)


def metric_and_pullback(config: PhiNetwork, params: Array, frame: SectionFrame, *,
                        workspace: Workspace | None = None) -> tuple[Array, Callable[[Array], Array]]:
    """g (N, kd, kd) at the frame's points (one block: pass a mini-batch) and its pull-back
    ``G (N, kd, kd) -> sum_x Re tr(G_x^dagger dg_x/dtheta)`` (P,), reusing the forward pass.

    With a ``workspace`` (one per thread, reused over blocks of one size: much faster) the
    pull-back holds arrays of the workspace: it raises RuntimeError once the workspace has run
    another forward pass.  Without one, the arrays are the pull-back's own."""
    xp, params, layers, lay = _prepare(config, params, frame)
    ws = _Fresh() if workspace is None else workspace
    ws.generation += 1
    generation = ws.generation
    X = _input_channels(frame, lay, xp, ws)
    out, tape = _forward(config, layers, X, lay, True, ws)
    g = _with_fs(frame.g_fs, out, lay, xp)
    N = g.shape[0]

    def pullback(G: Array) -> Array:
        if tuple(G.shape) != (N, lay.kd, lay.kd):
            raise ValueError(f"G must have shape {(N, lay.kd, lay.kd)} (one cotangent per metric); got {tuple(G.shape)}")
        if ws.generation != generation:
            raise RuntimeError("this pull-back's workspace has run another forward pass since: pull back before the "
                               "next call with the same workspace (or pass none)")
        flat, grads = _zero_grads(config, params, frame.s.shape[1], xp)
        _reverse(config, layers, X, lay, tape, _metric_cotangent(G, lay, xp), grads, ws)
        return flat

    return g, pullback


def _chunked_pullback(config, params, frame, cotangent, chunk):
    """sum over blocks of points of the pull-back of the output-channel cotangent
    ``cotangent(sl, lay, xp) -> (C, B)`` for the block ``sl``, (P,)."""
    xp, params, layers, lay = _prepare(config, params, frame)
    flat, grads = _zero_grads(config, params, frame.s.shape[1], xp)
    ws = Workspace()
    for sl in _chunks(frame.s.shape[0], chunk):
        X = _input_channels(frame.take(sl), lay, xp, ws)
        _, tape = _forward(config, layers, X, lay, True, ws)
        _reverse(config, layers, X, lay, tape, cotangent(sl, lay, xp), grads, ws)
    return flat


def metric_vjp(config: PhiNetwork, params: Array, frame: SectionFrame, G: Array, *,
               chunk: int | None = None) -> Array:
    """sum_x Re tr(G_x^dagger dg_x/dtheta), (P,): the parameter gradient of a loss with per-point
    metric gradients G (N, kd, kd) (:mod:`mfarray.losses` convention), in blocks of ``chunk``."""
    N, kd = frame.s.shape[0], frame.ds.shape[1]
    if tuple(G.shape) != (N, kd, kd):
        raise ValueError(f"G must have shape {(N, kd, kd)} (one cotangent per point of the frame); got {tuple(G.shape)}")
    return _chunked_pullback(config, params, frame, lambda sl, lay, xp: _metric_cotangent(G[sl], lay, xp), chunk)


def phi_vjp(config: PhiNetwork, params: Array, frame: SectionFrame, c: Array, *, chunk: int | None = None) -> Array:
    """sum_x c_x d phi(x)/d theta, (P,), for real c (N,): the pull-back of a cotangent on the
    value channel alone (what a phi-flow d phi/dt = v needs: theta += lr sum_x w v d phi/d theta)."""
    N = frame.s.shape[0]
    if tuple(c.shape) != (N,):
        raise ValueError(f"c must have shape ({N},) (one real cotangent per point of the frame); got {tuple(c.shape)}")

    def value_cotangent(sl, lay, xp):
        Zbar = xp.zeros((lay.C, sl.stop - sl.start), dtype=xp.float64)
        Zbar[0] = c[sl]
        return Zbar

    return _chunked_pullback(config, params, frame, value_cotangent, chunk)

def _chunked_tangent(config, params, frame, dparams, chunk):
    """The derivative of the output channels along ``dparams`` (P,), (C, N), in blocks of points."""
    xp, params, layers, lay = _prepare(config, params, frame)
    if not (backend.is_cupy(dparams) or isinstance(dparams, np.ndarray)):
        dparams = np.asarray(dparams)
    if tuple(dparams.shape) != tuple(params.shape) or not xp.isdtype(dparams.dtype, "real floating"):
        raise ValueError(f"dparams must be a real direction of shape {tuple(params.shape)} (one entry per parameter); "
                         f"got shape {tuple(dparams.shape)}, dtype {dparams.dtype}")
    dlayers = unflatten(config, xp.astype(dparams, xp.float64, copy=False), frame.s.shape[1])
    ws = Workspace()
    parts = []
    for sl in _chunks(frame.s.shape[0], chunk):
        _, dout = _forward_tangent(config, layers, dlayers, _input_channels(frame.take(sl), lay, xp, ws), lay, ws)
        parts.append(xp.asarray(dout, copy=True))
    return xp.concat(parts, axis=1), lay, xp


def metric_jvp(config: PhiNetwork, params: Array, frame: SectionFrame, dparams: Array, *,
               chunk: int | None = None) -> Array:
    """dg/dtheta . dparams = i dd-bar (dphi/dtheta . dparams), (N, kd, kd) complex Hermitian: the
    derivative of :func:`metric` along the parameter direction ``dparams`` (P,), by forward mode
    through the jets (:func:`_forward_tangent`), in blocks of ``chunk`` points.  The transpose of
    :func:`metric_vjp`: sum_x Re tr(G_x^dagger metric_jvp(v)_x) = metric_vjp(G) . v."""
    out, lay, xp = _chunked_tangent(config, params, frame, dparams, chunk)
    return _dd_to_metric(out, lay, xp)


def phi_jvp(config: PhiNetwork, params: Array, frame: SectionFrame, dparams: Array, *,
            chunk: int | None = None) -> Array:
    """dphi/dtheta . dparams at the frame's points, (N,) real (the transpose of :func:`phi_vjp`)."""
    out, _, _ = _chunked_tangent(config, params, frame, dparams, chunk)
    return out[0]
