"""Data-free unlearning by adversarial distillation: DFKD, BlockF, GKT, IS, PF, ISPF, PD as one engine.

All seven methods are one loop (SPEC §1.6) that differs only in a `Strategy`:

* which synthetic samples the student may see (`prefilter`: none | blockf (§1.5.2) | gkt (§1.5.1));
* the generator's adversarial term (`inhibited`: Eq. 7 of ISPF, §1.3, instead of −KL(T‖S));
* the distillation target (`teacher_target`: kl | postfilter (Eq. 8–9, §1.5.3) | pd (App. I, §1.5.4)).

One *loop* is `g_steps` Adam steps of the generator (DFQ loss, §1.3) followed by `kd_steps` SGD steps of
a randomly initialised student (§1.4), each on a fresh synthetic batch. A filtered batch keeps its fixed
shape: rejected rows are masked out of the student's BatchNorm statistics and out of the batchmean KL,
and an empty batch skips the rest of that loop's student steps (§1.12), via a carry flag in the scanned
inner loop. An *epoch* is one jitted `lax.scan` over `loops_per_epoch` loops; Python only loops over
epochs (diagnostics, checkpoints, optional evaluation).

The static part of a run (networks, batch size, loop sizes) is an `Engine`, a value-hashed static jit
argument; the strategy, forget classes and hyper-parameters are traced `Knobs` carried in the state, so
all eight strategies, every forget class and every tau/lr share one compiled program.

Public API (pure functions over pytrees, usable from other JAX code)::

    engine = make_engine(teacher_model, student_model, generator, cfg, num_classes=10,
                         mean=info.mean, std=info.std)
    knobs = make_knobs(STRATEGIES["ispf"], cfg, forget_classes=(3,), num_classes=10)
    state = init_state(engine, knobs, key)
    state = run_epoch(engine, teacher_variables, state)        # jitted, engine is static
    state = loop_step(engine, teacher_variables, state)        # one loop, jitted
    diag = epoch_diagnostics(engine, state)                     # host-side dict
    unlearned = student_variables(state)

and `run_strategy(ctx, strategy)`, the method entry point shared by the strategy files
(`dfkd.py`, `blockf.py`, `gkt.py`, `inhibited.py` ("is"), `pf.py`, `ispf.py`, `pd.py` ("pd", "pd_is")).

Data-free: the engine uses only the teacher (`ctx.original`, `ctx.model`) and `ctx.data.info` (image
shape, mean/std). Real images are read only for the parity-only `selection='best_retain_test'` and for
optional evaluation logging (`eval_every > 0`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax import lax

from jax_unlearn.data.normalize import normalize
from jax_unlearn.errors import ConfigError, NumericalError
from jax_unlearn.methods import base
from jax_unlearn.models import bn_input_stats, create_generator, init_variables, sample_z
from jax_unlearn.models.conv import (_loop_safe_convs, loop_safe_conv,  # noqa: F401
                                     loop_safe_conv_general_dilated)

__all__ = [
    "Strategy", "STRATEGIES", "Engine", "Knobs", "DistillState", "default_config", "make_engine",
    "make_knobs", "init_state", "loop_step", "run_epoch", "begin_epoch", "end_epoch", "epoch_diagnostics",
    "generator_objective", "synthetic_batch", "keep_mask", "target_probs", "student_loss_and_grads",
    "student_variables", "sample_images", "run_strategy",
    "bn_statistics_loss", "one_hot_loss", "balance_loss", "activation_loss", "adversarial_loss",
    "inhibited_synthesis_loss", "postfilter_row", "postfilter", "pd_teacher_probs", "prefilter_mask",
    "blockf_mask", "masked_kl", "retain_entropy", "cosine_lr", "loop_safe_conv",
    "loop_safe_conv_general_dilated",
]


# ----------------------------------------------------------------------------------------------------
# Losses, filters and targets (pure functions; `forget_mask` is a [K] bool vector of the classes in F).

def bn_statistics_loss(stats) -> jax.Array:
  """L_BN of DFQ/DeepInversion (SPEC §1.3, §3): Σ_l ‖σ²_l − v_l‖₂ + ‖μ_l − m_l‖₂.

  `stats` is a list of (input mean μ_l, input *biased* variance σ²_l, running mean m_l, running var v_l),
  one per teacher BatchNorm (`models.bn_input_stats`). The norms are plain (unsquared) L2 norms as in the
  reference hook; `optax.safe_norm` keeps the gradient finite when a gap is exactly zero.
  """
  total = jnp.zeros((), jnp.float32)
  for mean, var, run_mean, run_var in stats:
    total = total + optax.safe_norm(run_var - var, 0.0) + optax.safe_norm(run_mean - mean, 0.0)
  return total


def one_hot_loss(t_logits) -> jax.Array:
  """L_oh (SPEC §1.3): mean_b CE(z^T_b, argmax z^T_b), the instance-entropy term of DFQ."""
  labels = jnp.argmax(t_logits, -1)
  return optax.softmax_cross_entropy_with_integer_labels(t_logits, labels).mean()


def balance_loss(t_logits) -> jax.Array:
  """L_bal (SPEC §1.3): Σ_c p̄_c log p̄_c with p̄ the batch-mean teacher softmax (negative entropy)."""
  p_bar = jax.nn.softmax(t_logits, -1).mean(0)
  return jnp.sum(jax.scipy.special.xlogy(p_bar, p_bar))


def activation_loss(t_features) -> jax.Array:
  """L_act (SPEC §1.3, DAFL): −mean |f^T| of the teacher's penultimate features (weight 0 in ISPF)."""
  return -jnp.mean(jnp.abs(t_features))


def _kl_terms(t_logits, s_logits):
  """Element-wise k_bc = p^T_bc (log p^T_bc − log p^S_bc), as `F.kl_div(log p^S, p^T, 'none')`."""
  p_t = jax.nn.softmax(t_logits, -1)
  return jax.scipy.special.xlogy(p_t, p_t) - p_t * jax.nn.log_softmax(s_logits, -1)


def adversarial_loss(t_logits, s_logits) -> jax.Array:
  """L_adv of DFKD/GKT/PF/BlockF (SPEC §1.3): −KL(p^T ‖ p^S), T = 1, batchmean.

  Minimising it makes the generator seek samples on which student and teacher disagree (Eq. 2–5).
  """
  return -jnp.sum(_kl_terms(t_logits, s_logits)) / t_logits.shape[0]


def inhibited_synthesis_loss(t_logits, s_logits, forget_mask) -> jax.Array:
  """Inhibited Synthesis, Eq. 7 of ISPF in its code form (SPEC §1.3).

  L_adv^IS = (1/B) Σ_b [ Σ_{c∈F} k_bc − Σ_{c∈R} k_bc ],  k_bc = p^T_bc (log p^T_bc − log p^S_bc).

  The generator still maximises the teacher–student gap on retained classes, but *minimises* it on the
  forget classes; since the student's forget probability stays tiny, this drives the teacher's forget
  probability (and hence forget-class synthesis) down. Gradients flow through both networks.
  """
  k = _kl_terms(t_logits, s_logits)
  signed = jnp.where(jnp.asarray(forget_mask, bool)[None, :], k, -k)
  return jnp.sum(signed) / t_logits.shape[0]


def postfilter_row(z, forget_mask, tau, gated=True) -> jax.Array:
  """PostFilter on one row of teacher logits, Eq. 8–9 of ISPF as implemented (SPEC §1.5.3).

  With m = min_c z_c and M_c = [c ∈ F] ∧ [p_c > τ] (gate, reference code; M_c = [c ∈ F] if not gated):
    Δ = Σ_c M_c (z_c − m)                  (Eq. 8)
    z̃_c = z_c + Δ / (K − |F|)  for c ∈ R   (Eq. 9)
    z̃_c = m                   where M_c    (forget logits not selected by the gate are unchanged).
  The retained logits all move by one constant, so softmax restricted to R is unchanged.
  """
  forget_mask = jnp.asarray(forget_mask, bool)
  p = jax.nn.softmax(z, -1)
  m = jnp.min(z)
  sel = forget_mask & jnp.where(jnp.asarray(gated), p > tau, True)
  delta = jnp.sum(jnp.where(sel, z - m, 0.0))
  n_retain = z.shape[-1] - jnp.sum(forget_mask)
  z_tilde = jnp.where(forget_mask, z, z + delta / n_retain)
  return jnp.where(sel, m, z_tilde)


postfilter = jax.vmap(postfilter_row, in_axes=(0, None, None, None))
postfilter.__doc__ = "`postfilter_row` over the rows of [B, K] teacher logits (Eq. 8–9 of ISPF)."


def pd_teacher_probs(t_logits, forget_mask, tau=0.0, gated=False) -> jax.Array:
  """PD target (App. I of ISPF, SPEC §1.5.4): zero the forget probabilities and renormalise.

  p̃_c = p^T_c [c ∈ R] / Σ_{r∈R} p^T_r, i.e. softmax with forget logits set to −∞. Ungated by default (the
  paper describes PD as unconditional); `gated=True` zeroes only forget entries with p^T_c > τ. Pair it
  with `masked_kl(..., target_is_probs=True)`, which uses xlogy so that 0·log 0 = 0.
  """
  forget_mask = jnp.asarray(forget_mask, bool)
  drop = forget_mask[None, :] & jnp.where(jnp.asarray(gated), jax.nn.softmax(t_logits, -1) > tau, True)
  # The softmax over the kept logits: renormalising p after zeroing would be 0/0 = NaN once every
  # kept probability underflows (a logit gap of ~104 in float32).
  return jax.nn.softmax(jnp.where(drop, -jnp.inf, t_logits), -1)


def prefilter_mask(t_logits, forget_mask, tau) -> jax.Array:
  """GKT PreFilter (SPEC §1.5.1): keep row b iff p^T_bf < τ (strict) for every forget class f."""
  p = jax.nn.softmax(t_logits, -1)
  ok = jnp.where(jnp.asarray(forget_mask, bool)[None, :], p < tau, True)
  return jnp.all(ok, -1)


def blockf_mask(t_logits, forget_mask) -> jax.Array:
  """BlockF (SPEC §1.5.2): keep row b iff argmax_c z^T_bc ∉ F."""
  return ~jnp.asarray(forget_mask, bool)[jnp.argmax(t_logits, -1)]


def masked_kl(t_logits_or_probs, s_logits, mask=None, target_is_probs=False) -> jax.Array:
  """KL(p^T ‖ p^S) with T = 1, `batchmean` over the kept rows only (SPEC §1.4 step 6, §1.12).

  (1/N_kept) Σ_{b kept} Σ_c p_bc (log p_bc − log p^S_bc); the target is logits (softmaxed here) or, with
  `target_is_probs`, probabilities (PD). An empty mask gives 0 (the caller skips such steps anyway).
  """
  p = t_logits_or_probs if target_is_probs else jax.nn.softmax(t_logits_or_probs, -1)
  row = jnp.sum(jax.scipy.special.xlogy(p, p) - p * jax.nn.log_softmax(s_logits, -1), -1)
  if mask is None:
    return row.mean()
  m = mask.astype(row.dtype)
  return jnp.sum(row * m) / jnp.maximum(jnp.sum(m), 1.0)


def retain_entropy(t_logits, forget_mask, mask=None) -> jax.Array:
  """Eq. 11 of ISPF (SPEC §1.9): H = −Σ_{b kept} Σ_{c∈R} q_bc log q_bc, q_b = softmax over retain logits.

  Summed (not averaged) over the N samples taking part in distillation, as the reference's `entropy()`.
  The PostFilter shift leaves q unchanged, so raw teacher logits are used.
  """
  q = jax.nn.softmax(jnp.where(jnp.asarray(forget_mask, bool)[None, :], -jnp.inf, t_logits), -1)
  h = -jnp.sum(jax.scipy.special.xlogy(q, q), -1)
  return jnp.sum(h if mask is None else h * mask.astype(h.dtype))


def cosine_lr(lr, eta_min, t_max, t) -> jax.Array:
  """PyTorch `CosineAnnealingLR` closed form: η_min + (η_0 − η_min)(1 + cos(π t / T_max)) / 2.

  `t` counts scheduler steps, taken once per post-warm-up epoch (SPEC §1.4 step 8; T_max = 200 in the
  reference whatever the number of epochs).
  """
  return eta_min + (lr - eta_min) * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.asarray(t, jnp.float32) / t_max))


# ----------------------------------------------------------------------------------------------------
# Convolutions inside lax.scan / lax.cond on XLA:CPU.
#
# The conv-gradient-in-loop workaround for XLA:CPU (jax-ml/jax#12868) lives in `models.conv`.


def _apply(engine, module, *args, **kwargs):
  # `conv_interceptor` (e.g. `sweep.matmul_convs`) wins over the loop-safe convs: a vmapped sweep needs
  # convs whose per-run kernels become batched matmuls, not XLA:CPU's slow grouped convolutions.
  interceptor = engine.conv_interceptor or (_loop_safe_convs if engine.loop_safe_convs else None)
  if interceptor is None:
    return module.apply(*args, **kwargs)
  with nn.intercept_methods(interceptor):
    return module.apply(*args, **kwargs)


# ----------------------------------------------------------------------------------------------------
# Strategy, config, engine and state.

@dataclasses.dataclass(frozen=True)
class Strategy:
  """Which ISPF ablation to run (SPEC §1.1: the reference's `--strategy` substrings).

  prefilter: 'none' | 'blockf' (BlockF) | 'gkt' (PreFilter, p_f < τ).
  inhibited: use the IS generator loss (Eq. 7) instead of −KL.
  teacher_target: 'kl' (plain teacher) | 'postfilter' (Eq. 8–9) | 'pd' (App. I).
  clear_forget_in_generator: the reference's 'None' strategy (plain DFKD) empties the forget list inside
    the synthesizer; it only matters together with `inhibited`.
  """
  name: str
  prefilter: str = "none"
  inhibited: bool = False
  teacher_target: str = "kl"
  clear_forget_in_generator: bool = False

  def __post_init__(self):
    if self.prefilter not in ("none", "blockf", "gkt"):
      raise ConfigError(f"strategy {self.name!r}: prefilter {self.prefilter!r} is not one of "
                        "none|blockf|gkt; fix the Strategy definition")
    if self.teacher_target not in ("kl", "postfilter", "pd"):
      raise ConfigError(f"strategy {self.name!r}: teacher_target {self.teacher_target!r} is not one of "
                        "kl|postfilter|pd; fix the Strategy definition")


STRATEGIES = {
    "dfkd": Strategy("dfkd", clear_forget_in_generator=True),       # 'None': plain DFQ distillation
    "blockf": Strategy("blockf", prefilter="blockf"),               # 'BlockF'
    "gkt": Strategy("gkt", prefilter="gkt"),                        # 'GKT' (PreFilter)
    "is": Strategy("is", prefilter="gkt", inhibited=True),          # 'IS_GKT'
    "pf": Strategy("pf", teacher_target="postfilter"),              # 'PF'
    "ispf": Strategy("ispf", inhibited=True, teacher_target="postfilter"),  # 'IS_PF'
    "pd": Strategy("pd", teacher_target="pd"),                      # App. I, PD
    "pd_is": Strategy("pd_is", inhibited=True, teacher_target="pd"),  # App. I, PD+IS
}


CONFIG_KEY = "ispf"  # the sub-config this module reads (config.ispf), shared by all strategies


def default_config() -> ml_collections.ConfigDict:
  """`config.ispf`, shared by every data-free method (dfkd, blockf, gkt, is, pf, ispf, pd, pd_is).

  Defaults are the ISPF CIFAR-10 script (SPEC §1.6); configs for other settings override them.
  """
  c = ml_collections.ConfigDict()
  c.generator = "dfq"        # 'dfq' (CMI LargeGenerator, sigmoid output, §1.2) | 'zskt' (GKT/ZSKT, §2.1)
  c.nz = 256                 # noise dimension (ISPF uses 256 for both DFQ and ZSKT)
  c.ngf = 64                 # generator width
  c.epochs = 200             # distillation epochs, *after* the warm-up (SVHN 100, CIFAR 200)
  c.warmup = 2               # generator-only epochs before distillation starts
  c.loops_per_epoch = 5      # ep_steps // kd_steps (SVHN 1, CIFAR-10 5, CIFAR-100 10)
  c.kd_steps = 10            # student SGD steps per loop, each on a fresh batch
  c.g_steps = 1              # generator Adam steps per loop
  c.batch_size = 256         # synthesis batch = student batch (before filtering)
  c.lr = 0.05                # student SGD lr (0.1 for SVHN AllCNN)
  c.lr_g = 1e-3              # generator Adam lr, betas (0.5, 0.999), no schedule
  c.momentum = 0.9
  c.weight_decay = 1e-4      # PyTorch-style: added to the gradient before momentum
  c.t_max = 200              # cosine T_max in epochs; 200 whatever `epochs` is (reference quirk)
  c.eta_min = 2e-4
  # Generator loss weights. DFQ (ISPF script): adv = bn = oh = balance = 1, act = 0.
  # ZSKT variant (App. H, §1.11): adv = 1, bn = oh = balance = act = 0 (and generator='zskt' for the
  # GKT/ZSKT generator architecture, or 'dfq' for ISPF's own code, which keeps the LargeGenerator).
  c.bn = 1.0
  c.oh = 1.0
  c.adv = 1.0
  c.balance = 1.0
  c.act = 0.0
  c.tau = 0.01               # PreFilter/PostFilter threshold (0.001 for CIFAR-100)
  c.gated = True             # PostFilter gated by tau, as in the reference code (paper: ungated)
  c.pd_gated = False         # PD gated by tau (paper: ungated, the default)
  c.selection = "final"      # 'final' | 'best_retain_test' (the reference's test-set selection on retain
                             # accuracy, overall accuracy for dfkd; parity only)
  c.student_width = ml_collections.config_dict.placeholder(float)  # None: same width as the teacher
  c.eval_every = 0           # evaluate forget/retain test accuracy every N epochs (0: never, data-free)
  c.checkpoint_every = 0     # save a resumable engine state every N epochs (0: never)
  c.plots = True             # write distill_curves.png and synthetic_samples.png into the workdir
  return c


@dataclasses.dataclass(frozen=True)
class Engine:
  """The static part of a run: networks and loop sizes. A static jit argument, hashed *by value*, so
  every strategy, forget class and hyper-parameter setting on the same networks shares one compiled
  program (those live in the traced `Knobs`).

  teacher / student / generator: flax modules (anything with `.init` and `.apply`); classifiers take
    `(x, train, mask, features)`, the generator `(z, train)`.
  keep_fn: optional `t_logits -> [B] bool` that replaces the strategy's filter (an extension/test hook).
  loop_safe_convs: route `nn.Conv`s through `loop_safe_conv` (XLA:CPU, jax-ml/jax#12868).
  conv_interceptor: optional `nn.intercept_methods` interceptor used instead (a module-level function,
    hashed by identity); `jax_unlearn.sweep` sets `matmul_convs` for vmapped sweeps.
  """
  teacher: Any
  student: Any
  generator: Any
  num_classes: int
  mean: tuple
  std: tuple
  normalize_output: bool            # DFQ generator outputs [0,1] images; ZSKT's are already normalised
  batch_size: int
  nz: int
  kd_steps: int
  g_steps: int
  loops_per_epoch: int
  keep_fn: Callable | None = None
  loop_safe_convs: bool = True
  conv_interceptor: Callable | None = None


@flax.struct.dataclass
class Knobs:
  """The traced part of a run: strategy switches and hyper-parameters (arrays; see `make_knobs`).

  forget: [K] bool, the classes in F; gen_forget: F as the generator's IS loss sees it (empty for DFKD);
  prefilter: 0 none | 1 BlockF | 2 GKT; inhibited: IS loss (Eq. 7); target: 0 KL | 1 PostFilter | 2 PD;
  weights: (bn, oh, adv, balance, act); the rest as in `default_config`.
  """
  forget: jax.Array
  gen_forget: jax.Array
  prefilter: jax.Array
  inhibited: jax.Array
  target: jax.Array
  tau: jax.Array
  gated: jax.Array
  pd_gated: jax.Array
  weights: jax.Array
  lr: jax.Array
  eta_min: jax.Array
  t_max: jax.Array
  warmup: jax.Array


@flax.struct.dataclass
class DistillState:
  """Everything a run carries between steps (a pytree; checkpointable with orbax).

  knobs: the run's strategy and hyper-parameters (traced, constant during the run);
  epoch: epochs completed (warm-up included); loop: global loop counter (keys fold it in);
  step: student SGD steps applied; sched_step: cosine-scheduler steps taken; last_skipped: whether the
  latest loop hit an empty batch (the reference then skips the epoch-end scheduler step);
  diag: per-epoch sums, reset by `begin_epoch` (see `epoch_diagnostics`).
  """
  knobs: Knobs
  g_params: Any
  g_batch_stats: Any
  g_opt_state: Any
  s_params: Any
  s_batch_stats: Any
  s_opt_state: Any
  key: jax.Array
  epoch: jax.Array
  loop: jax.Array
  step: jax.Array
  sched_step: jax.Array
  last_skipped: jax.Array
  diag: dict


_PREFILTERS = ("none", "blockf", "gkt")
_TARGETS = ("kl", "postfilter", "pd")


def _sgd_with_wd(learning_rate, momentum, weight_decay):
  # PyTorch SGD: wd·θ joins the gradient before the momentum buffer; lr multiplies the buffer.
  return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate, momentum=momentum))


def _student_tx(lr=0.1, momentum=0.9, weight_decay=1e-4) -> optax.GradientTransformation:
  """SGD(momentum, PyTorch weight decay) with its hyper-parameters in the optimiser state, so the
  cosine schedule (set per loop from `sched_step`) and the values themselves are traced."""
  return optax.inject_hyperparams(_sgd_with_wd)(learning_rate=lr, momentum=momentum,
                                               weight_decay=weight_decay)


def _generator_tx(lr_g=1e-3) -> optax.GradientTransformation:
  """Adam, betas (0.5, 0.999), no schedule (SPEC §1.3); lr_g lives in the optimiser state."""
  return optax.inject_hyperparams(optax.adam, static_args=("b1", "b2"))(learning_rate=lr_g, b1=0.5,
                                                                        b2=0.999)


def make_engine(teacher_model, student_model, generator, cfg, *, num_classes: int, mean, std) -> Engine:
  """The static `Engine` from flax modules and a `config.ispf` (only its loop sizes are read)."""
  return Engine(
      teacher=teacher_model, student=student_model, generator=generator, num_classes=int(num_classes),
      mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std),
      normalize_output=(cfg.get("generator", "dfq") == "dfq"), batch_size=int(cfg.batch_size),
      nz=int(getattr(generator, "nz", cfg.nz)), kd_steps=int(cfg.kd_steps), g_steps=int(cfg.g_steps),
      loops_per_epoch=int(cfg.loops_per_epoch))


def make_knobs(strategy: Strategy, cfg, *, forget_classes, num_classes: int) -> Knobs:
  """The traced `Knobs` of `strategy` with the hyper-parameters of `cfg` (a `config.ispf`)."""
  fset = set(int(c) for c in forget_classes)
  forget = jnp.asarray([c in fset for c in range(num_classes)], bool)
  f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
  return Knobs(
      forget=forget,
      gen_forget=jnp.zeros_like(forget) if strategy.clear_forget_in_generator else forget,
      prefilter=jnp.asarray(_PREFILTERS.index(strategy.prefilter), jnp.int32),
      inhibited=jnp.asarray(strategy.inhibited), target=jnp.asarray(_TARGETS.index(strategy.teacher_target),
                                                                    jnp.int32),
      tau=f32(cfg.tau), gated=jnp.asarray(bool(cfg.gated)), pd_gated=jnp.asarray(bool(cfg.pd_gated)),
      weights=f32([float(cfg[k]) for k in ("bn", "oh", "adv", "balance", "act")]),
      lr=f32(cfg.lr), eta_min=f32(cfg.eta_min), t_max=f32(cfg.t_max),
      warmup=jnp.asarray(int(cfg.warmup), jnp.int32))


_SCALARS = ("g_count", "g_loss", "g_bn", "g_oh", "g_adv", "g_balance", "g_act", "s_attempts", "s_count",
            "s_loss", "kept", "retain_entropy", "teacher_forget_prob", "target_forget_prob",
            "student_forget_prob", "skipped_loops", "lr")


def _empty_diag(num_classes: int) -> dict:
  d = {k: jnp.zeros((), jnp.float32) for k in _SCALARS}
  d["gen_hist"] = jnp.zeros((num_classes,), jnp.float32)
  d["sample_hist"] = jnp.zeros((num_classes,), jnp.float32)
  return d


def init_state(engine: Engine, knobs: Knobs, key: jax.Array, *, lr_g=1e-3, momentum=0.9,
               weight_decay=1e-4, student_variables=None, generator_variables=None) -> DistillState:
  """A fresh generator and a *randomly initialised* student (SPEC §1.4 step 9), and optimiser states.

  `key` is split into (generator init, student init, run key); every step's key is
  `fold_in(fold_in(run_key, loop), phase)`. Pass `student_variables` / `generator_variables` to start
  from given ones.
  """
  k_g, k_s, k_run = jax.random.split(key, 3)
  z = jnp.zeros((2, engine.nz))
  if generator_variables is None:
    generator_variables = init_variables(engine.generator, k_g, z.shape, train=True)
  if student_variables is None:
    img = jax.eval_shape(lambda v: engine.generator.apply(v, z, train=False), generator_variables)
    student_variables = init_variables(engine.student, k_s, (1,) + tuple(img.shape[1:]))
  gp, gbs = generator_variables["params"], generator_variables.get("batch_stats", {})
  sp, sbs = student_variables["params"], student_variables.get("batch_stats", {})
  i32 = lambda v: jnp.asarray(v, jnp.int32)  # noqa: E731
  return DistillState(
      knobs=knobs, g_params=gp, g_batch_stats=gbs, g_opt_state=_generator_tx(float(lr_g)).init(gp),
      s_params=sp, s_batch_stats=sbs,
      s_opt_state=_student_tx(knobs.lr, float(momentum), float(weight_decay)).init(sp), key=k_run,
      epoch=i32(0), loop=i32(0), step=i32(0), sched_step=i32(0), last_skipped=jnp.asarray(False),
      diag=_empty_diag(engine.num_classes))


def student_variables(state: DistillState) -> dict:
  """The unlearned model: `{'params', 'batch_stats'}` of the student."""
  return {"params": state.s_params, "batch_stats": state.s_batch_stats}


def _to_input(engine: Engine, x):
  return normalize(x, engine.mean, engine.std) if engine.normalize_output else x


def _loop_key(state: DistillState, phase: int) -> jax.Array:
  # Keys are a function of (run key, global loop, phase, step) only: a resumed run draws the same
  # numbers, and no key is used twice.
  return jax.random.fold_in(jax.random.fold_in(state.key, state.loop), phase)


# ----------------------------------------------------------------------------------------------------
# Generator phase (SPEC §1.3).

def generator_objective(engine: Engine, knobs: Knobs, g_params, g_batch_stats, s_vars, teacher, z):
  """L_G = bn·L_BN + oh·L_oh + adv·L_adv(−KL or IS) + balance·L_bal + act·L_act (SPEC §1.3).

  Generator BN in train mode (batch statistics, running averages updated); teacher and student in eval
  mode; gradients reach the generator through both networks. Returns (L_G, (parts, new generator
  batch_stats, teacher logits)).
  """
  x_raw, g_upd = _apply(engine, engine.generator, {"params": g_params, "batch_stats": g_batch_stats},
                              z, train=True, mutable=["batch_stats"])
  x = _to_input(engine, x_raw)
  (t_logits, t_feat), t_upd = _apply(engine, engine.teacher, teacher, x, train=False, features=True,
                                     mutable=["bn_stats"])
  s_logits = _apply(engine, engine.student, s_vars, x, train=False)
  adv = jnp.where(knobs.inhibited, inhibited_synthesis_loss(t_logits, s_logits, knobs.gen_forget),
                  adversarial_loss(t_logits, s_logits))
  parts = {"bn": bn_statistics_loss(bn_input_stats(t_upd.get("bn_stats", {}))),
           "oh": one_hot_loss(t_logits), "adv": adv, "balance": balance_loss(t_logits),
           "act": activation_loss(t_feat)}
  total = jnp.dot(knobs.weights, jnp.stack([parts[k] for k in ("bn", "oh", "adv", "balance", "act")]))
  parts = {k: lax.stop_gradient(v) for k, v in parts.items()}
  return total, (parts, g_upd["batch_stats"], lax.stop_gradient(t_logits))


def _generator_phase(engine: Engine, teacher, state: DistillState) -> DistillState:
  """`g_steps` Adam steps of the generator (SPEC §1.3)."""
  key = _loop_key(state, 0)
  s_vars = student_variables(state)
  grad_fn = jax.value_and_grad(functools.partial(generator_objective, engine, state.knobs), has_aux=True)
  tx = _generator_tx()

  def one(carry, i):
    gp, gbs, gopt, diag = carry
    z = sample_z(jax.random.fold_in(key, i), engine.batch_size, engine.nz)
    (loss, (parts, gbs, t_logits)), grads = grad_fn(gp, gbs, s_vars, teacher, z)
    updates, gopt = tx.update(grads, gopt, gp)
    gp = optax.apply_updates(gp, updates)
    diag = dict(diag)
    diag["g_count"] += 1.0
    diag["g_loss"] += loss
    for k, v in parts.items():
      diag["g_" + k] += v
    # The reference's "generated labels" (Fig. 1–2): teacher argmax of the generator-step batch.
    diag["gen_hist"] += jax.nn.one_hot(jnp.argmax(t_logits, -1), engine.num_classes).sum(0)
    return (gp, gbs, gopt, diag), None

  (gp, gbs, gopt, diag), _ = lax.scan(
      one, (state.g_params, state.g_batch_stats, state.g_opt_state, state.diag),
      jnp.arange(engine.g_steps))
  return state.replace(g_params=gp, g_batch_stats=gbs, g_opt_state=gopt, diag=diag)


# ----------------------------------------------------------------------------------------------------
# Student phase (SPEC §1.4, §1.12).

def synthetic_batch(engine: Engine, teacher, g_variables, key):
  """A student batch: x = Norm(G_eval(z)) (no gradient) and the teacher's eval-mode logits on it."""
  z = sample_z(key, engine.batch_size, engine.nz)
  x = lax.stop_gradient(_to_input(engine, _apply(engine, engine.generator, g_variables, z, train=False)))
  return x, _apply(engine, engine.teacher, teacher, x, train=False)


def keep_mask(engine: Engine, knobs: Knobs, t_logits) -> jax.Array:
  """Which rows the student may see: all, BlockF (§1.5.2) or GKT's PreFilter (§1.5.1)."""
  if engine.keep_fn is not None:
    return engine.keep_fn(t_logits)
  options = jnp.stack([jnp.ones(t_logits.shape[:1], bool), blockf_mask(t_logits, knobs.forget),
                       prefilter_mask(t_logits, knobs.forget, knobs.tau)])
  return options[knobs.prefilter]


def target_probs(knobs: Knobs, t_logits) -> jax.Array:
  """The distillation target as probabilities: softmax(z^T), softmax(PostFilter(z^T)) or PD."""
  return lax.switch(knobs.target, [
      lambda t: jax.nn.softmax(t, -1),
      lambda t: jax.nn.softmax(postfilter(t, knobs.forget, knobs.tau, knobs.gated), -1),
      lambda t: pd_teacher_probs(t, knobs.forget, knobs.tau, knobs.pd_gated),
  ], t_logits)


def student_loss_and_grads(engine: Engine, knobs: Knobs, s_params, s_batch_stats, x, t_logits,
                           mask=None):
  """Student forward in train mode and the masked batchmean KL to the teacher target (SPEC §1.4).

  With `mask`, every student BN uses kept rows only (batch statistics and running averages) and the KL
  divides by N_kept: identical to the reference's physically shrunk batch (SPEC §1.12).
  Returns (loss, (student logits, new batch_stats)), grads.
  """
  target = target_probs(knobs, lax.stop_gradient(t_logits))

  def loss_fn(p):
    s_logits, upd = _apply(engine, engine.student, {"params": p, "batch_stats": s_batch_stats}, x,
                           train=True, mask=mask, mutable=["batch_stats"])
    loss = masked_kl(target, s_logits, mask, target_is_probs=True)
    return loss, (s_logits, upd.get("batch_stats", s_batch_stats))

  return jax.value_and_grad(loss_fn, has_aux=True)(s_params)


def _student_phase(engine: Engine, teacher, state: DistillState) -> DistillState:
  """`kd_steps` SGD steps on fresh batches; the first empty batch ends the loop's student phase."""
  key = _loop_key(state, 1)
  knobs = state.knobs
  g_vars = {"params": state.g_params, "batch_stats": state.g_batch_stats}
  lr = cosine_lr(knobs.lr, knobs.eta_min, knobs.t_max, state.sched_step).astype(jnp.float32)
  opt = state.s_opt_state
  opt = opt._replace(hyperparams=dict(opt.hyperparams, learning_rate=lr))
  tx = _student_tx()
  fm = knobs.forget
  n_forget = jnp.maximum(jnp.sum(fm), 1)

  def update(st, x, t_logits, keep):
    sp, sbs, sopt, step, diag = st
    (loss, (s_logits, sbs)), grads = student_loss_and_grads(engine, knobs, sp, sbs, x, t_logits, keep)
    updates, sopt = tx.update(grads, sopt, sp)
    sp = optax.apply_updates(sp, updates)
    km = keep.astype(jnp.float32)
    n = jnp.sum(km)
    fprob = lambda p: jnp.sum(jnp.sum(jnp.where(fm, p, 0.0), -1) / n_forget * km) / n  # noqa: E731
    diag = dict(diag)
    diag["s_count"] += 1.0
    diag["s_loss"] += loss
    diag["kept"] += n
    diag["retain_entropy"] += retain_entropy(t_logits, fm, keep)
    diag["teacher_forget_prob"] += fprob(jax.nn.softmax(t_logits, -1))
    diag["target_forget_prob"] += fprob(target_probs(knobs, t_logits))
    diag["student_forget_prob"] += fprob(jax.nn.softmax(s_logits, -1))
    return sp, sbs, sopt, step + 1, diag

  def attempt(carry, j):
    st, _ = carry
    x, t_logits = synthetic_batch(engine, teacher, g_vars, jax.random.fold_in(key, j))
    keep = keep_mask(engine, knobs, t_logits)
    nonempty = jnp.any(keep)
    sp, sbs, sopt, step, diag = st
    diag = dict(diag)
    diag["s_attempts"] += 1.0
    diag["sample_hist"] += jax.nn.one_hot(jnp.argmax(t_logits, -1), engine.num_classes).sum(0)
    st = lax.cond(nonempty, lambda s: update(s, x, t_logits, keep), lambda s: s,
                  (sp, sbs, sopt, step, diag))
    return st, nonempty

  def body(carry, j):
    # `alive` turns False at the first empty batch and stays False: the reference's `train()` returns.
    return lax.cond(carry[1], lambda c: attempt(c, j), lambda c: c, carry), None

  st0 = (state.s_params, state.s_batch_stats, opt, state.step, state.diag)
  ((sp, sbs, sopt, step, diag), alive), _ = lax.scan(body, (st0, jnp.asarray(True)),
                                                     jnp.arange(engine.kd_steps))
  diag = dict(diag)
  diag["skipped_loops"] += (~alive).astype(jnp.float32)
  diag["lr"] = lr
  return state.replace(s_params=sp, s_batch_stats=sbs, s_opt_state=sopt, step=step, diag=diag,
                       last_skipped=~alive)


def _loop_step(engine: Engine, teacher, state: DistillState) -> DistillState:
  state = _generator_phase(engine, teacher, state)
  # Warm-up epochs train the generator only (SPEC §1.6).
  state = lax.cond(state.epoch >= state.knobs.warmup, lambda s: _student_phase(engine, teacher, s),
                   lambda s: s, state)
  return state.replace(loop=state.loop + 1)


@functools.partial(jax.jit, static_argnums=0)
def loop_step(engine: Engine, teacher, state: DistillState) -> DistillState:
  """One loop (jitted, `engine` static): `g_steps` generator steps, then `kd_steps` student steps unless
  the epoch is a warm-up epoch. The body of `run_epoch`'s scan."""
  return _loop_step(engine, teacher, state)


def begin_epoch(engine: Engine, state: DistillState) -> DistillState:
  """Resets the per-epoch diagnostic sums."""
  return state.replace(diag=_empty_diag(engine.num_classes))


def end_epoch(engine: Engine, state: DistillState) -> DistillState:
  """Epoch counter and the once-per-epoch cosine step, taken only after warm-up and only if the last
  loop's student phase was not cut short by an empty batch (the reference's `continue`, SPEC §1.6)."""
  del engine
  take = (state.epoch >= state.knobs.warmup) & ~state.last_skipped
  return state.replace(epoch=state.epoch + 1, sched_step=state.sched_step + take.astype(jnp.int32))


def _run_epoch(engine: Engine, teacher, state: DistillState) -> DistillState:
  state = begin_epoch(engine, state)
  state, _ = lax.scan(lambda s, _: (_loop_step(engine, teacher, s), None), state, None,
                      length=engine.loops_per_epoch)
  return end_epoch(engine, state)


@functools.partial(jax.jit, static_argnums=0)
def run_epoch(engine: Engine, teacher, state: DistillState) -> DistillState:
  """One epoch as a single jitted `lax.scan` of `loop_step` over `loops_per_epoch` loops, between
  `begin_epoch` and `end_epoch`; read `epoch_diagnostics(engine, state)` afterwards."""
  return _run_epoch(engine, teacher, state)


def epoch_diagnostics(engine: Engine, state: DistillState) -> dict:
  """Host-side summary of the epoch just run (means over the epoch's batches, not the last batch).

  * forget_synthesis_rate: fraction of generator-step samples whose teacher argmax is in F (the
    reference's "generated labels", Fig. 1–2); sample_forget_rate: the same on student batches (eval-mode
    generator, before filtering).
  * kept_mean: kept samples per executed student batch; retain_entropy: Eq. 11 (summed over the kept
    samples of a batch) averaged over the executed student batches; *_forget_prob: mean over kept rows of
    the mean probability of the forget classes (teacher, distillation target after PF/PD, student).
  The reference logs these on the last student batch of each epoch; averages are less noisy.
  """
  d = jax.device_get(state.diag)
  f = np.asarray(state.knobs.forget, bool)
  g, s = float(d["g_count"]), float(d["s_count"])
  mean_s = lambda k: float(d[k]) / s if s else None  # noqa: E731
  gen_hist, sample_hist = np.asarray(d["gen_hist"]), np.asarray(d["sample_hist"])
  epoch = int(state.epoch)
  return {
      "epoch": epoch, "phase": "warmup" if epoch <= int(state.knobs.warmup) else "distill",
      "gen_loss": float(d["g_loss"]) / g if g else None,
      **{f"gen_{k}": (float(d["g_" + k]) / g if g else None)
         for k in ("bn", "oh", "adv", "balance", "act")},
      "gen_label_hist": gen_hist.astype(int).tolist(),
      "forget_synthesis_rate": float(gen_hist[f].sum() / max(gen_hist.sum(), 1.0)),
      "sample_label_hist": sample_hist.astype(int).tolist(),
      "sample_forget_rate": (float(sample_hist[f].sum() / sample_hist.sum()) if sample_hist.sum()
                             else None),
      "student_steps": int(s), "student_attempts": int(d["s_attempts"]),
      "skipped_loops": int(d["skipped_loops"]),
      "kept_mean": mean_s("kept"),
      "kept_fraction": (float(d["kept"]) / (s * engine.batch_size)) if s else None,
      "student_loss": mean_s("s_loss"), "retain_entropy": mean_s("retain_entropy"),
      "teacher_forget_prob": mean_s("teacher_forget_prob"),
      "target_forget_prob": mean_s("target_forget_prob"),
      "student_forget_prob": mean_s("student_forget_prob"),
      "lr": float(d["lr"]) if float(d["s_attempts"]) else None,
  }


@functools.partial(jax.jit, static_argnums=(0, 3))
def sample_images(engine: Engine, state: DistillState, key, n: int):
  """`n` eval-mode generator samples as displayable [0,1] images (ZSKT outputs are de-normalised)."""
  x = engine.generator.apply({"params": state.g_params, "batch_stats": state.g_batch_stats},
                             sample_z(key, n, engine.nz), train=False)
  if not engine.normalize_output:
    x = x * jnp.asarray(engine.std) + jnp.asarray(engine.mean)
  return jnp.clip(x, 0.0, 1.0)


# ----------------------------------------------------------------------------------------------------
# Method entry point.

def _config(ctx) -> ml_collections.ConfigDict:
  cfg = default_config()
  user = ctx.config.get("ispf", None) if hasattr(ctx.config, "get") else None
  if user is not None:
    for k in user.keys():
      if k not in cfg:
        raise ConfigError(f"unknown field config.ispf.{k}; valid fields: {', '.join(sorted(cfg.keys()))}")
      try:
        cfg[k] = user[k]
      except (TypeError, ValueError) as e:
        raise ConfigError(f"config.ispf.{k}={user[k]!r} has the wrong type ({e}); use a "
                          f"{type(cfg[k]).__name__}") from e
  _validate(cfg)
  return cfg


def _validate(cfg):
  def need(ok, field, msg):
    if not ok:
      raise ConfigError(f"config.ispf.{field}={cfg[field]!r} {msg}; set --config.ispf.{field}")
  need(cfg.generator in ("dfq", "zskt"), "generator", "is not 'dfq' or 'zskt'")
  need(cfg.selection in ("final", "best_retain_test"), "selection", "is not 'final' or 'best_retain_test'")
  for k in ("batch_size", "kd_steps", "loops_per_epoch", "nz", "ngf"):
    need(int(cfg[k]) >= 1, k, "must be >= 1")
  for k in ("epochs", "warmup", "g_steps", "eval_every", "checkpoint_every"):
    need(int(cfg[k]) >= 0, k, "must be >= 0")
  need(0.0 <= float(cfg.tau) <= 1.0, "tau", "must be in [0, 1] (e.g. 0.01)")
  need(float(cfg.lr) > 0, "lr", "must be > 0")
  need(float(cfg.t_max) > 0, "t_max", "must be > 0 (the reference uses 200)")
  need(cfg.student_width is None or float(cfg.student_width) > 0, "student_width", "must be > 0 or unset")


def _student_model(ctx, cfg):
  if cfg.student_width is None:
    return ctx.model
  if not hasattr(ctx.model, "width"):
    raise ConfigError(f"config.ispf.student_width is set but {type(ctx.model).__name__} has no width; "
                      "unset --config.ispf.student_width")
  return ctx.model.clone(width=float(cfg.student_width))


def _evaluate(ctx, model, variables) -> dict:
  from jax_unlearn.train.evaluate import accuracy  # noqa: PLC0415 (real data: optional logging only)
  d = ctx.data
  r = accuracy(model, variables, d.retain_test, d.info)
  f = accuracy(model, variables, d.forget_test, d.info)
  n_r, n_f = len(d.retain_test.labels), len(d.forget_test.labels)
  return {"retain_test_acc": r, "forget_test_acc": f,
          "test_acc": (r * n_r + (f * n_f if n_f else 0.0)) / max(n_r + n_f, 1)}


def _finite(tree) -> bool:
  return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


def run_strategy(ctx: base.UnlearnContext, strategy: Strategy) -> base.UnlearnResult:
  """Runs one data-free strategy end to end; writes `<workdir>/diagnostics.jsonl` (one line per epoch).

  Reads `ctx.config.ispf` (see `default_config`), the teacher (`ctx.model`, `ctx.original`) and
  `ctx.data.info` only. Returns the final student (or, with selection='best_retain_test', the
  post-warm-up epoch with the best retain *test* accuracy, the reference's parity-only selection).
  """
  cfg = _config(ctx)
  info = ctx.data.info
  num_classes = int(getattr(info, "num_classes", ctx.num_classes))
  forget = tuple(int(c) for c in ctx.forget_classes)
  if strategy.name != "dfkd" and not forget:
    raise ConfigError(f"method {strategy.name!r} unlearns whole classes but no forget class is set; use "
                      "--config.forget.mode=class --config.forget.classes=3 (or method 'dfkd')")
  if any(c < 0 or c >= num_classes for c in forget) or len(set(forget)) >= num_classes:
    raise ConfigError(f"forget classes {forget} must be distinct classes in [0, {num_classes}) that leave "
                      "at least one retained class; fix --config.forget.classes")
  needs_data = cfg.selection == "best_retain_test" or int(cfg.eval_every) > 0
  if needs_data and (getattr(ctx.data, "retain_test", None) is None):
    raise ConfigError("config.ispf.selection='best_retain_test' / eval_every need the test split, which "
                      "this context lacks; use --config.ispf.selection=final --config.ispf.eval_every=0")
  h, w, c = tuple(info.image_shape)
  if h != w or h % 4:
    raise ConfigError(f"the generator makes square images with side divisible by 4, got {info.image_shape};"
                      " use a dataset with such images")
  student_model = _student_model(ctx, cfg)
  generator = create_generator(cfg.generator, h, c, nz=int(cfg.nz), ngf=int(cfg.ngf))
  engine = make_engine(ctx.model, student_model, generator, cfg, num_classes=num_classes,
                       mean=info.mean, std=info.std)
  knobs = make_knobs(strategy, cfg, forget_classes=forget, num_classes=num_classes)
  key_init, key_vis = jax.random.split(ctx.key)
  state = init_state(engine, knobs, key_init, lr_g=cfg.lr_g, momentum=cfg.momentum,
                     weight_decay=cfg.weight_decay)
  teacher = {k: v for k, v in ctx.original.items() if k in ("params", "batch_stats")}
  os.makedirs(ctx.workdir, exist_ok=True)
  diag_path = os.path.join(ctx.workdir, "diagnostics.jsonl")
  total_epochs = int(cfg.warmup) + int(cfg.epochs)

  ckptr = best = None
  best_acc = -1.0
  records: list[dict] = []
  if int(cfg.checkpoint_every) > 0:
    from jax_unlearn.train.checkpoint import Checkpointer  # noqa: PLC0415
    ckptr = Checkpointer(os.path.join(ctx.workdir, "distill_ckpt"))
    if ckptr.latest_step() is not None:
      # The config stays the source of truth for strategy and hyper-parameters.
      state = ckptr.restore(state).replace(knobs=knobs)
      ctx.log(f"[{strategy.name}] resumed at epoch {int(state.epoch)}")
  start = int(state.epoch)
  if os.path.exists(diag_path) and start > 0:
    with open(diag_path) as fh:
      records = [r for r in map(json.loads, fh) if r["epoch"] <= start]
  if cfg.selection == "best_retain_test" and start > 0:
    ctx.log(f"[{strategy.name}] note: best_retain_test selection restarts from the resumed epoch")

  with open(diag_path, "w") as fh:
    fh.writelines(json.dumps(r) + "\n" for r in records)
  t_run = time.time()
  for epoch in range(start, total_epochs):
    t0 = time.time()
    state = run_epoch(engine, teacher, state)
    rec = epoch_diagnostics(engine, state)
    rec["time_s"] = time.time() - t0
    if not (math.isfinite(rec["gen_loss"] or 0.0) and math.isfinite(rec["student_loss"] or 0.0)
            and _finite(state.s_params) and _finite(state.g_params)):
      saved = (ckptr.latest_step() if ckptr is not None else None) or 0
      kept = (f"the last good checkpoint (epoch {saved}) is kept in {ckptr.directory}" if saved
              else "no checkpoint was written yet")
      raise NumericalError(f"[{strategy.name}] a loss or parameter became NaN/inf in epoch {epoch + 1} "
                           f"of {total_epochs} (distillation loop); {kept}: lower --config.ispf.lr or "
                           "--config.ispf.lr_g and run the same command again")
    distilled = epoch >= int(cfg.warmup) and not bool(state.last_skipped)
    evaluate = (int(cfg.eval_every) > 0 and distilled and (epoch + 1) % int(cfg.eval_every) == 0)
    if cfg.selection == "best_retain_test" and distilled:
      evaluate = True
    if evaluate:
      rec.update(_evaluate(ctx, student_model, jax.device_get(student_variables(state))))
      # The reference selects on retain accuracy, and on overall accuracy for its 'None' strategy.
      sel = rec["test_acc"] if strategy.clear_forget_in_generator else rec["retain_test_acc"]
      if cfg.selection == "best_retain_test" and sel > best_acc:
        best_acc, best = sel, jax.device_get(student_variables(state))
    records.append(rec)
    with open(diag_path, "a") as fh:
      fh.write(json.dumps(rec) + "\n")
    ctx.log(_progress(strategy.name, rec, total_epochs))
    if ckptr is not None and ((epoch + 1) % int(cfg.checkpoint_every) == 0 or epoch + 1 == total_epochs):
      ckptr.save(epoch + 1, state)
  if ckptr is not None:
    ckptr.close()

  variables = jax.device_get(student_variables(state))
  if cfg.selection == "best_retain_test" and best is not None:
    variables = best
  if cfg.plots and records:
    from jax_unlearn.report import distill_plots  # noqa: PLC0415 (matplotlib only when plotting)
    distill_plots.plot_diagnostics({strategy.name: records}, os.path.join(ctx.workdir, "distill_curves.png"),
                                   forget_classes=forget)
    distill_plots.save_sample_grid(np.asarray(sample_images(engine, state, key_vis, 64)),
                                   os.path.join(ctx.workdir, "synthetic_samples.png"))
  return base.UnlearnResult(variables=variables,
                            info=_summary(strategy, records, time.time() - t_run, cfg, best_acc))


def _progress(name, rec, total):
  parts = [f"[{name}] epoch {rec['epoch']}/{total} ({rec['phase']})",
           f"gen {rec['gen_loss']:.3f}" if rec["gen_loss"] is not None else "",
           f"forget-synth {100 * rec['forget_synthesis_rate']:.1f}%"]
  if rec["student_loss"] is not None:
    parts += [f"student {rec['student_loss']:.4f}", f"kept {rec['kept_mean']:.1f}",
              f"H_R {rec['retain_entropy']:.1f}"]
  if "retain_test_acc" in rec:
    parts += [f"retain {rec['retain_test_acc']:.1f}%", f"forget {rec['forget_test_acc']:.1f}%"]
  parts.append(f"({rec['time_s']:.1f}s)")
  return " ".join(p for p in parts if p)


def _summary(strategy, records, elapsed, cfg, best_acc) -> dict:
  dist = [r for r in records if r["phase"] == "distill" and r["student_steps"] > 0]
  mean = lambda rs, k: float(np.mean([r[k] for r in rs])) if rs else None  # noqa: E731
  out = {
      "strategy": dataclasses.asdict(strategy),
      "epochs_run": len(records),
      # over the distillation epochs, as the reference logs generated labels only after warm-up
      "mean_forget_synthesis_rate": mean(dist, "forget_synthesis_rate"),
      "final_forget_synthesis_rate": records[-1]["forget_synthesis_rate"] if records else None,
      "mean_kept": mean(dist, "kept_mean"),
      "mean_kept_fraction": mean(dist, "kept_fraction"),
      "mean_retain_entropy": mean(dist, "retain_entropy"),
      "mean_teacher_forget_prob": mean(dist, "teacher_forget_prob"),
      "mean_student_forget_prob": mean(dist, "student_forget_prob"),
      "student_steps": int(sum(r["student_steps"] for r in records)),
      "skipped_loops": int(sum(r["skipped_loops"] for r in records)),
      "selection": cfg.selection,
      "elapsed_s": elapsed,
  }
  if cfg.selection == "best_retain_test":
    out["best_retain_test_acc"] = best_acc  # of `selection_metric`
    out["selection_metric"] = "test_acc" if strategy.clear_forget_in_generator else "retain_test_acc"
  return out
