"""AllCNN (Springenberg et al.) as used by ISPF and SSD, with BatchNorm.

Reference: `ChildEden/ISPF datafree/models/classifiers/AllCNN.py` (the SSD repository's `src/models.py`
has the same structure).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_unlearn.models import conv as conv_lib
from jax_unlearn.models.layers import BatchNorm, ConvClassifier, torch_default_init


class AllCNN(ConvClassifier):
  """AllCNN with BN: conv (no bias) -> BN -> ReLU blocks, global average pool, linear head.

  Attributes:
    num_classes: K.
    width: the reference's `filters_percentage`; channel counts are round(96*width), round(192*width).
    fast_cpu_kernels: train-mode BN statistics and backward sums as GEMVs (`layers.BatchNorm.dot_stats`)
      and strided convs' input gradients by phase (`conv.phase_grad_conv`): same variables and math,
      other float rounding, faster on XLA:CPU (`config.model.fast_cpu_kernels`).
    bn_running_var: 'unbiased' (PyTorch's running-variance update, the default) or 'biased' (Flax's);
      see `layers.BatchNorm.running_var` (`config.model.bn_running_var`).
    stem_stride: stride of the first conv (`config.model.stem_stride`). 1 is the paper's network; 2
      halves the resolution every later layer sees (about 5x cheaper on 28x28 images; used by
      `configs/fashion_mnist.py`), as an ImageNet ResNet's stem does.
  Call: `model.apply(variables, x, train=False, mask=None, features=False)` returns logits `[N, K]`,
  or `(logits, pooled_features)` when `features=True`. `mask` ([N] bool) restricts BN batch
  statistics to kept rows (train mode only).
  """
  stem_stride: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, mask: jax.Array | None = None,
               features: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
    c1, c2 = max(1, round(96 * self.width)), max(1, round(192 * self.width))
    spec = [(c1, 3, self.stem_stride), (c1, 3, 1), (c2, 3, 2), (c2, 3, 1), (c2, 3, 1), (c2, 3, 2), (c2, 3, 1),
            (c2, 1, 1)]
    for ch, k, s in spec:
      x = nn.Conv(ch, (k, k), strides=(s, s), padding=[((k - 1) // 2,) * 2] * 2, use_bias=False,
                  kernel_init=torch_default_init,
                  conv_general_dilated=(conv_lib.phase_grad_conv_general_dilated
                                        if self.fast_cpu_kernels else None))(x)
      x = BatchNorm(use_running_average=not train, dot_stats=self.fast_cpu_kernels,
                    running_var=self.bn_running_var)(x, mask=mask)
      x = nn.relu(x)
    feat = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(self.num_classes, kernel_init=torch_default_init)(feat)
    return (logits, feat) if features else logits
