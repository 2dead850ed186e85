"""Metric flows: frozen-kernel (2.12) with test prediction, guards and evaluation."""

from .evaluate import evaluate
from .frozen import StepControl, kernel_flow, kernel_inputs
from .guard import FlowError, positive_definite

__all__ = ["kernel_flow", "kernel_inputs", "StepControl", "evaluate", "FlowError", "positive_definite"]
