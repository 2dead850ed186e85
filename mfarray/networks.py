r"""Finite fully connected networks (MLPs) in pure array code, NTK parameterisation.

These are the finite-width networks :math:`g_\theta` of Halverson & Ruehle, §2.1 and
Appendix A (eq. A.2-A.3, with depth added), whose parameter derivatives define the
empirical metric-NTK (2.7) (:mod:`mfarray.kernels.empirical`), the evolving-kernel
flow (2.8) and the linearised model (2.10)-(2.11).

Convention (exactly neural-tangents' ``stax.Dense(W_std=sigma_w, b_std=sigma_b,
parameterization="ntk")``)
--------------------------------------------------------------------------------
``widths = (d_0, d_1, ..., d_L, d_{L+1})``: input dimension ``d_0``, ``L`` hidden layers,
``c = d_{L+1}`` outputs.  With :math:`h^0 = x`, for layer ``l = 0..L``

.. math::

    z^l = \frac{\sigma_w}{\sqrt{d_l}}\, h^l W_l + \sigma_b\, b_l,\qquad
    h^{l+1} = \phi(z^l)\ (l < L),\qquad f(x) = z^L \in \mathbb R^c,

with ``W_l`` of shape ``(d_l, d_{l+1})`` (fan-in first, as in neural-tangents),
``b_l`` of shape ``(d_{l+1},)``, all entries :math:`\mathcal N(0, 1)` at
initialisation.  The output layer is linear (no activation).  Biases are always
parameters, also for ``sigma_b = 0`` (their gradient is then zero).

Parameters are a tuple ``((W_0, b_0), ..., (W_L, b_L))``; :func:`flatten` orders them
``W_0 (row-major), b_0, W_1, b_1, ...`` and :func:`jacobian` uses the same order.

Derivatives are hand-written (reverse mode :func:`vjp`, forward mode :func:`jvp`); the
ReLU derivative at 0 is taken to be 0 (as in JAX).  Everything takes its array namespace
from the inputs (``array_api_compat.array_namespace``), so NumPy and CuPy both work;
parameters are drawn with NumPy and moved to a namespace with ``like=``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import array_api_compat
import numpy as np

from . import backend

__all__ = [
    "ACTIVATIONS",
    "MLP",
    "as_params",
    "init",
    "apply",
    "forward",
    "flatten",
    "unflatten",
    "num_params",
    "vjp",
    "jvp",
    "jacobian",
    "tree_map",
    "tree_vdot",
]

ACTIVATIONS = ("relu", "tanh", "identity")

Array = Any  # a NumPy, CuPy or Dask array
Params = tuple[tuple[Array, Array], ...]  # ((W_0, b_0), ..., (W_L, b_L))


@dataclass(frozen=True)
class MLP:
    """Configuration of a fully connected network in NTK parameterisation.

    Parameters
    ----------
    widths : tuple of int
        ``(d_in, hidden_1, ..., hidden_L, c_out)``; at least two entries (``L = 0`` is a
        linear model).
    activation : {"relu", "tanh", "identity"}
    sigma_w, sigma_b : float
        Weight and bias standard deviations (``W_std``, ``b_std`` of neural-tangents).
    """

    widths: tuple
    activation: str = "relu"
    sigma_w: float = 1.0
    sigma_b: float = 0.0

    def __post_init__(self):
        what = "a tuple of integers (d_in, hidden..., c_out)"
        if isinstance(self.widths, (str, bytes)) or not hasattr(self.widths, "__iter__"):
            raise TypeError(f"widths must be {what}; got {self.widths!r}")
        given = tuple(self.widths)
        for w in given:  # a fractional width would be truncated
            if not backend.is_real(w, integer=True):
                raise TypeError(f"widths must be {what}; got {given!r}, whose {w!r} is not an integer")
        widths = tuple(int(w) for w in given)
        if len(widths) < 2 or any(w < 1 for w in widths):
            raise ValueError(f"widths must be (d_in, ..., c_out) with entries >= 1; got {widths}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}; got {self.activation!r}")
        for name in ("sigma_w", "sigma_b"):
            value = getattr(self, name)
            if not backend.is_real(value):
                raise TypeError(f"{name} must be a finite real number >= 0; got {value!r} of type {type(value).__name__}")
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and >= 0; got {value}")
            object.__setattr__(self, name, float(value))
        object.__setattr__(self, "widths", widths)

    @property
    def depth(self) -> int:
        """Number of hidden layers ``L`` (``depth`` of :func:`mfarray.kernels.relu.relu_ntk`)."""
        return len(self.widths) - 2

    @property
    def n_layers(self) -> int:
        """Number of affine layers ``L + 1``."""
        return len(self.widths) - 1

    @property
    def d_in(self) -> int:
        return self.widths[0]

    @property
    def c_out(self) -> int:
        return self.widths[-1]

    @property
    def layer_scales(self) -> tuple:
        """``sigma_w / sqrt(d_l)`` for each layer ``l = 0..L``."""
        return tuple(self.sigma_w / math.sqrt(d) for d in self.widths[:-1])

    @property
    def shapes(self) -> tuple:
        """``((d_l, d_{l+1}), (d_{l+1},))`` for each layer."""
        w = self.widths
        return tuple(((w[l], w[l + 1]), (w[l + 1],)) for l in range(len(w) - 1))


def num_params(config: MLP) -> int:
    """Total number of parameters ``P``."""
    return sum(a * b + b for (a, b), _ in config.shapes)


# ------------------------------------------------------------------ activations
def _act(xp, name, z):
    if name == "relu":
        return xp.where(z > 0, z, xp.zeros_like(z))
    if name == "tanh":
        return xp.tanh(z)
    return z


def _act_deriv(xp, name, z, a=None):
    """phi'(z); ``a = phi(z)`` may be passed to save work (tanh)."""
    if name == "relu":
        return xp.astype(z > 0, z.dtype)
    if name == "tanh":
        t = xp.tanh(z) if a is None else a
        return 1.0 - t * t
    return xp.ones_like(z)


# ------------------------------------------------------------------ helpers
def _check_params(config, params, name="params"):
    shapes = config.shapes
    if len(params) != len(shapes):
        raise ValueError(f"{name} has {len(params)} layers; config {config.widths} needs {len(shapes)}")
    for l, ((W, b), (ws, bs)) in enumerate(zip(params, shapes)):
        if tuple(W.shape) != ws or tuple(b.shape) != bs:
            raise ValueError(
                f"layer {l}: {name} have shapes {tuple(W.shape)}, {tuple(b.shape)}; "
                f"config {config.widths} needs {ws}, {bs}"
            )


def as_params(config: MLP, params: Params | Array, name: str = "params") -> Params:
    """``params`` checked as parameters of ``config``: a tuple ``((W_0, b_0), ...)`` as given, or a
    flat vector of length P (:func:`flatten`'s order) unflattened.  ValueError naming ``name``
    where the shapes do not fit ``config`` or an entry is NaN or inf; TypeError for complex
    entries (the networks are real) and for anything else."""
    if getattr(params, "ndim", None) == 1:
        if params.shape[0] != num_params(config):
            raise ValueError(f"{name} is a flat vector of length {params.shape[0]}; config {config.widths} has "
                             f"P = {num_params(config)} parameters (networks.num_params)")
        params = unflatten(config, params)
    elif not isinstance(params, (tuple, list)):
        raise TypeError(f"{name} must be a parameter tuple ((W_0, b_0), ...) (networks.init) or a flat vector of "
                        f"length P (networks.flatten); got {type(params).__name__}")
    _check_params(config, params, name)
    for l, layer in enumerate(params):
        for part, a in zip(("W", "b"), layer):
            xp = array_api_compat.array_namespace(a)
            if getattr(a.dtype, "kind", None) == "c":
                raise TypeError(f"{name} is complex ({part}_{l} of dtype {a.dtype}); the networks' parameters are "
                                "real: pass real parameters")
            if not bool(xp.all(xp.isfinite(a))):
                raise ValueError(f"{name} has NaN or inf entries ({part}_{l}, layer {l}): pass finite parameters, "
                                 "e.g. mfarray.networks.init(config, seed)")
    return tuple(tuple(layer) for layer in params)


def _prep_x(config, params, x):
    if not array_api_compat.is_array_api_obj(x):
        x = np.asarray(x, dtype=np.float64)
    xp = array_api_compat.array_namespace(x, params[0][0])
    if x.ndim != 2 or x.shape[1] != config.d_in:
        raise ValueError(f"x must have shape (n, {config.d_in}); got {tuple(x.shape)}")
    x = xp.astype(x, params[0][0].dtype, copy=False)
    return xp, x


def tree_map(fn: Callable[..., Array], *trees) -> Params:
    """Apply ``fn`` leaf-wise to parameter tuples of the same structure."""
    return tuple(tuple(fn(*leaves) for leaves in zip(*layers)) for layers in zip(*trees))


def tree_vdot(p: Params, q: Params) -> Array:
    """Euclidean inner product ``<p, q>`` of two parameter tuples (a 0-d array)."""
    xp = array_api_compat.array_namespace(p[0][0])
    return sum(xp.sum(a * b) for la, lb in zip(p, q) for a, b in zip(la, lb))


# ------------------------------------------------------------------ init / apply
def init(config: MLP, seed: int, *, like: Array | None = None) -> Params:
    """Draw parameters, all entries N(0, 1) (NTK parameterisation), float64.

    Layer ``l`` uses ``numpy.random.default_rng(SeedSequence(seed, spawn_key=(l,)))`` and
    draws ``W_l`` then ``b_l``, so each layer depends only on ``(seed, l, shapes)``.

    Parameters
    ----------
    config : MLP
    seed : int
    like : array, optional
        Move the parameters to this array's namespace (e.g. a CuPy array).

    Returns
    -------
    tuple of ``(W_l, b_l)`` with shapes ``(d_l, d_{l+1})``, ``(d_{l+1},)``.
    """
    params = []
    for l, (ws, bs) in enumerate(config.shapes):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(l,)))
        W = rng.standard_normal(ws)
        b = rng.standard_normal(bs)
        params.append((W, b))
    if like is not None:
        xp = array_api_compat.array_namespace(like)
        params = [(xp.asarray(W), xp.asarray(b)) for W, b in params]
    return tuple(params)


def forward(config: MLP, params: Params, x: Array) -> tuple[list[Array], list[Array]]:
    """Forward pass keeping the intermediates needed for derivatives.

    Returns
    -------
    hs : list of L + 1 arrays, ``hs[l] = h^l`` of shape ``(n, d_l)`` (``hs[0] = x``)
    zs : list of L + 1 arrays, ``zs[l] = z^l`` of shape ``(n, d_{l+1})``; ``zs[-1] = f(x)``.
    """
    _check_params(config, params)
    xp, h = _prep_x(config, params, x)
    hs, zs = [], []
    scales = config.layer_scales
    sb = config.sigma_b
    last = config.n_layers - 1
    for l, (W, b) in enumerate(params):
        hs.append(h)
        z = scales[l] * (h @ W)
        if sb != 0.0:
            z = z + sb * b
        zs.append(z)
        if l < last:
            h = _act(xp, config.activation, z)
    return hs, zs


def apply(config: MLP, params: Params, x: Array) -> Array:
    """Network output ``f(x)``: ``x`` (n, d_in) -> (n, c)."""
    return forward(config, params, x)[1][-1]


# ------------------------------------------------------------------ flatten
def flatten(params: Params) -> Array:
    """Parameters -> 1-D vector of length P: ``W_0`` (row-major), ``b_0``, ``W_1``, ..."""
    xp = array_api_compat.array_namespace(params[0][0])
    return xp.concat([xp.reshape(a, (-1,)) for layer in params for a in layer])


def unflatten(config: MLP, vector: Array) -> Params:
    """Inverse of :func:`flatten`: a length-P vector -> parameter tuple (views where possible)."""
    xp = array_api_compat.array_namespace(vector)
    if vector.ndim != 1 or vector.shape[0] != num_params(config):
        raise ValueError(f"vector must have shape ({num_params(config)},); got {tuple(vector.shape)}")
    out, i = [], 0
    for ws, bs in config.shapes:
        nw = ws[0] * ws[1]
        W = xp.reshape(vector[i:i + nw], ws)
        i += nw
        b = vector[i:i + bs[0]]
        i += bs[0]
        out.append((W, b))
    return tuple(out)


# ------------------------------------------------------------------ derivatives
def _backward_signals(config, xp, params, zs, hs):
    """phi'(z^l) for the hidden layers l < L."""
    out = []
    for l in range(config.n_layers - 1):
        a = hs[l + 1] if config.activation == "tanh" else None
        out.append(_act_deriv(xp, config.activation, zs[l], a))
    return out


def vjp(config: MLP, params: Params, x: Array, cotangent: Array) -> Params:
    r"""Reverse mode: :math:`\sum_{n,i} u_{ni}\, \partial f_i(x_n)/\partial\theta`.

    Parameters
    ----------
    x : (n, d_in) array
    cotangent : (n, c) array ``u``

    Returns
    -------
    Parameter tuple (same structure/shapes as ``params``): ``J(x)^T u``.
    """
    hs, zs = forward(config, params, x)
    xp = array_api_compat.array_namespace(zs[-1])
    u = xp.astype(xp.asarray(cotangent), zs[-1].dtype, copy=False)
    if tuple(u.shape) != tuple(zs[-1].shape):
        raise ValueError(f"cotangent must have shape {tuple(zs[-1].shape)}; got {tuple(u.shape)}")
    dphi = _backward_signals(config, xp, params, zs, hs)
    scales = config.layer_scales
    sb = config.sigma_b
    grads = [None] * config.n_layers
    delta = u  # d<u, f>/d z^l, shape (n, d_{l+1})
    for l in range(config.n_layers - 1, -1, -1):
        W = params[l][0]
        gW = scales[l] * (xp.matrix_transpose(hs[l]) @ delta)
        gb = sb * xp.sum(delta, axis=0)
        grads[l] = (gW, gb)
        if l > 0:
            delta = scales[l] * (delta @ xp.matrix_transpose(W)) * dphi[l - 1]
    return tuple(grads)


def jvp(config: MLP, params: Params, x: Array, tangent: Params) -> Array:
    r"""Forward mode: :math:`\sum_I \partial f_i(x_n)/\partial\theta_I\, t_I`.

    Parameters
    ----------
    x : (n, d_in) array
    tangent : parameter tuple ``t`` (same shapes as ``params``)

    Returns
    -------
    (n, c) array ``J(x) t`` (the first-order change of ``f`` along ``t``, eq. 2.10).
    """
    _check_params(config, tangent)
    hs, zs = forward(config, params, x)
    xp = array_api_compat.array_namespace(zs[-1])
    dphi = _backward_signals(config, xp, params, zs, hs)
    scales = config.layer_scales
    sb = config.sigma_b
    dh = None  # tangent of h^l; h^0 = x is fixed
    for l, ((W, _), (tW, tb)) in enumerate(zip(params, tangent)):
        dz = scales[l] * (hs[l] @ tW)
        if dh is not None:
            dz = dz + scales[l] * (dh @ W)
        if sb != 0.0:
            dz = dz + sb * tb
        if l < config.n_layers - 1:
            dh = dz * dphi[l]
    return dz


def output_signals(config: MLP, params: Params, x: Array) -> tuple[list[Array], list[Array]]:
    r"""Back-propagated signals :math:`B_l[n, i, :] = \partial f_i(x_n)/\partial z^l`.

    Returns ``(hs, Bs)``: ``hs`` as in :func:`forward`, and ``Bs[l]`` of shape
    ``(n, c, d_{l+1})`` for the hidden layers ``l = 0..L-1`` (for the output layer
    ``l = L`` the signal is the identity and is not stored).
    """
    hs, zs = forward(config, params, x)
    xp = array_api_compat.array_namespace(zs[-1])
    dphi = _backward_signals(config, xp, params, zs, hs)
    scales = config.layer_scales
    L = config.n_layers - 1
    Bs = [None] * L
    if L == 0:
        return hs, Bs
    # l = L - 1: B[n, i, a] = phi'(z^{L-1})[n, a] * s_L W_L[a, i]
    WL = scales[L] * xp.matrix_transpose(params[L][0])  # (c, d_L)
    B = WL[None, :, :] * dphi[L - 1][:, None, :]
    Bs[L - 1] = B
    for l in range(L - 1, 0, -1):
        n, c, d = B.shape
        B = xp.reshape(xp.reshape(B, (n * c, d)) @ (scales[l] * xp.matrix_transpose(params[l][0])),
                       (n, c, -1))
        B = B * dphi[l - 1][:, None, :]
        Bs[l - 1] = B
    return hs, Bs


def jacobian(config: MLP, params: Params, x: Array) -> Array:
    r"""Full Jacobian :math:`\partial f_i(x_n)/\partial\theta_I`, shape (n, c, P) (small nets).

    Column order is that of :func:`flatten`.
    """
    hs, Bs = output_signals(config, params, x)
    xp = array_api_compat.array_namespace(hs[0])
    n, c = x.shape[0], config.c_out
    scales = config.layer_scales
    sb = config.sigma_b
    L = config.n_layers - 1
    blocks = []
    eye = xp.eye(c, dtype=hs[0].dtype)
    for l in range(L + 1):
        B = Bs[l] if l < L else xp.broadcast_to(eye[None], (n, c, c))
        d_in, d_out = hs[l].shape[1], B.shape[2]
        JW = scales[l] * hs[l][:, None, :, None] * B[:, :, None, :]  # (n, c, d_in, d_out)
        blocks.append(xp.reshape(JW, (n, c, d_in * d_out)))
        blocks.append(sb * B)
    return xp.concat(blocks, axis=2)
