"""Training augmentation for CIFAR (ISPF's `registry.py`): RandomCrop(32, padding=4) + HorizontalFlip.

Applied on device to un-normalised [0,1] images, as torchvision applies both before ToTensor /
Normalize: the zero padding is black, not the dataset mean. SVHN and digits are not augmented
(`DataInfo.augment`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def augment(key: jax.Array, images: jax.Array, padding: int = 4) -> jax.Array:
  """Per-example random crop after zero-padding by `padding` pixels, then a flip with p = 0.5.

  images: [B,H,W,C] in [0,1] (any H, W); returns the same shape and dtype. Jit-able (`padding` is
  a Python int; wrap with `jax.jit(augment, static_argnames='padding')` to change it).
  """
  b, h, w, c = images.shape
  k_y, k_x, k_flip = jax.random.split(key, 3)
  # Offsets 0..2*padding inclusive: every crop position torchvision's RandomCrop can pick. Drawing
  # all B offsets/flips at once (rather than splitting B keys under vmap) compiles and runs faster.
  # 32-bit draws: the same crops and flips with jax_enable_x64 on (the float64 rounding tests).
  dy = jax.random.randint(k_y, (b,), 0, 2 * padding + 1, dtype=jnp.int32)
  dx = jax.random.randint(k_x, (b,), 0, 2 * padding + 1, dtype=jnp.int32)
  flip = jax.random.bernoulli(k_flip, jnp.float32(0.5), (b,))
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))

  def crop_and_flip(image, y, x, f):
    crop = jax.lax.dynamic_slice(image, (y, x, jnp.zeros_like(y)), (h, w, c))
    return jnp.where(f, crop[:, ::-1, :], crop)

  return jax.vmap(crop_and_flip)(padded, dy, dx, flip)
