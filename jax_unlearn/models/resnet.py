"""CIFAR ResNet18 (DAFL/ISPF variant): 3x3 stem, no max-pool, 4 stages of BasicBlocks.

Reference: `ChildEden/ISPF datafree/models/classifiers/resnet.py`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_unlearn.models import conv as conv_lib
from jax_unlearn.models.layers import BatchNorm, ConvClassifier, torch_default_init


def _conv(ch, k, s, fast=False):
  return nn.Conv(ch, (k, k), strides=(s, s), padding=[((k - 1) // 2,) * 2] * 2, use_bias=False,
                 kernel_init=torch_default_init,
                 conv_general_dilated=conv_lib.phase_grad_conv_general_dilated if fast else None)


class BasicBlock(nn.Module):
  channels: int
  stride: int = 1
  fast_cpu_kernels: bool = False
  bn_running_var: str = "unbiased"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, mask: jax.Array | None = None) -> jax.Array:
    bn = lambda: BatchNorm(use_running_average=not train, dot_stats=self.fast_cpu_kernels,  # noqa: E731
                           running_var=self.bn_running_var)
    fast = self.fast_cpu_kernels
    y = nn.relu(bn()(_conv(self.channels, 3, self.stride, fast)(x), mask=mask))
    y = bn()(_conv(self.channels, 3, 1, fast)(y), mask=mask)
    if self.stride != 1 or x.shape[-1] != self.channels:
      x = bn()(_conv(self.channels, 1, self.stride, fast)(x), mask=mask)
    return nn.relu(x + y)


class ResNet18(ConvClassifier):
  """CIFAR ResNet18. Same call signature as `AllCNN`; 20 BN layers; features are 512-d.
  `fast_cpu_kernels`, `bn_running_var`: see `AllCNN`."""
  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, mask: jax.Array | None = None,
               features: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
    base = max(1, round(64 * self.width))
    x = nn.relu(BatchNorm(use_running_average=not train, dot_stats=self.fast_cpu_kernels,
                          running_var=self.bn_running_var)(_conv(base, 3, 1)(x), mask=mask))
    for i, stride in enumerate((1, 2, 2, 2)):
      for j in range(2):
        x = BasicBlock(base * 2 ** i, stride if j == 0 else 1, self.fast_cpu_kernels,
                       self.bn_running_var)(x, train, mask)
    feat = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(self.num_classes, kernel_init=torch_default_init)(feat)
    return (logits, feat) if features else logits
