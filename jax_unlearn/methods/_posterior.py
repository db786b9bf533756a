"""DiStruction's preparation: learn the parameter posterior p = N(θ_o, σ_p²) with BGD, and store it.

Dugue 2024 (§3.1 of the DiStruction paper), before the training data is discarded and the forget set
is known: μ_p := θ_o (the trained weights) and σ_p is learned by Bayesian Gradient Descent
(`jax_unlearn.optim.bgd`, Zeno et al.) on the pretraining loss (cross-entropy) over the training data,
with μ frozen (`prep_mean_eta = 0`: "our preparation step should have no effect on model performance
at inference time"), K Monte-Carlo samples per minibatch, `prep_epochs` epochs, through the resumable
loop (`train.loop.run_chunks`). `ensure_prepared` stores the posterior with orbax
(`train.checkpoint.save_variables`) in a directory named by the fingerprint of everything it depends
on (the original's weights, the training data, the preparation settings, the seed) and reuses it.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
import zlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax_unlearn.data.normalize import normalize
from jax_unlearn.errors import CheckpointError, DataError
from jax_unlearn.models.conv import convs_as_gemms
from jax_unlearn.optim.bgd import BGDState, bgd, bgd_expectations
from jax_unlearn.train import fingerprint
from jax_unlearn.train.checkpoint import has_variables, load_variables, save_variables
from jax_unlearn.train.loop import finite_guard, run_chunks

__all__ = ["PREP_FIELDS", "forward", "prepare_step", "bgd_tx", "epoch_order", "prepare",
           "posterior_description", "save_posterior", "load_posterior", "posterior_dir",
           "ensure_prepared"]

# Preparation fields that determine the stored posterior (a change prepares a new one).
PREP_FIELDS = ("std_init", "prep_mean_eta", "mc_iters", "prep_epochs", "prep_batch_size",
               "prep_bn_mode", "prep_seed_offset")
FORMAT_VERSION = 2


def _variables(params, batch_stats):
  return {"params": params} if batch_stats is None else {"params": params, "batch_stats": batch_stats}


def forward(apply_fn, params, batch_stats, x, bn_mode):
  """Logits and the batch statistics to keep (unchanged in 'eval' mode or for BN-free models)."""
  if bn_mode == "train" and batch_stats is not None:
    logits, upd = apply_fn(_variables(params, batch_stats), x, train=True, mutable=["batch_stats"])
    return logits, upd["batch_stats"]
  return apply_fn(_variables(params, batch_stats), x, train=False), batch_stats


@functools.partial(jax.jit, static_argnames=("apply_fn", "tx", "num_samples", "bn_mode", "vectorize",
                                             "matmul"))
def prepare_step(state: BGDState, batch_stats, key, images, labels, mean, std, *, apply_fn, tx,
                 num_samples, bn_mode, vectorize, matmul=False):
  """One BGD step of the preparation on the pretraining loss (batch-mean CE, summed-gradient scale).

  In 'train' BN mode the forward uses batch statistics, but the returned running statistics are the
  unchanged original ones: the preparation must not change the deployed model. `matmul` runs the
  model's convolutions as im2col GEMMs (`models.conv.matmul_convs`): the K vmapped samples are then
  batched GEMMs instead of XLA:CPU's grouped convolution (the same convolution up to float rounding;
  2.2x faster on Fashion-MNIST's AllCNN here, BUILD_NOTES)."""
  x = normalize(images, mean, std)

  def loss_fn(params):
    logits, _ = forward(apply_fn, params, batch_stats, x, bn_mode)
    return optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  def expectations():
    return bgd_expectations(loss_fn, state, key, num_samples, batch_size=labels.shape[0],
                            vectorize=vectorize)

  with convs_as_gemms(matmul):
    ex = expectations()
  _, state = tx.update(ex.e_grad, state, None, e_grad_eps=ex.e_grad_eps)
  return state, ex.loss


@functools.lru_cache(maxsize=32)
def bgd_tx(mean_eta: float, std_init: float):
  """One `bgd` transform per setting: it is a static argument of jitted steps, so reusing the object
  lets repeated preparations/forgetting runs hit the jit cache."""
  return bgd(mean_eta=mean_eta, std_init=std_init)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(n)


def prepare(apply_fn: Callable[..., Any], variables: Any, train_split: Any, info: Any, cfg: Any,
            key: jax.Array, seed: int = 0, log: Callable[[str], None] = print, ckpt_dir: str | None = None,
            fingerprint_desc: dict | None = None) -> tuple[BGDState, list[dict]]:
  """Learns p = N(μ_p, σ_p²) on `train_split` (the DiStruction paper's preparation). Returns
  (posterior, history).

  With `cfg.prep_mean_eta == 0` the returned mean *is* `variables['params']` (bit-for-bit).
  With `ckpt_dir`, the BGD state is saved with orbax every `cfg.prep_checkpoint_every` epochs; a run
  started again resumes there and ends with exactly the posterior of an uninterrupted run (shuffles
  are a function of (seed, epoch), MC keys of the step)."""
  images = np.asarray(train_split.images, np.float32)
  labels = np.asarray(train_split.labels, np.int32)
  n = len(labels)
  if n == 0:
    raise DataError("DiStruction preparation needs training data, got an empty split; prepare the "
                    "posterior before discarding the data (distruction.ensure_prepared)")
  bs = min(int(cfg.prep_batch_size), n)
  tx = bgd_tx(float(cfg.prep_mean_eta), float(cfg.std_init))
  batch_stats = variables.get("batch_stats")
  mean, std = jnp.asarray(info.mean, jnp.float32), jnp.asarray(info.std, jnp.float32)
  step_fn = functools.partial(prepare_step, apply_fn=apply_fn, tx=tx, num_samples=int(cfg.mc_iters),
                              bn_mode=cfg.prep_bn_mode, vectorize=cfg.vectorize,
                              matmul=bool(cfg.get("matmul_convs", False)))
  seed = int(seed) + int(cfg.prep_seed_offset)
  epochs = int(cfg.prep_epochs)
  steps_per_epoch = n // bs

  def epoch_fn(state, epoch):
    order, losses = epoch_order(n, seed, epoch), []
    for i in range(steps_per_epoch):
      idx = order[i * bs:(i + 1) * bs]
      state, loss = step_fn(state, batch_stats, jax.random.fold_in(key, epoch * steps_per_epoch + i),
                            images[idx], labels[idx], mean, std)
      losses.append(loss)
    sig = jnp.concatenate([s.ravel() for s in jax.tree.leaves(state.std)])
    return state, {"epoch": epoch, "loss": float(np.mean(jax.device_get(losses))),
                   "std_mean": float(sig.mean()), "std_min": float(sig.min()),
                   "std_max": float(sig.max())}

  log(f"[distruction] preparing the posterior on {n} training images ({epochs} epochs of "
      f"{steps_per_epoch} BGD steps, {int(cfg.mc_iters)} Monte-Carlo samples each)")
  state, history = run_chunks(
      epoch_fn, tx.init(variables["params"]), epochs, phase="distruction preparation",
      ckpt_dir=ckpt_dir, every=int(cfg.prep_checkpoint_every), fingerprint=fingerprint_desc,
      guard=finite_guard(("loss",)),
      fix="lower --config.distruction.std_init or prep_mean_eta and run again",
      progress=lambda i, r: (f"[distruction] prepare epoch {i + 1}/{epochs}: E_q[CE] {r['loss']:.4f}, "
                             f"sigma mean {r['std_mean']:.4g} (min {r['std_min']:.3g}, max "
                             f"{r['std_max']:.3g})"), log=log)
  if float(cfg.prep_mean_eta) == 0:
    state = BGDState(mean=variables["params"], std=state.std)  # the very same arrays: μ_p = θ_o
  return state, history


def _prep_key(seed: int):
  return jax.random.fold_in(jax.random.key(seed), zlib.crc32(b"distruction/prepare") & 0x7FFFFFFF)


def posterior_description(cfg: Any, seed: int, original: Any) -> dict:
  """What a prepared posterior depends on (its fingerprint): the original model's variables (whose own
  fingerprint covers the training data it was trained on, the data the preparation reads), the
  preparation settings and the seed. Reading it never touches training data, so forgetting with a
  stored posterior reads the forget set only."""
  return fingerprint.describe(kind="distruction_posterior", version=FORMAT_VERSION,
                              prep={f: cfg[f] for f in PREP_FIELDS}, vectorize=cfg.vectorize,
                              matmul_convs=bool(cfg.get("matmul_convs", False)),
                              seed=int(seed), original=fingerprint.tree_digest(original["params"]),
                              batch_stats=fingerprint.tree_digest(original.get("batch_stats", {})))


def save_posterior(directory: str, state: BGDState, meta: dict | None = None) -> None:
  """Writes the posterior (mean and std pytrees) and a JSON `meta` with orbax (`save_variables`)."""
  save_variables(directory, {"mean": jax.device_get(state.mean), "std": jax.device_get(state.std)},
                 meta or {})


def load_posterior(directory: str, target_params: Any, with_meta: bool = False
                   ) -> BGDState | tuple[BGDState, dict]:
  """Reads a posterior written by `save_posterior` into the structure of `target_params`."""
  target = jax.eval_shape(lambda: {"mean": target_params, "std": target_params})
  tree, meta = load_variables(directory, target, with_meta=True)
  post = BGDState(mean=tree["mean"], std=tree["std"])
  return (post, meta) if with_meta else post


def posterior_dir(ctx: Any, directory: str | None = None) -> str:
  """Where `ensure_prepared` keeps the posterior of `ctx` (see there)."""
  explicit = directory or ctx.cfg.posterior_path
  if explicit:
    return os.path.abspath(explicit)
  desc = posterior_description(ctx.cfg, int(ctx.seed), ctx.original)
  return fingerprint.tagged(ctx.cache_dir or ctx.workdir, "distruction_posterior", desc)


def ensure_prepared(ctx: Any, directory: str | None = None) -> BGDState:
  """The prepared posterior p for `ctx.original`: loaded if it was made for this original model, data
  and preparation settings, otherwise prepared on `ctx.data.train` and saved.

  Default location: `<ctx.cache_dir or ctx.workdir>/distruction_posterior-<fingerprint>` (beside the
  original model when run through `jax_unlearn.api`); `cfg.posterior_path` (or `directory`) names an
  exact directory instead, which must then hold a posterior of these inputs."""
  cfg, seed, log = ctx.cfg, int(ctx.seed), ctx.log
  desc = posterior_description(cfg, seed, ctx.original)
  directory = posterior_dir(ctx, directory)
  if has_variables(directory):
    post, meta = load_posterior(directory, ctx.original["params"], with_meta=True)
    if meta.get("fingerprint") != desc:
      raise CheckpointError(f"the DiStruction posterior in {directory} was prepared for another original "
                            "model, data or preparation settings; delete it or set another "
                            "--config.distruction.posterior_path")
    log(f"[distruction] loaded the prepared posterior {directory}")
    return post
  ckpt_dir = directory + "_ckpt"
  post, hist = prepare(ctx.model.apply, ctx.original, ctx.data.train, ctx.data.info, cfg,
                       _prep_key(seed), seed, log, ckpt_dir=ckpt_dir, fingerprint_desc=desc)
  t0 = time.time()
  save_posterior(directory, post, {"fingerprint": desc, "history": hist})
  shutil.rmtree(ckpt_dir, ignore_errors=True)  # superseded by the stored posterior
  log(f"[distruction] saved the prepared posterior {directory} ({time.time() - t0:.1f}s)")
  return post
