"""Flax (linen) models, selected by name from `config.model`.

Classifiers share one call signature: `apply(variables, x, train=False, mask=None, features=False)`
returning logits (or `(logits, features)`), where `mask` ([N] bool) restricts BatchNorm batch
statistics to kept rows. Every BN input's statistics are exposed through the `bn_stats` collection
(see `layers.BatchNorm`). Other people's models (a plain `apply_fn(params, x)`, a stateful
`apply_fn(params, state, x, train)`, any linen module, an NNX module) get the same call through
`adapters.as_model`, with `train`/`mask`/`features`/`bn_stats` as checked capabilities.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jax_unlearn.errors import ConfigError
from jax_unlearn.models import adapters
from jax_unlearn.models.adapters import CAPABILITIES, Model, as_model, require
from jax_unlearn.models.allcnn import AllCNN
from jax_unlearn.models.generators import DFQGenerator, ZSKTGenerator, sample_z
from jax_unlearn.models.layers import BN_STATS, RUNNING_VAR_MODES, BatchNorm, bn_input_stats, masked_moments
from jax_unlearn.models.resnet import ResNet18
from jax_unlearn.models.vit import ViT

CLASSIFIERS = {"allcnn": AllCNN, "resnet18": ResNet18, "vit": ViT}
GENERATORS = {"dfq": DFQGenerator, "zskt": ZSKTGenerator}

__all__ = ["AllCNN", "ResNet18", "ViT", "DFQGenerator", "ZSKTGenerator", "BatchNorm", "BN_STATS",
           "bn_input_stats", "masked_moments", "sample_z", "create_classifier", "create_generator",
           "init_variables", "num_params", "CLASSIFIERS", "GENERATORS", "adapters", "CAPABILITIES",
           "Model", "as_model", "require"]


def create_classifier(model_cfg: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  """Builds the classifier named `model_cfg.name` ('allcnn' | 'resnet18' | 'vit').

  `model_cfg.bn_running_var` ('unbiased', the default, or 'biased') is the BN running-variance update
  of the BN models (`layers.BatchNorm.running_var`); ViT has no BN and ignores it."""
  name = model_cfg.name
  if name not in CLASSIFIERS:
    raise ConfigError(f"unknown model {name!r}; set --config.model.name to one of: "
                      f"{', '.join(sorted(CLASSIFIERS))}")
  bn_running_var = model_cfg.get("bn_running_var", "unbiased")
  if bn_running_var not in RUNNING_VAR_MODES:
    raise ConfigError(f"unknown BN running-variance rule {bn_running_var!r}; set "
                      "--config.model.bn_running_var=unbiased (PyTorch's) or =biased (Flax's)")
  if name == "vit":
    return ViT(num_classes=num_classes, patch=model_cfg.get("patch", 4), dim=model_cfg.get("dim", 192),
               depth=model_cfg.get("depth", 6), heads=model_cfg.get("heads", 3),
               mlp_dim=model_cfg.get("mlp_dim", 384))
  extra = {}
  if name == "allcnn":
    extra["stem_stride"] = int(model_cfg.get("stem_stride", 1))
  return CLASSIFIERS[name](num_classes=num_classes, width=model_cfg.get("width", 1.0),
                           fast_cpu_kernels=bool(model_cfg.get("fast_cpu_kernels", False)),
                           bn_running_var=bn_running_var, **extra)


def create_generator(name: str, img_size: int, channels: int, nz: int | None = None,
                     ngf: int = 64) -> nn.Module:
  """Builds the generator named `name` ('dfq' | 'zskt'); `nz` defaults to 256 (DFQ) / 128 (ZSKT)."""
  if name not in GENERATORS:
    raise ConfigError(f"unknown generator {name!r}; use one of: {', '.join(sorted(GENERATORS))}")
  cls = GENERATORS[name]
  nz = nz if nz else (256 if name == "dfq" else 128)
  return cls(nz=nz, ngf=ngf, img_size=img_size, channels=channels)


def init_variables(model: nn.Module, key: jax.Array, input_shape: tuple[int, ...], **kw: Any
                   ) -> dict[str, Any]:
  """`model.init` on zeros of `input_shape` (with batch axis); returns only params/batch_stats."""
  variables = model.init(key, jnp.zeros(input_shape, jnp.float32), **kw)
  return {k: v for k, v in variables.items() if k in ("params", "batch_stats")}


def num_params(variables: Any) -> int:
  """Number of parameters in `variables['params']` (or in `variables` itself, a bare params tree)."""
  return sum(x.size for x in jax.tree.leaves(variables.get("params", variables)))
