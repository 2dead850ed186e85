"""Input features for kernels and networks, as swappable functions z -> x.

The paper (§3.1) feeds networks the real and imaginary parts of the homogeneous coordinates
in the patch normalisation (largest |z_i| scaled to 1).
"""

from __future__ import annotations

from .. import backend
from ..geometry.charts import patch_index, to_patch


def patch_features(z):
    """(n, n+1) complex points -> (n, 2(n+1)) real features [Re z, Im z] with max |z_i| = 1."""
    xp = backend.namespace(z)
    za = to_patch(z, patch_index(z))
    return xp.concat([xp.real(za), xp.imag(za)], axis=-1)
