"""Data-parallel sharding over all devices (a 1-axis `Mesh` named 'data'), and sweep members over the
local devices (a 1-axis `Mesh` named 'runs').

On one CPU the mesh has one device and the code path is the same. BatchNorm statistics over a
data-sharded batch are computed over the global batch (XLA inserts the all-reduce), so an N-device
step equals the 1-device step up to float reduction order (exactly so in float64; in float32 a ReLU
input within rounding of 0 may land on the other side of the kink, which moves the gradient by that
unit's contribution: tests/test_train.py::test_four_devices_match_one_device). A vmapped sweep
(`jax_unlearn.sweep`) has no cross-run communication at all: with its run axis sharded, each device
runs its own members.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from jax_unlearn.errors import ConfigError


@functools.lru_cache(maxsize=None)
def data_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  n = num_devices or jax.device_count()
  # Auto axis types: with Explicit (the make_mesh default) Linen layers reject data-sharded inputs.
  return jax.make_mesh((n,), ("data",), axis_types=(AxisType.Auto,), devices=jax.devices()[:n])


def batch_sharding(mesh: jax.sharding.Mesh | None = None) -> NamedSharding:
  return NamedSharding(mesh or data_mesh(), P("data"))


def replicated(mesh: jax.sharding.Mesh | None = None) -> NamedSharding:
  return NamedSharding(mesh or data_mesh(), P())


def check_batch_size(batch_size: int, mesh: jax.sharding.Mesh | None = None,
                     field: str = "--config.batch_size") -> None:
  n = (mesh or data_mesh()).devices.size
  if batch_size <= 0:
    raise ConfigError(f"batch size must be positive, got {batch_size}; set {field} to e.g. 64")
  if batch_size % n:
    raise ConfigError(f"batch size {batch_size} is not divisible by the {n} devices; set {field} to a "
                      f"multiple of {n}")


def shard_batch(batch: dict[str, Any], mesh: jax.sharding.Mesh | None = None) -> dict[str, jax.Array]:
  """Places a host batch (numpy arrays, leading batch axis) on the devices, split along 'data'."""
  sh = batch_sharding(mesh)
  return {k: jax.device_put(np.asarray(v), sh) for k, v in batch.items()}


def replicate(tree: Any, mesh: jax.sharding.Mesh | None = None) -> Any:
  return jax.device_put(tree, replicated(mesh))


def runs_mesh(num_runs: int) -> jax.sharding.Mesh:
  """A 1-axis mesh 'runs' over as many local devices as divide `num_runs` evenly (at least one)."""
  devices = jax.local_devices()
  n = max(d for d in range(1, len(devices) + 1) if num_runs % d == 0)
  return jax.sharding.Mesh(np.asarray(devices[:n]), ("runs",), axis_types=(AxisType.Auto,))


def shard_runs(tree: Any, mesh: jax.sharding.Mesh | None = None) -> Any:
  """Places a stacked pytree (runs on the leading axis of every leaf) with that axis split over `mesh`
  (default `runs_mesh(R)`)."""
  if mesh is None:
    mesh = runs_mesh(jax.tree.leaves(tree)[0].shape[0])
  return jax.device_put(tree, NamedSharding(mesh, P("runs")))
