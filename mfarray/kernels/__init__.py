"""Kernels k(x1, x2) -> (n1, n2) as pure functions, metric-NTKs and kernel operators.

Scalar kernels give the Kronecker-structured metric-NTK Theta_{ijkl} = delta_ik delta_jl k
(paper eq. 2.21-2.23).  Every public scalar kernel is a :class:`Kernel` spec carrying its inputs
(homogeneous points or real features), pairwise-ness, symmetry and hyper-parameters;
hyper-parameters are keywords, bound with ``Kernel.bind`` or ``functools.partial`` (read back
with :func:`as_kernel`), each checked against the domain its spec declares (:mod:`.checks`).
A kernel never passes on NaN or inf: such values raise :class:`NonFiniteKernelError` (a
ValueError) naming the kernel.
"""

from .checks import NonFiniteKernelError
from .cosine import cosine_ntk, cosine_ntk_empirical, cosine_net_apply, cosine_net_init
from .empirical import empirical_ntk, empirical_ntk_operator, empirical_ntk_trace, ntk_matvec
from .features import patch_features
from .operators import (BlockwiseOperator, DenseOperator, FactoredOperator, KernelOperator,
                        ZarrOperator, as_operator)
from .gaussnet import gaussnet_nngp, gaussnet_ntk, gaussnet_ntk_empirical
from .fs import delta, gaussian_fs, nearest_index
from .relu import (relu_kernels, relu_kernels_diag, relu_nngp, relu_nngp_diag, relu_ntk,
                   relu_ntk_diag)
from .rescale import det_metric_rescaling, rescaled
from .spec import Kernel, Rescaling, as_kernel, kernel_named, kernel

__all__ = [
    "Kernel", "Rescaling", "as_kernel", "kernel", "kernel_named", "NonFiniteKernelError",
    "cosine_ntk", "cosine_ntk_empirical", "cosine_net_apply", "cosine_net_init",
    "gaussnet_nngp", "gaussnet_ntk", "gaussnet_ntk_empirical",
    "KernelOperator", "DenseOperator", "BlockwiseOperator", "ZarrOperator", "FactoredOperator", "as_operator",
    "empirical_ntk", "empirical_ntk_trace", "empirical_ntk_operator", "ntk_matvec",
    "relu_ntk", "relu_nngp", "relu_kernels", "relu_ntk_diag", "relu_nngp_diag", "relu_kernels_diag",
    "patch_features", "delta", "gaussian_fs", "nearest_index", "det_metric_rescaling", "rescaled"]
