"""Metric flows: one integrator over metric models (kernel 2.12, network 2.8/2.10), their
results, evaluation and prediction.

Layer order inside: sites (boundary) <- models <- integrate <- results <- frozen / evolving
/ kahler (entry points) <- evaluate (after a flow) <- clustered (per-cluster flows).
"""

from ..linalg import positive_definite
from .clustered import clustered_flow
from .evaluate import evaluate, predict
from .evolving import metric_ntk_operator, network_flow, network_metric
from .frozen import kernel_flow, kernel_inputs, resolve_loss
from .integrate import FlowError, StepControl
from .kahler import kahler_flow
from .models import KernelModel, MetricModel, NetworkModel, PotentialModel

__all__ = [
           "FlowError",
           "KernelModel",
           "MetricModel",
           "NetworkModel",
           "PotentialModel",
           "StepControl",
           "clustered_flow",
           "evaluate",
           "kahler_flow",
           "kernel_flow",
           "kernel_inputs",
           "metric_ntk_operator",
           "network_flow",
           "network_metric",
           "positive_definite",
           "predict",
           "resolve_loss",
]
