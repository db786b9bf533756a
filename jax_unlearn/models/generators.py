"""Generators for data-free distillation.

* `DFQGenerator`: CMI's `LargeGenerator` used by ISPF (SPEC §1.2). Output in [0, 1] (sigmoid); the
  dataset normaliser is applied afterwards, before the teacher/student see the image.
* `ZSKTGenerator`: the ZSKT/GKT generator (SPEC §2.1). Output is batch-normalised (no squashing).

Both take `z` of shape `[N, nz]` and `train` (BN mode: batch statistics + running-average update in
train mode, running statistics in eval mode — ISPF uses eval mode for the student's batches).
Image size must be divisible by 4; channels configurable (8x8x1 digits, 32x32x3 CIFAR/SVHN).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_unlearn.models.layers import torch_default_init


def _bn(train):
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)


def _up2(x):
  n, h, w, c = x.shape
  return jax.image.resize(x, (n, 2 * h, 2 * w, c), method="nearest")


def _check_size(img_size):
  if img_size % 4:
    raise ValueError(f"generator image size must be divisible by 4, got {img_size}")


class DFQGenerator(nn.Module):
  """Linear -> BN -> up -> conv(2ngf)-BN-LReLU -> up -> conv(ngf)-BN-LReLU -> conv(C) -> sigmoid."""
  nz: int = 256
  ngf: int = 64
  img_size: int = 32
  channels: int = 3

  @nn.compact
  def __call__(self, z, train: bool = True):
    _check_size(self.img_size)
    s = self.img_size // 4
    x = nn.Dense(4 * self.ngf * s * s, kernel_init=torch_default_init)(z)
    x = _bn(train)(x.reshape(z.shape[0], 4 * self.ngf, s, s).transpose(0, 2, 3, 1))
    x = _up2(x)
    x = nn.leaky_relu(_bn(train)(nn.Conv(2 * self.ngf, (3, 3), use_bias=False,
                                         kernel_init=torch_default_init)(x)), 0.2)
    x = _up2(x)
    x = nn.leaky_relu(_bn(train)(nn.Conv(self.ngf, (3, 3), use_bias=False,
                                         kernel_init=torch_default_init)(x)), 0.2)
    x = nn.Conv(self.channels, (3, 3), kernel_init=torch_default_init)(x)
    return nn.sigmoid(x)


class ZSKTGenerator(nn.Module):
  """Linear -> BN -> up -> conv(128)-BN-LReLU -> up -> conv(64)-BN-LReLU -> conv(C) -> BN(affine)."""
  nz: int = 128
  ngf: int = 64
  img_size: int = 32
  channels: int = 3

  @nn.compact
  def __call__(self, z, train: bool = True):
    _check_size(self.img_size)
    s = self.img_size // 4
    x = nn.Dense(2 * self.ngf * s * s, kernel_init=torch_default_init)(z)
    x = _bn(train)(x.reshape(z.shape[0], 2 * self.ngf, s, s).transpose(0, 2, 3, 1))
    x = _up2(x)
    x = nn.leaky_relu(_bn(train)(nn.Conv(2 * self.ngf, (3, 3), kernel_init=torch_default_init)(x)), 0.2)
    x = _up2(x)
    x = nn.leaky_relu(_bn(train)(nn.Conv(self.ngf, (3, 3), kernel_init=torch_default_init)(x)), 0.2)
    x = nn.Conv(self.channels, (3, 3), kernel_init=torch_default_init)(x)
    return _bn(train)(x)


def sample_z(key, batch_size: int, nz: int) -> jnp.ndarray:
  """z ~ N(0, I), the generators' noise."""
  return jax.random.normal(key, (batch_size, nz))
