"""Shared layers: a BatchNorm that exposes its input statistics and honours a row mask."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# PyTorch's default conv/linear init (kaiming-uniform with a=sqrt(5)) is a fan-in uniform with
# variance 1/(3 fan_in). The reference models use it; matching it keeps training dynamics comparable.
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

BN_STATS = "bn_stats"  # collection that holds (input mean, input var, running mean, running var)


def _row_mask(mask, x):
  if mask is None:
    return None
  return jnp.broadcast_to(mask.reshape((-1,) + (1,) * (x.ndim - 1)), x.shape)


def masked_moments(x, mask=None):
  """Per-channel mean and *biased* variance over all axes but the last, over kept rows only."""
  axes = tuple(range(x.ndim - 1))
  if mask is None:
    mean = x.mean(axes)
    return mean, jnp.square(x - mean).mean(axes)
  m = _row_mask(mask, x).astype(x.dtype)
  n = jnp.maximum(m.sum(axes), 1.0)
  mean = (x * m).sum(axes) / n
  var = (jnp.square(x - mean) * m).sum(axes) / n
  return mean, var


class BatchNorm(nn.BatchNorm):
  """`flax.linen.BatchNorm` (PyTorch momentum 0.1 == Flax 0.9, eps 1e-5) plus two things.

  * `mask` (shape `[N]`, bool): batch statistics and the running-average update use kept rows only.
    This is what a PyTorch BN sees after PreFilter/BlockF shrink the batch (SPEC §1.12).
  * It sows `(mean, var, running_mean, running_var)` of its *input* into the `bn_stats` collection:
    the DeepInversion/DFQ BN-statistics loss needs them (SPEC §1.3, L_BN). Ask for them with
    `apply(..., mutable=['bn_stats'])`; otherwise the sow is a no-op.
  """
  momentum: float = 0.9
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x, use_running_average=None, *, mask=None, **kw):
    y = super().__call__(x, use_running_average, mask=_row_mask(mask, x), **kw)
    if self.is_mutable_collection(BN_STATS) and not self.is_initializing():
      mean, var = masked_moments(x, mask)
      self.sow(BN_STATS, "input", (mean, var, self.get_variable("batch_stats", "mean"),
                                   self.get_variable("batch_stats", "var")))
    return y


def bn_input_stats(bn_stats: Any) -> list[tuple[jax.Array, jax.Array, jax.Array, jax.Array]]:
  """Flattens a `bn_stats` collection into a list of (mean, var, running_mean, running_var)."""
  leaves = []

  def visit(node):
    if isinstance(node, dict) or hasattr(node, "items"):
      for k in sorted(node):
        visit(node[k])
    elif isinstance(node, tuple) and len(node) == 4 and not isinstance(node[0], tuple):
      leaves.append(node)
    elif isinstance(node, (tuple, list)):
      for n in node:
        visit(n)
  visit(bn_stats)
  return leaves
