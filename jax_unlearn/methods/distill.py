"""The data-free distillation engine: DFKD, BlockF, GKT, IS, PF, ISPF, PD as one program.

All seven methods of ISPF (Zhang et al., AAAI'25) are one loop that differs only in a `Strategy`:

* which synthetic samples the student may see (`prefilter`: none | blockf | gkt, GKT's PreFilter);
* the generator's adversarial term (`inhibited`: Eq. 7 of ISPF instead of −KL(T‖S), Eq. 2-5);
* the distillation target (`teacher_target`: kl | postfilter (Eq. 8–9) | pd (App. I)).

One *loop* is `g_steps` Adam steps of the generator (the DFQ loss) followed by `kd_steps` SGD steps of
a randomly initialised student, each on a fresh synthetic batch. A filtered batch keeps its fixed shape:
rejected rows are masked out of the student's BatchNorm statistics and out of the batchmean KL, and an
empty batch skips the rest of that loop's student steps, via a carry flag in the scanned inner loop. An
*epoch* is one jitted `lax.scan` over `loops_per_epoch` loops; the resumable loop
(`train.loop.run_chunks`, in `methods.data_free`) runs the epochs.

The static part of a run (networks, batch size, loop sizes) is an `Engine`, a value-hashed static jit
argument; the strategy, forget classes and hyper-parameters are traced `Knobs` carried in the state, so
all eight strategies, every forget class and every tau/lr share one compiled program.

Public API (pure functions over pytrees): `make_engine`, `make_knobs`, `init_state` (or
`data_free.build` for all three), then `run_epoch(engine, teacher_variables, state)` (jitted, the engine
static), `loop_step` (one loop), `epoch_diagnostics` (host-side dict) and `student_variables`.

The methods (dfkd, blockf, gkt, is, pf, ispf, pd, pd_is) are registered in `methods.data_free`. The
engine uses only the teacher and the data set's image shape and mean/std, never a real image.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax import lax

from jax_unlearn.data.normalize import normalize
from jax_unlearn.errors import ConfigError
from jax_unlearn.methods._distill_losses import (
  _generator_tx,
  _student_tx,
  activation_loss,
  adversarial_loss,
  balance_loss,
  blockf_mask,
  bn_statistics_loss,
  cosine_lr,
  inhibited_synthesis_loss,
  masked_kl,
  one_hot_loss,
  pd_teacher_probs,
  postfilter,
  postfilter_row,
  prefilter_mask,
  retain_entropy,
)
from jax_unlearn.models import bn_input_stats, init_variables, sample_z
from jax_unlearn.models.adapters import require, supports
from jax_unlearn.models.conv import _loop_safe_convs, loop_safe_conv, loop_safe_conv_general_dilated

__all__ = ["Strategy", "STRATEGIES", "Engine", "Knobs", "DistillState", "default_config", "make_engine",
           "make_knobs", "init_state", "loop_step", "epoch", "run_epoch", "begin_epoch", "end_epoch",
           "epoch_diagnostics", "generator_objective", "synthetic_batch", "keep_mask", "target_probs",
           "student_loss_and_grads", "student_variables", "sample_images", "bn_statistics_loss",
           "one_hot_loss", "balance_loss", "activation_loss", "adversarial_loss", "inhibited_synthesis_loss",
           "postfilter_row", "postfilter", "pd_teacher_probs", "prefilter_mask", "blockf_mask", "masked_kl",
           "retain_entropy", "cosine_lr", "loop_safe_conv", "loop_safe_conv_general_dilated"]

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
  """Which ISPF ablation to run (the `--strategy` substrings of `ChildEden/ISPF UN_datafree_kd.py`).

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


def default_config() -> ml_collections.ConfigDict:
  """`config.ispf`, shared by every data-free method (dfkd, blockf, gkt, is, pf, ispf, pd, pd_is).

  Defaults: the ISPF CIFAR-10 script (`scripts/un_dfq_cifar10_allcnn.sh`, ISPF paper App. C); configs
  for other settings override them.
  """
  c = ml_collections.ConfigDict()
  c.generator = "dfq"        # 'dfq' (ISPF's `datafree/models/generator.py`, sigmoid) | 'zskt' (GKT's)
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
  # ZSKT variant (ISPF paper App. H; CMI's `scripts/zskt/*.sh`): adv = 1, bn = oh = balance = act = 0
  # (and generator='zskt' for the GKT/ZSKT generator, or 'dfq' for ISPF's code: its LargeGenerator).
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
  c.checkpoint_every = 1     # save the resumable engine state every N epochs (0: never)
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
  teacher_features: bool = True     # call the teacher for penultimate features (the act term)
  teacher_bn_stats: bool = True     # ... and for BN input statistics (the bn term); `make_engine` sets both


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


def make_engine(teacher_model: Any, student_model: Any, generator: nn.Module, cfg: Any, *, num_classes: int,
                mean: tuple[float, ...], std: tuple[float, ...]) -> Engine:
  """The static `Engine` from flax modules (or a `models.as_model` teacher) and a `config.ispf` (its loop
  sizes; `bn` / `act` > 0 need a teacher with BN statistics / features: else a ConfigError naming the fix)."""
  caps = {w: supports(teacher_model, c) for w, c in (("bn", "bn_stats"), ("act", "features"))}
  for w, c in (("bn", "bn_stats"), ("act", "features")):
    if not caps[w] and float(cfg.get(w, 0.0)):
      require(teacher_model, c, f"the generator loss term config.ispf.{w}={cfg[w]}", f"set config.ispf.{w}=0")
  return Engine(
      teacher_features=caps["act"], teacher_bn_stats=caps["bn"],
      teacher=teacher_model, student=student_model, generator=generator, num_classes=int(num_classes),
      mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std),
      normalize_output=(cfg.get("generator", "dfq") == "dfq"), batch_size=int(cfg.batch_size),
      nz=int(getattr(generator, "nz", cfg.nz)), kd_steps=int(cfg.kd_steps), g_steps=int(cfg.g_steps),
      loops_per_epoch=int(cfg.loops_per_epoch))


def make_knobs(strategy: Strategy, cfg: Any, *, forget_classes: Sequence[int], num_classes: int) -> Knobs:
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


def init_state(engine: Engine, knobs: Knobs, key: jax.Array, *, lr_g: float = 1e-3, momentum: float = 0.9,
               weight_decay: float = 1e-4, student_variables: Any = None,
               generator_variables: Any = None) -> DistillState:
  """A fresh generator and a *randomly initialised* student (ISPF paper §2), and optimiser states.

  `key` is split into (generator init, student init, run key); every step's key is
  `fold_in(fold_in(run_key, loop), phase)`. Pass `student_variables` / `generator_variables` to start
  from given ones."""
  for i, w, has in ((0, "bn", engine.teacher_bn_stats), (4, "act", engine.teacher_features)):
    if not has and not isinstance(knobs.weights, jax.core.Tracer) and float(knobs.weights[i]):
      what = "BN statistics" if i == 0 else "features"
      raise ConfigError(f"the knobs weigh config.ispf.{w}={float(knobs.weights[i]):g} but the engine's "
                        f"teacher has no {what}; set config.ispf.{w}=0")
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
# Generator phase (ISPF paper Eq. 2 and 7; `ChildEden/ISPF datafree/synthesis/generative_unlearning.py`).

def generator_objective(engine: Engine, knobs: Knobs, g_params: Any, g_batch_stats: Any, s_vars: Any,
                        teacher: Any, z: jax.Array) -> tuple[jax.Array, tuple[dict, Any, jax.Array]]:
  """L_G = bn·L_BN + oh·L_oh + adv·L_adv(−KL or IS) + balance·L_bal + act·L_act (`generative_unlearning.py`).

  Generator BN in train mode (batch statistics, running averages updated); teacher and student in eval
  mode; gradients reach the generator through both networks. Returns (L_G, (parts, new generator
  batch_stats, teacher logits))."""
  x_raw, g_upd = _apply(engine, engine.generator, {"params": g_params, "batch_stats": g_batch_stats},
                              z, train=True, mutable=["batch_stats"])
  x = _to_input(engine, x_raw)
  # A teacher without features / BN statistics (`make_engine` checked that act / bn weigh 0) is not asked.
  kw = {"mutable": ["bn_stats"]} if engine.teacher_bn_stats else {}
  t_out = _apply(engine, engine.teacher, teacher, x, train=False, features=engine.teacher_features, **kw)
  t_out, t_upd = t_out if kw else (t_out, {})
  t_logits, t_feat = t_out if engine.teacher_features else (t_out, None)
  s_logits = _apply(engine, engine.student, s_vars, x, train=False)
  adv = jnp.where(knobs.inhibited, inhibited_synthesis_loss(t_logits, s_logits, knobs.gen_forget),
                  adversarial_loss(t_logits, s_logits))
  parts = {"bn": bn_statistics_loss(bn_input_stats(t_upd.get("bn_stats", {}))),
           "oh": one_hot_loss(t_logits), "adv": adv, "balance": balance_loss(t_logits),
           "act": jnp.zeros((), jnp.float32) if t_feat is None else activation_loss(t_feat)}
  total = jnp.dot(knobs.weights, jnp.stack([parts[k] for k in ("bn", "oh", "adv", "balance", "act")]))
  parts = {k: lax.stop_gradient(v) for k, v in parts.items()}
  return total, (parts, g_upd["batch_stats"], lax.stop_gradient(t_logits))


def _generator_phase(engine: Engine, teacher, state: DistillState) -> DistillState:
  """`g_steps` Adam steps of the generator (ISPF paper App. B, Algorithm 1)."""
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
# Student phase (ISPF paper Eq. 1 and 10; `ChildEden/ISPF UN_datafree_kd.py: train`).

def synthetic_batch(engine: Engine, teacher: Any, g_variables: Any, key: jax.Array) -> tuple:
  """A student batch: x = Norm(G_eval(z)) (no gradient) and the teacher's eval-mode logits on it."""
  z = sample_z(key, engine.batch_size, engine.nz)
  x = lax.stop_gradient(_to_input(engine, _apply(engine, engine.generator, g_variables, z, train=False)))
  return x, _apply(engine, engine.teacher, teacher, x, train=False)


def keep_mask(engine: Engine, knobs: Knobs, t_logits: jax.Array) -> jax.Array:
  """Which rows the student may see: all, BlockF or GKT's PreFilter (ISPF paper Eq. 3)."""
  if engine.keep_fn is not None:
    return engine.keep_fn(t_logits)
  options = jnp.stack([jnp.ones(t_logits.shape[:1], bool), blockf_mask(t_logits, knobs.forget),
                       prefilter_mask(t_logits, knobs.forget, knobs.tau)])
  return options[knobs.prefilter]


def target_probs(knobs: Knobs, t_logits: jax.Array) -> jax.Array:
  """The distillation target as probabilities: softmax(z^T), softmax(PostFilter(z^T)) or PD."""
  return lax.switch(knobs.target, [
      lambda t: jax.nn.softmax(t, -1),
      lambda t: jax.nn.softmax(postfilter(t, knobs.forget, knobs.tau, knobs.gated), -1),
      lambda t: pd_teacher_probs(t, knobs.forget, knobs.tau, knobs.pd_gated),
  ], t_logits)


def student_loss_and_grads(engine: Engine, knobs: Knobs, s_params: Any, s_batch_stats: Any, x: jax.Array,
                           t_logits: jax.Array, mask: jax.Array | None = None) -> tuple[tuple, Any]:
  """Student forward in train mode and the masked batchmean KL to the teacher target (ISPF paper Eq. 1, 10).

  With `mask`, every student BN uses kept rows only (batch statistics and running averages) and the KL
  divides by N_kept: identical to the reference's physically shrunk batch (a jitted step keeps a fixed shape).
  Returns (loss, (student logits, new batch_stats)), grads."""
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
  # Warm-up epochs train the generator only (the reference's `--warmup 2`).
  state = lax.cond(state.epoch >= state.knobs.warmup, lambda s: _student_phase(engine, teacher, s),
                   lambda s: s, state)
  return state.replace(loop=state.loop + 1)


@functools.partial(jax.jit, static_argnums=0)
def loop_step(engine: Engine, teacher: Any, state: DistillState) -> DistillState:
  """One loop (jitted, `engine` static): `g_steps` generator steps, then `kd_steps` student steps unless
  the epoch is a warm-up epoch. The body of `run_epoch`'s scan."""
  return _loop_step(engine, teacher, state)


def begin_epoch(engine: Engine, state: DistillState) -> DistillState:
  """Resets the per-epoch diagnostic sums."""
  return state.replace(diag=_empty_diag(engine.num_classes))


def end_epoch(engine: Engine, state: DistillState) -> DistillState:
  """Epoch counter and the once-per-epoch cosine step, taken only after warm-up and only if the last
  loop's student phase was not cut short by an empty batch (the reference's `continue`)."""
  del engine
  take = (state.epoch >= state.knobs.warmup) & ~state.last_skipped
  return state.replace(epoch=state.epoch + 1, sched_step=state.sched_step + take.astype(jnp.int32))


def epoch(engine: Engine, teacher: Any, state: DistillState) -> DistillState:
  """One epoch, un-jitted (`run_epoch` is its jit; `jax_unlearn.sweep` vmaps it over runs)."""
  state = begin_epoch(engine, state)
  state, _ = lax.scan(lambda s, _: (_loop_step(engine, teacher, s), None), state, None,
                      length=engine.loops_per_epoch)
  return end_epoch(engine, state)


@functools.partial(jax.jit, static_argnums=0)
def run_epoch(engine: Engine, teacher: Any, state: DistillState) -> DistillState:
  """One epoch as a single jitted `lax.scan` of `loop_step` over `loops_per_epoch` loops, between
  `begin_epoch` and `end_epoch`; read `epoch_diagnostics(engine, state)` afterwards."""
  return epoch(engine, teacher, state)


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
def sample_images(engine: Engine, state: DistillState, key: jax.Array, n: int) -> jax.Array:
  """`n` eval-mode generator samples as displayable [0,1] images (ZSKT outputs are de-normalised)."""
  x = engine.generator.apply({"params": state.g_params, "batch_stats": state.g_batch_stats},
                             sample_z(key, n, engine.nz), train=False)
  if not engine.normalize_output:
    x = x * jnp.asarray(engine.std) + jnp.asarray(engine.mean)
  return jnp.clip(x, 0.0, 1.0)
