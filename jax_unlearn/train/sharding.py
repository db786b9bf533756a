"""Data-parallel sharding over all local devices (a 1-axis `Mesh` named 'data').

On one CPU the mesh has one device and the code path is the same. BatchNorm statistics over a
data-sharded batch are computed over the global batch (XLA inserts the all-reduce), so an N-device
step equals the 1-device step up to float reduction order.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from jax_unlearn.errors import ConfigError


@functools.lru_cache(maxsize=None)
def data_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  n = num_devices or jax.device_count()
  # Auto axis types: with Explicit (the make_mesh default) Linen layers reject data-sharded inputs.
  return jax.make_mesh((n,), ("data",), axis_types=(AxisType.Auto,), devices=jax.devices()[:n])


def batch_sharding(mesh=None) -> NamedSharding:
  return NamedSharding(mesh or data_mesh(), P("data"))


def replicated(mesh=None) -> NamedSharding:
  return NamedSharding(mesh or data_mesh(), P())


def check_batch_size(batch_size: int, mesh=None, field: str = "--config.batch_size"):
  n = (mesh or data_mesh()).devices.size
  if batch_size <= 0:
    raise ConfigError(f"batch size must be positive, got {batch_size}; set {field} to e.g. 64")
  if batch_size % n:
    raise ConfigError(f"batch size {batch_size} is not divisible by the {n} devices; set {field} to a "
                      f"multiple of {n}")


def shard_batch(batch: dict, mesh=None) -> dict:
  """Places a host batch (numpy arrays, leading batch axis) on the devices, split along 'data'."""
  sh = batch_sharding(mesh)
  return {k: jax.device_put(np.asarray(v), sh) for k, v in batch.items()}


def replicate(tree, mesh=None):
  return jax.device_put(tree, replicated(mesh))
