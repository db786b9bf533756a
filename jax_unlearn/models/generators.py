"""Generators for data-free distillation.

* `DFQGenerator`: CMI's `LargeGenerator` used by ISPF (`ChildEden/ISPF datafree/models/generator.py`).
  Output in [0, 1] (sigmoid); the dataset normaliser is applied afterwards, before the
  teacher/student see the image.
* `ZSKTGenerator`: the ZSKT/GKT generator (`ayushkumartarun/zero-shot-unlearning unlearn.py`).
  Output is batch-normalised (no squashing).

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


def _trunk(z, train: bool, *, width: int, ngf: int, img_size: int, channels: int, conv_bias: bool):
  """Linear(width·s²) -> BN -> up -> conv(2ngf)-BN-LReLU -> up -> conv(ngf)-BN-LReLU -> conv(channels),
  s = img_size / 4: the body both generators share. Called inside a compact `__call__`, so its layers
  are the caller's own (Dense_0, BatchNorm_0..2, Conv_0..2)."""
  _check_size(img_size)
  s = img_size // 4
  x = nn.Dense(width * s * s, kernel_init=torch_default_init)(z)
  x = _bn(train)(x.reshape(z.shape[0], width, s, s).transpose(0, 2, 3, 1))
  for feats in (2 * ngf, ngf):
    x = _up2(x)
    x = nn.Conv(feats, (3, 3), use_bias=conv_bias, kernel_init=torch_default_init)(x)
    x = nn.leaky_relu(_bn(train)(x), 0.2)
  return nn.Conv(channels, (3, 3), kernel_init=torch_default_init)(x)


class DFQGenerator(nn.Module):
  """Linear -> BN -> up -> conv(2ngf)-BN-LReLU -> up -> conv(ngf)-BN-LReLU -> conv(C) -> sigmoid."""
  nz: int = 256
  ngf: int = 64
  img_size: int = 32
  channels: int = 3

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = True) -> jax.Array:
    return nn.sigmoid(_trunk(z, train, width=4 * self.ngf, ngf=self.ngf, img_size=self.img_size,
                             channels=self.channels, conv_bias=False))


class ZSKTGenerator(nn.Module):
  """Linear -> BN -> up -> conv(128)-BN-LReLU -> up -> conv(64)-BN-LReLU -> conv(C) -> BN(affine)."""
  nz: int = 128
  ngf: int = 64
  img_size: int = 32
  channels: int = 3

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = True) -> jax.Array:
    x = _trunk(z, train, width=2 * self.ngf, ngf=self.ngf, img_size=self.img_size,
               channels=self.channels, conv_bias=True)
    return _bn(train)(x)


def sample_z(key: jax.Array, batch_size: int, nz: int) -> jnp.ndarray:
  """z ~ N(0, I), the generators' noise."""
  return jax.random.normal(key, (batch_size, nz))
