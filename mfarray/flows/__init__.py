"""Metric flows: frozen-kernel (2.12) with test prediction, evolving-kernel network flows (2.8)
and their linearisation (2.10), guards and evaluation."""

from .evaluate import evaluate
from .evolving import metric_ntk_operator, network_flow, network_metric
from .frozen import StepControl, kernel_flow, kernel_inputs, resolve_loss
from .guard import FlowError, positive_definite

__all__ = ["network_flow", "network_metric", "metric_ntk_operator", "resolve_loss", "kernel_flow", "kernel_inputs", "StepControl", "evaluate", "FlowError", "positive_definite"]
