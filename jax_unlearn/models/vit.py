"""A small Vision Transformer (patch embedding, CLS token, pre-LN encoder blocks, linear head).

The SSD/DiStruction papers fine-tune ViT-B/16 at 224 px; we train a small ViT from scratch at the
data's own resolution (patch size, depth, width configurable) so that it runs where the data is.
It has no BatchNorm: `mask` is accepted for interface parity and ignored.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class EncoderBlock(nn.Module):
  dim: int
  heads: int
  mlp_dim: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = nn.LayerNorm()(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads)(y, y)
    y = nn.LayerNorm()(x)
    y = nn.Dense(self.dim)(nn.gelu(nn.Dense(self.mlp_dim)(y)))
    return x + y


class ViT(nn.Module):
  """ViT classifier. Same call signature as `AllCNN`; features are the final CLS representation."""
  num_classes: int = 10
  patch: int = 4
  dim: int = 192
  depth: int = 6
  heads: int = 3
  mlp_dim: int = 384

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, mask: jax.Array | None = None,
               features: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
    del train, mask
    n, h, w, _ = x.shape
    if h % self.patch or w % self.patch:
      raise ValueError(f"image size {h}x{w} is not divisible by patch size {self.patch}")
    x = nn.Conv(self.dim, (self.patch, self.patch), strides=(self.patch, self.patch))(x)
    x = x.reshape(n, -1, self.dim)
    cls = self.param("cls", nn.initializers.zeros, (1, 1, self.dim))
    x = jnp.concatenate([jnp.broadcast_to(cls, (n, 1, self.dim)), x], axis=1)
    x = x + self.param("pos_embedding", nn.initializers.normal(0.02), (1, x.shape[1], self.dim))
    for _ in range(self.depth):
      x = EncoderBlock(self.dim, self.heads, self.mlp_dim)(x)
    feat = nn.LayerNorm()(x[:, 0])
    logits = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros)(feat)
    return (logits, feat) if features else logits
