"""Per-channel normalisation, applied on device to [0,1] images (and to generator outputs)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from numpy.typing import ArrayLike


def normalize(x: jax.Array, mean: ArrayLike, std: ArrayLike) -> jax.Array:
  """(x - mean) / std per channel; `mean`/`std` broadcast over the last axis."""
  return (x - jnp.asarray(mean, x.dtype)) / jnp.asarray(std, x.dtype)
