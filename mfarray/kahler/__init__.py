"""Kähler-potential metric models (Appendix B): sections of O(k) in any chart, phi-models
g = g_FS + i dd-bar phi, algebraic metrics and Donaldson's balanced metrics, phi-networks."""

from . import algebraic, network, potentials, sections, training, velocities
from .algebraic import algebraic_metric, algebraic_sigma, balanced_metric, optimise_sigma, t_operator
from .network import PhiNetwork
from .potentials import CosinePotential, NetworkPotential, SectionPotential, TangentPotential, orthonormal_basis, phi_features, phi_metric, phi_metric_vjp, phi_values
from .sections import SectionFrame, section_count, section_exponents, section_frame
from .training import phi_network_metric, train_phi_network

__all__ = [
    "CosinePotential", "NetworkPotential", "PhiNetwork", "SectionFrame", "SectionPotential", "TangentPotential", "algebraic", "algebraic_metric", "algebraic_sigma",
    "balanced_metric", "network", "optimise_sigma", "orthonormal_basis", "phi_features", "phi_metric",
    "phi_metric_vjp", "phi_network_metric", "phi_values", "potentials", "section_count", "section_exponents",
    "section_frame", "sections", "t_operator", "train_phi_network", "training", "velocities",
]
