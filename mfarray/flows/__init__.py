"""Metric flows: one integrator over metric models (kernel 2.12, network 2.8/2.10), their
results, evaluation and prediction.

Layer order inside: sites (boundary) <- models <- integrate <- results <- frozen / evolving
(entry points) <- evaluate (after a flow) <- clustered (per-cluster flows).
"""

from ..linalg import positive_definite
from .clustered import clustered_flow
from .evaluate import evaluate, predict
from .evolving import metric_ntk_operator, network_flow, network_metric
from .frozen import kernel_flow, kernel_inputs, resolve_loss
from .integrate import FlowError, StepControl
from .models import KernelModel, MetricModel, NetworkModel

__all__ = ["clustered_flow", "network_flow", "network_metric", "metric_ntk_operator", "resolve_loss", "kernel_flow",
           "kernel_inputs", "StepControl", "evaluate", "predict", "FlowError", "positive_definite",
           "MetricModel", "KernelModel", "NetworkModel"]
