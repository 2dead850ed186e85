"""Kähler-potential metric models (Appendix B): sections of O(k) in any chart, phi-models
g = g_FS + i dd-bar phi, algebraic metrics and Donaldson's balanced metrics, phi-networks."""

from . import algebraic, potentials, sections, velocities
from .algebraic import (algebraic_metric, algebraic_sigma, balanced_metric, optimise_sigma, t_operator)
from .potentials import SectionPotential, orthonormal_basis, phi_features, phi_metric, phi_metric_vjp, phi_values
from .sections import SectionFrame, section_count, section_exponents, section_frame

__all__ = ["sections", "potentials", "algebraic", "velocities", "algebraic_metric", "algebraic_sigma",
           "balanced_metric", "optimise_sigma", "t_operator", "SectionFrame", "section_frame", "section_exponents", "section_count",
           "SectionPotential", "orthonormal_basis", "phi_values", "phi_metric", "phi_metric_vjp", "phi_features"]
