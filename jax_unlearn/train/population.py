"""Populations: N models of one architecture on N membership masks, trained as one program (issue 20).

The per-example privacy audits (LiRA, U-LiRA, the NeurIPS'23 forgetting score; `jax_unlearn.audit`)
and the MIA-II shadows (`metrics.mia_ii`) need many models that differ only in their training data
(a bool mask over one pool of examples) and their seeds. `train_population` trains them together:

* **State.** One `train.steps.TrainState` per member, stacked on a leading member axis (params,
  BatchNorm statistics, optimiser state). Member m's initialisation key is `split(k_init, M)[m]`, its
  step keys `fold_in(split(k_step, M)[m], t)` with (k_init, k_step) = `split(key)` (with JAX's
  partitionable threefry, the default, `split(k, M)[m]` does not depend on M).
* **Step.** The library's one supervised step (`train.steps.sgd_step`: cross-entropy, BN in train
  mode, the optimiser of `train.supervised.make_optimizer`), on `images[idx]` (augmented with the
  step key when the data set augments), inside a `lax.scan` over the steps of an epoch; `jax.vmap`-ed
  over the members of a group.
* **Schedule** (`epoch_schedule`): per member and epoch, a shuffle of its own examples seeded by
  `default_rng([seed, stream, m, e])`, cut into batches of B = min(batch_size, n_min) examples, with
  n_min = min_m |D_m|; every member takes spe = n_min // B steps per epoch (fixed shapes, one
  program). A member with more examples drops more of its (re-drawn) remainder each epoch; with
  membership masks over a pool the sizes differ by a few percent and spe is then almost always
  everyone's own n_m // B, the rule of `supervised.fit`. No validation selection: the final epoch's
  model is kept (as LiRA's populations and the MIA-II shadows do).
* **Layout** (`parse_layout`): 'vmap' (all members in one vmapped scan), 'sequential' (one member
  at a time, an unbatched scan), 'chunks:k' (groups of k members vmapped, groups in turn) or 'auto'
  (sequential on CPU, vmap on accelerators: on XLA:CPU a vmapped conv whose kernel is batched is a
  grouped conv; see BUILD_NOTES for the bench). Convolutions: 'loop_safe' (`models.conv`'s conv with
  canonical gradients, fast inside `lax.scan` on XLA:CPU), 'matmul' (im2col + one GEMM, a batched
  GEMM under vmap), 'xla' (plain) or 'auto' (matmul for vmapped groups, loop_safe for single members).
  All layouts and convs compute the same function up to float rounding (tests/test_population.py);
  the checkpoint fingerprint therefore does not include them, and a run resumed with another layout
  continues to rounding, not to the bit.
* **One loop.** Chunk i of `train.loop.run_chunks` is epoch i % E of group i // E (groups in turn,
  so "members done" is meaningful), with the loop's orbax checkpoint (every `every` epochs of a group
  and at the end of each group), fingerprint check on resume, NaN/inf guard and progress lines with
  members done, member-steps, elapsed and time left. A finished checkpoint is the cached population.
* **Devices.** With `shard=True` and several local devices, a vmapped layout places the member axis
  over them (`train.sharding.shard_runs`); members never communicate.

Cost model (`step_flops`): XLA's cost analysis of one member's step; a population costs
M x epochs x spe of those (a vmapped step has no extra FLOPs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from ml_collections import config_dict
from numpy.typing import ArrayLike

from jax_unlearn.data.augment import augment as augment_images
from jax_unlearn.data.dataset import DataInfo, Split
from jax_unlearn.data.normalize import normalize
from jax_unlearn.errors import ConfigError, DataError
from jax_unlearn.models import init_variables
from jax_unlearn.models.conv import _loop_safe_convs, matmul_convs
from jax_unlearn.train import fingerprint, sharding
from jax_unlearn.train.evaluate import padded_batches
from jax_unlearn.train.loop import run_chunks
from jax_unlearn.train.steps import TrainState, scan_member_steps, sgd_step
from jax_unlearn.train.supervised import make_optimizer

__all__ = ["Population", "LAYOUTS", "CONVS", "default_config", "validate_config", "parse_layout",
           "resolve_conv", "epoch_schedule", "init_members", "train_steps", "train_population",
           "describe_population", "stacked_logits", "take", "stack", "step_flops"]

LAYOUTS = ("auto", "vmap", "sequential", "chunks:<k>")
CONVS = ("auto", "loop_safe", "matmul", "xla")
FORMAT_VERSION = 1
STREAM_ORDER = 41  # the shuffle stream of `epoch_schedule` (another stream gives other batches)


@dataclasses.dataclass
class Population:
  """A trained population: `variables` stacked over M members (host arrays), `masks` [M, N] over the
  pool, per-step `losses` [T, M], the loop's `history` and `train_s` (the seconds all chunks took,
  across resumes)."""
  variables: Any
  masks: np.ndarray
  losses: np.ndarray
  history: list
  train_s: float
  layout: str = ""
  chunk: int = 0
  steps_per_epoch: int = 0


def default_config() -> ml_collections.ConfigDict:
  """`config.audit`: the populations of `launch.audit` (`jax_unlearn.audit`, which documents the
  protocol).

  num_models: N members per population (even, >= 6: U-LiRA fits each example's Gaussians from the
    N/2 members in each role, the forgetting score needs >= 3 per side).
  candidates: random forgetting: |C|, the examples whose membership varies (0 = 2 x
    config.forget.num_samples, so each member forgets num_samples of them on average).
  retain_size: 0 = every other training example is in every member (R = train minus C); > 0 = R is
    a seeded random subset of that many of them (LiRA-style populations on part of a large training
    set, so that N members fit a CPU budget; the excluded examples are in no member).
  epochs, milestones: the populations' training budget (None: config.train's).
  layout: 'auto' | 'vmap' | 'sequential' | 'chunks:<k>' (module docstring).
  conv: 'auto' | 'loop_safe' | 'matmul' | 'xla'.
  checkpoint_every: epochs of a group between orbax checkpoints (and after each group).
  seed_offset: the audit's seed is config.seed + seed_offset (masks, forget sets, keys).
  shard: split the member axis of a vmapped layout over the local devices.
  eval_batch_size: inference batch of the populations' logits.
  """
  return ml_collections.ConfigDict(dict(
      num_models=16, candidates=0, retain_size=0, epochs=config_dict.placeholder(int),
      milestones=config_dict.placeholder(tuple), layout="auto", conv="auto", checkpoint_every=5,
      seed_offset=2000, shard=True, eval_batch_size=512))


def parse_layout(layout: str, num_members: int, backend: str | None = None) -> int:
  """Members per vmapped group for `layout` (1 = sequential, M = one vmapped program)."""
  layout = str(layout).strip()
  backend = backend or jax.default_backend()
  if layout == "auto":
    return 1 if backend == "cpu" else num_members
  if layout == "vmap":
    return num_members
  if layout == "sequential":
    return 1
  if layout.startswith("chunks:"):
    try:
      k = int(layout.split(":", 1)[1])
    except ValueError:
      k = 0
    if k >= 1:
      return min(k, num_members)
  raise ConfigError(f"unknown population layout {layout!r}; set --config.audit.layout to one of "
                    f"{', '.join(LAYOUTS)} (e.g. chunks:4)")


def resolve_conv(conv: str, chunk: int) -> str:
  """`config.audit.conv` resolved ('auto': 'matmul' if chunked, else 'loop_safe'); ConfigError if unknown."""
  if conv not in CONVS:
    raise ConfigError(f"unknown population conv {conv!r}; set --config.audit.conv to one of "
                      f"{', '.join(CONVS)}")
  if conv == "auto":
    return "matmul" if chunk > 1 else "loop_safe"
  return conv


def validate_config(cfg: ml_collections.ConfigDict) -> None:
  """ConfigError (one line, naming the field) for an invalid `config.audit`."""
  n = cfg.num_models
  if isinstance(n, bool) or not isinstance(n, int) or n < 6 or n % 2:
    raise ConfigError(f"config.audit.num_models must be an even integer >= 6, got {n!r}; set e.g. "
                      "--config.audit.num_models=16")
  parse_layout(cfg.layout, n, "cpu")
  resolve_conv(cfg.conv, 2)
  for f in ("candidates", "retain_size", "checkpoint_every", "seed_offset"):
    if int(cfg[f]) < 0:
      raise ConfigError(f"config.audit.{f} must be >= 0, got {cfg[f]}")
  if cfg.epochs is not None and int(cfg.epochs) < 1:
    raise ConfigError(f"config.audit.epochs must be >= 1 (or unset), got {cfg.epochs}")
  if int(cfg.eval_batch_size) < 1:
    raise ConfigError(f"config.audit.eval_batch_size must be >= 1, got {cfg.eval_batch_size}")


# ----------------------------------------------------------------------------------------------------
# Schedule, state, step.

def _sizes(masks: np.ndarray, batch_size: int) -> tuple[int, int]:
  """(B, steps per epoch) of the schedule."""
  n_min = int(masks.sum(1).min())
  if n_min < 1:
    raise DataError("a population member has no training example; check the membership masks")
  b = min(int(batch_size), n_min)
  return b, n_min // b


def epoch_schedule(masks: ArrayLike, batch_size: int, seed: int, epoch: int,
                   stream: int = STREAM_ORDER) -> np.ndarray:
  """Pool indices [spe, M, B] of one epoch (module docstring, "Schedule")."""
  masks = np.asarray(masks, bool)
  b, spe = _sizes(masks, batch_size)
  idx = np.zeros((spe, masks.shape[0], b), np.int32)
  for m in range(masks.shape[0]):
    members = np.flatnonzero(masks[m])
    perm = members[np.random.default_rng([seed, stream, m, epoch]).permutation(len(members))]
    idx[:, m] = perm[:spe * b].reshape(spe, b)
  return idx


def stack(trees: Sequence[Any]) -> Any:
  """Stacks pytrees of one structure on a new leading (member) axis."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def take(tree: Any, i: int | slice) -> Any:
  """Member i (or the members of a slice) of a stacked pytree."""
  return jax.tree.map(lambda a: a[i], tree)


def _cast(tree, dtype):
  """Floating leaves of `tree` cast to `dtype` (None: unchanged)."""
  if dtype is None:
    return tree
  return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


@dataclasses.dataclass(frozen=True)
class _Apply:
  """`model.apply`, hashed and compared by the module's fields: the apply function is a static
  field of the state, and bound methods of equal modules compare unequal (identity of `self`), which
  would recompile the scanned step for every population."""
  model: nn.Module

  def __call__(self, *args, **kwargs):
    return self.model.apply(*args, **kwargs)


def init_members(model: nn.Module, keys: jax.Array | Sequence[jax.Array], image_shape: Sequence[int],
                 tx: optax.GradientTransformation, dtype: Any = None) -> TrainState:
  """Stacked `TrainState`s of `model`, one per key (each initialised as `supervised` does), the
  variables cast to `dtype` when given (float64 under `jax.enable_x64`: the rounding tests)."""
  states = []
  for k in keys:
    v = _cast(init_variables(model, k, (1,) + tuple(image_shape)), dtype)
    states.append(TrainState.create(apply_fn=_Apply(model), params=v["params"], tx=tx,
                                    batch_stats=v.get("batch_stats", {})))
  return stack(states)


@functools.lru_cache(maxsize=64)
def _optimizer(lr: float, momentum: float, weight_decay: float, milestones: tuple, gamma: float, spe: int):
  """`supervised.make_optimizer`, one object per recipe: the optimiser is a static field of the
  state, and a new (equal but not identical) one would recompile the scanned step for every
  population (~5 s for a two-layer net, tens of seconds for AllCNN on a loaded 2-core CPU)."""
  return make_optimizer(ml_collections.ConfigDict(dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                                       milestones=milestones, gamma=gamma)), spe)


_INTERCEPTORS = {"loop_safe": _loop_safe_convs, "matmul": matmul_convs}


def _convs(conv: str):
  """The context that routes every `nn.Conv` through `conv` (entered while tracing)."""
  return nn.intercept_methods(_INTERCEPTORS[conv]) if conv in _INTERCEPTORS else contextlib.nullcontext()


def _member_step(state, idx, key, images, labels, mean, std, augment):
  x = images[idx]
  if augment:
    x = augment_images(key, x)
  state, loss, _ = sgd_step(state, normalize(x, mean, std), labels[idx])
  return state, loss


@functools.partial(jax.jit, static_argnames=("augment", "vmapped", "conv"))
def train_steps(state: TrainState, idx: jax.Array, keys: jax.Array, t0: int | jax.Array, images: jax.Array,
                labels: jax.Array, mean: jax.Array, std: jax.Array, *, augment: bool, vmapped: bool,
                conv: str = "loop_safe") -> tuple[TrainState, jax.Array]:
  """Steps t0 .. t0 + T - 1 as one `lax.scan`. vmapped: `state` stacked over G members, `idx`
  [T, G, B], `keys` [G]; else one member, `idx` [T, B], `keys` one key. Row t uses
  `fold_in(key, t0 + t)`. Returns (state, losses [T(, G)])."""
  def one(s, i, k):
    return _member_step(s, i, k, images, labels, mean, std, augment)

  # The interceptor is entered while tracing, and `conv` is static: each conv gets its own program.
  with _convs(conv):
    return scan_member_steps(one, state, idx, keys, t0, vmapped)


def _group_epoch(state, idx, keys, t0, args, augment, chunk_size, conv):
  """One epoch of a group of members: one vmapped scan, or one unbatched scan per member."""
  if chunk_size > 1:
    return train_steps(state, jnp.asarray(idx), keys, jnp.int32(t0), *args, augment=augment,
                       vmapped=True, conv=conv)
  outs = [train_steps(take(state, j), jnp.asarray(idx[:, j]), keys[j], jnp.int32(t0), *args,
                      augment=augment, vmapped=False, conv=conv) for j in range(idx.shape[1])]
  return stack([o[0] for o in outs]), jnp.stack([o[1] for o in outs], axis=1)


def _set_rows(tree, lo: int, sub):
  return jax.tree.map(lambda a, s: jax.lax.dynamic_update_slice_in_dim(a, s.astype(a.dtype), lo, 0),
                      tree, sub)


def describe_population(*, kind: str, pool: Split | tuple[ArrayLike, ArrayLike], masks: ArrayLike,
                        recipe: Mapping[str, Any] | ml_collections.ConfigDict,
                        model_cfg: dict[str, Any] | None, key: jax.Array, seed: int,
                        stream: int, augment: bool) -> dict:
  """What a population depends on (its checkpoint's fingerprint): the pool's content, the masks,
  the recipe, the model, the key, the shuffle seed and stream, augmentation, the format version.
  `pool`: a `Split` or (images, labels)."""
  images, labels = (pool.images, pool.labels) if hasattr(pool, "images") else pool
  return fingerprint.describe(kind=kind, version=FORMAT_VERSION,
                              pool=fingerprint.array_digest(np.asarray(images), np.asarray(labels)),
                              masks=fingerprint.array_digest(np.asarray(masks, bool)),
                              recipe=dict(recipe), model=model_cfg, key=fingerprint.array_digest(key),
                              seed=int(seed), stream=int(stream), augment=bool(augment))


def train_population(model: nn.Module, pool: Split | tuple[ArrayLike, ArrayLike], masks: ArrayLike,
                     info: DataInfo, recipe: Mapping[str, Any] | ml_collections.ConfigDict, key: jax.Array,
                     *, seed: int = 0, stream: int = STREAM_ORDER, augment: bool | None = None,
                     layout: str = "auto", conv: str = "auto", ckpt_dir: str | None = None,
                     fingerprint_desc: dict | None = None, every: int = 1, phase: str = "population",
                     fix: str = "lower the learning rate and run again", shard: bool = False,
                     dtype: Any = None, log: Callable[[str], None] = print) -> Population:
  """Trains one member per row of `masks` ([M, N] bool over `pool`, a `Split` or (images, labels));
  see the module docstring. `recipe`: epochs, lr, momentum, weight_decay, milestones, gamma,
  batch_size (`supervised.recipe`). `ckpt_dir`/`fingerprint_desc`/`every`: the loop's checkpoint
  (`describe_population` gives the fingerprint); `dtype`: the members' variables' float type (None:
  the model's). Returns a `Population`."""
  images, labels = (pool.images, pool.labels) if hasattr(pool, "images") else pool
  masks = np.asarray(masks, bool)
  if masks.ndim != 2 or masks.shape[1] != len(labels) or masks.shape[0] < 1:
    raise DataError(f"population masks must be [members, {len(labels)}] bool, got {masks.shape}")
  num, epochs = masks.shape[0], int(recipe["epochs"])
  b, spe = _sizes(masks, int(recipe["batch_size"]))
  tx = _optimizer(float(recipe["lr"]), float(recipe["momentum"]), float(recipe["weight_decay"]),
                  tuple(int(m) for m in recipe["milestones"]), float(recipe["gamma"]), spe)
  augment = bool(info.augment) if augment is None else bool(augment)
  k = parse_layout(layout, num)
  conv = resolve_conv(conv, k)
  groups = [(lo, min(lo + k, num)) for lo in range(0, num, k)]
  init_key, step_key = jax.random.split(key)
  state = init_members(model, jax.random.split(init_key, num), info.image_shape, tx, dtype)
  step_keys = jax.random.split(step_key, num)
  if shard and k == num and jax.local_device_count() > 1:
    state = sharding.shard_runs(state)
  args = (jnp.asarray(np.asarray(images, np.float32)), jnp.asarray(np.asarray(labels, np.int32)),
          jnp.asarray(info.mean, jnp.float32), jnp.asarray(info.std, jnp.float32))
  total = len(groups) * epochs

  def chunk_fn(state, i):
    g, e = divmod(i, epochs)
    lo, hi = groups[g]
    t0 = time.time()
    idx = epoch_schedule(masks, b, seed, e, stream)[:, lo:hi]
    sub = take(state, slice(lo, hi)) if (lo, hi) != (0, num) else state
    sub, losses = _group_epoch(sub, idx, step_keys[lo:hi], e * spe, args, augment, hi - lo, conv)
    state = sub if (lo, hi) == (0, num) else _set_rows(state, lo, sub)
    losses = np.asarray(losses, np.float32)
    return state, {"group": g, "members": [lo, hi], "epoch": e + 1, "losses": losses.tolist(),
                   "chunk_s": time.time() - t0}

  def guard(state, rec):
    losses, (lo, hi), e = np.asarray(rec["losses"]), rec["members"], rec["epoch"] - 1
    bad = ~np.isfinite(losses)
    if bad.any():
      t, j = (int(v[0]) for v in np.nonzero(bad))
      kind = "nan" if np.isnan(losses[t, j]) else "inf"
      return (f"the training loss of member {lo + j} became {kind} at step {e * spe + t + 1} (of "
              f"{epochs * spe})")
    if not all(bool(jnp.all(jnp.isfinite(x[lo:hi]))) for x in jax.tree.leaves(state.params)):
      return f"a parameter of member(s) {lo}..{hi - 1} became nan/inf after step {(e + 1) * spe}"
    return None

  def progress(i, rec):
    lo, hi = rec["members"]
    done = lo + (hi - lo) * (rec["epoch"] == epochs)
    steps = (lo * epochs + (hi - lo) * rec["epoch"]) * spe
    who = "" if len(groups) == 1 else (f" members {lo}-{hi - 1}" if hi - lo > 1 else f" member {lo}")
    return (f"[{phase}]{who} epoch {rec['epoch']}/{epochs}: mean loss {float(np.mean(rec['losses'])):.4f}; "
            f"{done}/{num} members done, {steps}/{num * epochs * spe} member-steps")

  every = max(1, int(every))
  state, history = run_chunks(
      chunk_fn, state, total, phase=phase, ckpt_dir=ckpt_dir, fingerprint=fingerprint_desc,
      guard=guard, fix=fix, progress=progress, log=log, unit="epoch" if len(groups) == 1 else "chunk",
      save_when=lambda n: (n % epochs) % every == 0)  # every `every` epochs of a group, and its end
  losses = np.zeros((epochs * spe, num), np.float32)
  for rec in history:
    lo, hi = rec["members"]
    e = rec["epoch"] - 1
    losses[e * spe:(e + 1) * spe, lo:hi] = np.asarray(rec["losses"], np.float32).reshape(spe, hi - lo)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  return Population(variables=jax.device_get(variables), masks=masks, losses=losses, history=history,
                    train_s=float(sum(r.get("chunk_s", 0.0) for r in history)),
                    layout=str(layout), chunk=k, steps_per_epoch=spe)


# ----------------------------------------------------------------------------------------------------
# Inference and cost.

@functools.partial(jax.jit, static_argnames=("apply_fn", "vmapped", "conv"))
def _logits(apply_fn, variables, x, mean, std, vmapped: bool, conv: str):
  xn = normalize(x, mean, std)
  f = lambda v: apply_fn(v, xn, train=False)  # noqa: E731
  with _convs(conv):
    return jax.vmap(f)(variables) if vmapped else f(variables)


def stacked_logits(model: nn.Module, variables: Any, images: ArrayLike, info: DataInfo, *,
                   batch_size: int = 512, layout: str = "auto", conv: str = "auto") -> np.ndarray:
  """Eval-mode logits [M, N, K] (float32) of M stacked members on raw [0, 1] images; members in
  vmapped groups as `layout` says, batches padded to `batch_size` (one program for every call)."""
  images = np.asarray(images, np.float32)
  num = jax.tree.leaves(variables)[0].shape[0]
  k = parse_layout(layout, num)
  conv = resolve_conv(conv, k)
  mean, std = jnp.asarray(info.mean, jnp.float32), jnp.asarray(info.std, jnp.float32)
  rows, apply = [], _Apply(model)
  for lo in range(0, num, k):
    hi = min(lo + k, num)
    sub = take(variables, slice(lo, hi))
    outs = []
    for chunk, valid in padded_batches(images, batch_size):
      if hi - lo > 1:
        outs.append(np.asarray(_logits(apply, sub, chunk, mean, std, True, conv))[:, :valid])
      else:
        outs.append(np.asarray(_logits(apply, take(sub, 0), chunk, mean, std, False, "xla"))[None, :valid])
    rows.append(np.concatenate(outs, axis=1))
  return np.concatenate(rows, axis=0)


def step_flops(model: nn.Module, info: DataInfo, batch_size: int,
               recipe: Mapping[str, Any] | ml_collections.ConfigDict | None = None) -> float:
  """FLOPs of one member's training step (XLA's cost analysis of the compiled `sgd_step`)."""
  tx = make_optimizer(ml_collections.ConfigDict(dict(recipe or dict(
      lr=0.1, momentum=0.9, weight_decay=0.0, milestones=(), gamma=0.1))), 1)
  state = init_members(model, [jax.random.key(0)], info.image_shape, tx)
  one = take(state, 0)
  x = jnp.zeros((batch_size,) + tuple(info.image_shape), jnp.float32)
  y = jnp.zeros((batch_size,), jnp.int32)
  compiled = jax.jit(lambda s, a, b: sgd_step(s, a, b)[:2]).lower(one, x, y).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan")))
