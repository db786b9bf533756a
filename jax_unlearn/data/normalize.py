"""Per-channel normalisation, applied on device to [0,1] images (and to generator outputs)."""

import jax.numpy as jnp


def normalize(x, mean, std):
  """(x - mean) / std per channel; `mean`/`std` broadcast over the last axis."""
  return (x - jnp.asarray(mean, x.dtype)) / jnp.asarray(std, x.dtype)
