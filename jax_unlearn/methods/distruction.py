"""DiStruction: repair-free unlearning with a KL penalty between parameter posteriors (DiStruction paper §3).

Dugue, "Machine Unlearning Without Repair using DiStruction" (September 2024). No code is public;
this is our reconstruction of the paper's §3.1–3.2, with two errors of the paper's text corrected:
(a) ∂KL/∂μ_q = (μ_q − μ_p)/σ_p² (§3.2 prints the opposite sign), (b) the BGD σ rule of the reference
code `igolan/bgd optimizers_lib/bgd_optimizer.py` (the paper's Eq. 1 puts
the −½σ²E[gε] term inside the square root).

**Preparation** (§3.1; before the data is discarded, forget set unknown). p = N(μ_p, σ_p²) per parameter,
μ_p := θ_o (the trained weights). σ_p is learned by BGD (`jax_unlearn.optim.bgd`) on the pretraining loss
(cross-entropy) over the training data, with μ frozen (`prep_mean_eta = 0`: "our preparation step should
have no effect on model performance at inference time"), K Monte-Carlo samples per minibatch,
`prep_epochs` epochs. `ensure_prepared` (`methods._posterior`) stores the posterior with orbax,
fingerprinted, and reuses it.

**Forgetting** (§3.2). Starting from q = p, minimise (1 − λ) E_{θ∼q} E_{D_f}[U] + λ KL(q‖p) touching only
the forget set. BGD supplies the data term's E[g] = ∂E_q[U_sum]/∂μ and E[gε] = ∂E_q[U_sum]/∂σ; the KL
term's gradients are analytic (`kl_grads`), and they are combined before the BGD step:

    E[g]_tot  = (1−λ) E[∂U/∂θ]     + λ (μ_q − μ_p)/σ_p²
    E[gε]_tot = (1−λ) E[(∂U/∂θ) ε] + λ (σ_q/σ_p² − 1/σ_q)
    μ_q ← μ_q − η σ_q² E[g]_tot,   σ_q ← σ_q sqrt(1 + (σ_q E[gε]_tot/2)²) − σ_q² E[gε]_tot/2.

Scale convention: as in BGD, U's gradient is that of the **summed** minibatch objective (batch mean ×
batch size), while KL is summed over parameters; λ trades these two sums.

U (pluggable, `objective`): 'entropy' (default; U = −H(softmax f(x)), maximising the predictive entropy
on D_f, the paper's "entropy-based loss function"), 'entropy_other' (U = KL(u_{≠y} ‖ softmax f(x)),
maximum entropy over the classes other than the label, whose minimiser has p_y = 0), 'neggrad'
(U = −CE(f(x), y)), 'bad_teacher' (U = KL(softmax t(x) ‖ softmax f(x)) to a randomly initialised network
t, Chundawat et al.), 'random_label' (U = CE(f(x), y') with y' a random *other* class, redrawn every
step, Graves et al.; 'entropy_other' is its expectation over y').

Number of iterations (measured on digits, BUILD_NOTES "DiStruction"): −H is maximised by the uniform
output over all K classes, where the argmax is a near-tie. On the way there the first few iterations
overshoot: the label's logit falls below the others and forget accuracy drops to 0 %; later it drifts
back to a coin toss (30-60 %), so a fixed, long run does not forget. The paper forgets "in a handful of
iterations" (§4) and does not give their number, so the default chooses it on validation data
together with λ (`select_every`, `lambda_sweep`): early stopping, measured every 2 iterations.

Stability (our defaults, not in the paper): `max_std_ratio = 1` caps σ_q at σ_p. The mean step is
η σ_q² E[g]; without the cap σ_q grew to 1.5–2.2 σ_p on digits (E[gε] < 0 where U is concave), the
step grew 2–5x and the forget/retain accuracies oscillated between iterations. `forget_batch_size`
128 covers the whole forget set of one digits class (~110 samples), so E[g] is the gradient of U summed
over D_f, exactly the (1 − λ) Σ_{D_f} U + λ KL trade-off of the objective.

Inference uses the mean μ_q (the paper recovers models "by taking the mean"). BatchNorm running
statistics are not parameters of q; by default (`bn_mode='eval'`) forgetting and preparation use and keep
the original running statistics, because train-mode BN on forget-only batches would move the running
statistics toward the forget classes and break the retain set (the paper's ViT has no BN).

Data: `run` reads `ctx.data.forget_train` (plus `ctx.data.train` once, for the preparation, only when no
stored posterior exists). The forgetting loop draws its batches from a `ForgetBatches` source, which
refuses any sample outside the forget set. `lambda_sweep` selects λ and the iteration on *validation*
data (`ctx.data.forget_val`, `ctx.data.retain_val`); no retain *training* sample is read.

What the paper does not give, and our choices (BUILD_NOTES.md "DiStruction"): U ('entropy'), λ and the
number of iterations (chosen on validation data among `lam_sweep` × every `select_every` iterations
up to `forget_steps`; `lam` is used when `lam_sweep` is empty), η, K, std_init, batch size
(digits-sized defaults in `default_config`), MAP inference.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jax_unlearn.errors import ConfigError, DataError, NumericalError
from jax_unlearn.methods import base
from jax_unlearn.methods._distruction_ops import (
  UNLEARNING_OBJECTIVES,
  ForgetBatches,
  forget_chunk,
  forget_step,
  kl_diag_gaussians,
  kl_grads,
  make_teacher,
)
from jax_unlearn.methods._posterior import (
  PREP_FIELDS,
  ensure_prepared,
  load_posterior,
  posterior_description,
  posterior_dir,
  prepare,
  save_posterior,
)
from jax_unlearn.methods._selection import selection_key as _selection_key
from jax_unlearn.optim.bgd import BGDState
from jax_unlearn.train import fingerprint
from jax_unlearn.train.evaluate import accuracy
from jax_unlearn.train.loop import run_chunks

__all__ = ["OBJECTIVES", "default_config", "validate_config", "lam_values", "kl_diag_gaussians",
           "kl_grads", "UNLEARNING_OBJECTIVES", "ForgetBatches", "forget_step", "forget", "chunk_ends",
           "selection_key", "finite_mask", "take", "unlearned_variables", "Validator", "lambda_sweep",
           "run", "retain_subset", "prepare", "ensure_prepared", "save_posterior", "load_posterior",
           "posterior_dir", "posterior_description", "PREP_FIELDS"]

OBJECTIVES = ("entropy", "entropy_other", "neggrad", "bad_teacher", "random_label")
BN_MODES = ("eval", "train")


def default_config() -> ml_collections.ConfigDict:
  """`config.distruction` defaults, sized for digits/AllCNN(width 0.25) on CPU.

  Fields (the paper gives none of these values; our choices):
    std_init: σ of p before preparation (`igolan/bgd` library default 0.02). On digits 0.05 made
      the frozen-mean preparation diverge (σ of some weights grew without bound, E_q[CE] to 1e12).
    prep_mean_eta: η during preparation; 0 freezes μ_p = θ_o exactly (our reading of §3.1: "no effect on
      model performance at inference time"); > 0 is an option.
    mc_iters: K Monte-Carlo samples per minibatch, preparation and forgetting (BGD default 10; 4 here
      for the CPU budget: XLA:CPU runs the K vmapped convolutions as a slow grouped conv).
    prep_epochs, prep_batch_size: BGD preparation budget over the training data.
    prep_bn_mode: 'eval' (BN uses the original running statistics) or 'train' (batch statistics in the
      forward; the running statistics of the original are still kept unchanged).
    mean_eta: η of the forgetting step μ_q ← μ_q − η σ_q² E[g]_tot (digits: η = 1 blew retain
      accuracy down to ~11 % in the first step and needed > 40 steps to recover; 0.5 does not).
    forget_steps, forget_batch_size: forgetting iterations and forget-set minibatch size (batches of
      min(forget_batch_size, |D_f|) forget samples, reshuffled every pass).
    lam: λ in (1−λ) E_q[U] + λ KL(q‖p), in [0, 1).
    objective: U, one of 'entropy' | 'entropy_other' | 'neggrad' | 'bad_teacher' | 'random_label'.
    bn_mode: 'eval' (default, running statistics frozen) or 'train' (batch statistics; running
      statistics advanced once per minibatch from the first MC sample, as in BGD's reference).
    vectorize: 'vmap' or 'scan' over the K samples (scan saves memory for large models).
    max_std_ratio: > 0 caps σ_q <= max_std_ratio * σ_p after every forgetting step (our stability
      guard for concave U such as 'neggrad'; 0 = off, the paper's unguarded update).
    posterior_path: where the prepared posterior is stored; '' = beside the original checkpoint
      (W/original/) when run through `jax_unlearn.api`, else in the method's workdir.
    lam_sweep: λ values; non-empty makes `run` choose λ on validation data (forget-val and retain-val
      accuracy; never test), which reads `ctx.data.forget_val` and `ctx.data.retain_val`.
    select_every: > 0 also chooses the number of forgetting iterations on validation data: every
      `select_every` iterations (and after the last) each λ's μ_q is measured on forget-val and
      retain-val, and the run returns the best (λ, iteration) pair by the sweep's rule (early
      stopping; the paper does not give the iteration count, it forgets "in a handful of
      iterations", §4). 0: the iterate after `forget_steps` iterations.
    select_retain_samples: > 0 measures the selection's retain-val accuracy on this many retain-val
      images (a fixed random subset, seeded like the forgetting shuffle) instead of all of them; the
      forget-val split is always used whole. 0 (default): the whole retain-val split.
    sweep_max_forget_acc: the sweep keeps (λ, iteration) pairs whose forget-val accuracy is <= this
      (percent) and picks the best retain-val accuracy among them (else the lowest forget-val accuracy).
    prep_seed_offset, forget_seed_offset: numpy shuffling seeds are config.seed + offset.
    checkpoint_every: forgetting steps per `lax.scan`ned chunk; after each chunk a progress line and
      (through `run`) an orbax checkpoint of the forgetting state. 0: one scan, no checkpoint.
    prep_checkpoint_every: preparation epochs between orbax checkpoints (0: none).
    matmul_convs: run convs as im2col GEMMs in the preparation and the forgetting scan (fast under
      the λ/MC vmaps on XLA:CPU; the same convolution up to float rounding). False: XLA's convolution.
  """
  return ml_collections.ConfigDict(dict(
      std_init=0.02, prep_mean_eta=0.0, mc_iters=4, prep_epochs=5, prep_batch_size=64,
      prep_bn_mode="eval", mean_eta=0.5, forget_steps=40, forget_batch_size=128, lam=0.1,
      objective="entropy", bn_mode="eval", vectorize="vmap", max_std_ratio=1.0,
      posterior_path="",
      lam_sweep=(0.02, 0.05, 0.1, 0.2), select_every=2, select_retain_samples=0,
      sweep_max_forget_acc=10.0, prep_seed_offset=1, forget_seed_offset=2, checkpoint_every=10,
      prep_checkpoint_every=1, matmul_convs=True))


def lam_values(x: Any) -> list[float]:
  """λ list from a tuple/list of numbers or strings, or a comma-separated string
  (`--config.distruction.lam_sweep=0.1,0.3` may arrive as either)."""
  if isinstance(x, str):
    x = x.split(",")
  out = []
  for v in x:
    out.extend(float(t) for t in str(v).replace("(", "").replace(")", "").split(",") if t.strip())
  return out


def validate_config(cfg: Any, problem: base.Problem | None = None) -> None:
  """Raises ConfigError naming the field and the fix."""
  def check(cond, msg):
    if not cond:
      raise ConfigError(msg)
  check(cfg.objective in OBJECTIVES, f"unknown --config.distruction.objective={cfg.objective!r}; use "
        f"one of: {', '.join(OBJECTIVES)}")
  check(0.0 <= float(cfg.lam) < 1.0, f"--config.distruction.lam must be in [0, 1), got {cfg.lam}")
  for lam in lam_values(cfg.lam_sweep):
    check(0.0 <= float(lam) < 1.0, f"--config.distruction.lam_sweep values must be in [0, 1), got {lam}")
  check(cfg.std_init > 0, f"--config.distruction.std_init must be > 0, got {cfg.std_init}")
  check(cfg.mean_eta >= 0 and cfg.prep_mean_eta >= 0,
        "--config.distruction.mean_eta and prep_mean_eta must be >= 0")
  for f in ("mc_iters", "prep_batch_size", "forget_batch_size"):
    check(int(cfg[f]) >= 1, f"--config.distruction.{f} must be >= 1, got {cfg[f]}")
  for f in ("prep_epochs", "forget_steps", "checkpoint_every", "prep_checkpoint_every", "select_every",
            "select_retain_samples"):
    check(int(cfg[f]) >= 0, f"--config.distruction.{f} must be >= 0, got {cfg[f]}")
  check(float(cfg.max_std_ratio) >= 0, f"--config.distruction.max_std_ratio must be >= 0 (0 = off), got "
        f"{cfg.max_std_ratio}")
  ratio = float(cfg.max_std_ratio)
  lam_max = max([float(cfg.lam)] + lam_values(cfg.lam_sweep))
  # With q = p the KL term moves μ_q by η λ (σ_q/σ_p)² (μ_p − μ_q) per step: that overshoots and
  # diverges once the factor reaches 2 (seen on digits with η = 3, λ = 0.7).
  check(not ratio or float(cfg.mean_eta) * lam_max * ratio ** 2 < 2.0,
        f"--config.distruction.mean_eta * lam * max_std_ratio^2 = "
        f"{float(cfg.mean_eta) * lam_max * ratio ** 2:g} >= 2 makes the KL pull on the mean diverge; "
        f"lower mean_eta or lam")
  check(cfg.bn_mode in BN_MODES and cfg.prep_bn_mode in BN_MODES,
        f"--config.distruction.bn_mode/prep_bn_mode must be one of {BN_MODES}")
  check(cfg.vectorize in ("vmap", "scan"), "--config.distruction.vectorize must be 'vmap' or 'scan'")


def _variables(params, batch_stats):
  return {"params": params} if batch_stats is None else {"params": params, "batch_stats": batch_stats}


# ---------------------------------------------------------------------------------------------------
# Forgetting (DiStruction paper §3.2)

_HIST_KEYS = ("objective", "batch_acc", "std_ratio_mean", "std_ratio_max")
# Forgetting fields that change the result: part of the checkpoint's fingerprint.
_FORGET_FIELDS = ("mean_eta", "std_init", "objective", "mc_iters", "bn_mode", "vectorize",
                  "max_std_ratio", "forget_steps", "forget_batch_size", "forget_seed_offset",
                  "checkpoint_every", "matmul_convs", "select_every", "sweep_max_forget_acc")
# Version of the forgetting checkpoint's state layout (part of its fingerprint).
_FORGET_CKPT_LAYOUT = 3


def _forget_description(cfg, lams, key, posterior: BGDState, source, evaluate=None) -> dict:
  """What a forgetting run depends on: settings, λs, key, posterior, forget set, and the validation
  data of an iteration selection; a changed input never resumes another run's state."""
  return fingerprint.describe(
      kind="distruction_forget", version=_FORGET_CKPT_LAYOUT, cfg={f: cfg[f] for f in _FORGET_FIELDS},
      lams=[float(x) for x in np.asarray(lams)], key=fingerprint.array_digest(key),
      posterior=fingerprint.tree_digest({"mean": posterior.mean, "std": posterior.std}),
      forget=hashlib.sha1(b"".join(sorted(source._fingerprints))).hexdigest(),  # noqa: SLF001
      select=None if evaluate is None else getattr(evaluate, "fingerprint", b"select").hex())


def chunk_ends(steps: int, every: int, select_every: int = 0) -> list[int]:
  """Where the scanned chunks of a `steps`-iteration run end: every multiple of `every` (checkpoints)
  and of `select_every` (validation), and `steps`."""
  ends = set(range(every, steps, every)) | {steps}
  if select_every:
    ends |= set(range(select_every, steps, select_every))
  return sorted(e for e in ends if e > 0)


def selection_key(acc_forget: float, acc_retain: float, lam: float, step: int,
                  max_forget_acc: float, closest: tuple[float, float] | None = None) -> tuple:
  """Sort key of one (λ, iteration) candidate measured on validation data; the smallest key wins
  (`methods._selection.selection_key`, the rule SSD's alpha selection uses too; ties: smaller λ,
  fewer iterations)."""
  return _selection_key(acc_forget, acc_retain, max_forget_acc, closest, tiebreak=(float(lam), int(step)))


def forget(apply_fn: Callable[..., Any], variables: Any, posterior: BGDState, source: ForgetBatches,
           info: Any, cfg: Any, key: jax.Array, lams: Sequence[float] | None = None, teacher: Any = None,
           num_classes: int | None = None, log: Callable[[str], None] = print,
           raise_on_nonfinite: bool = True, ckpt_dir: str | None = None,
           evaluate: Callable | None = None) -> tuple[BGDState, Any, dict]:
  """Runs `cfg.forget_steps` DiStruction iterations from q = p for every λ in `lams` at once (vmap).

  The iterations run as `lax.scan`ned chunks of `cfg.checkpoint_every` steps (0: one scan over all
  steps), split further at every validation step (`chunk_ends`), through the resumable loop
  (`train.loop.run_chunks`); the forget batches of a chunk are drawn from `source` (checked there) and
  stacked first. With `ckpt_dir`, the state every `checkpoint_every` steps and at the end (q, BN
  statistics, histories, the selection) is saved with orbax under `ckpt_dir/forget-<fingerprint>`, and
  a run started again with the same inputs resumes from it and ends with exactly the result of an
  uninterrupted run.

  `source` is the only data the iterations see: a `ForgetBatches` over the forget set (an explicit
  argument so that no retain data can reach this loop).

  Iteration selection (early stopping on validation data): with `evaluate` and `cfg.select_every`
  > 0, `evaluate(qs, batch_stats) -> (acc_forget_val [L], acc_retain_val [L])` (percent, NaN for a
  diverged λ) is called every `select_every` iterations and after the last, and each λ keeps the
  iterate with the smallest `selection_key` (with `evaluate.closest`, if it has one). The returned
  `qs`/`batch_stats` are then those kept iterates, and `history` also holds 'eval_steps' [E],
  'val_forget'/'val_retain' [E, L], 'best_step' [L] (0: no finite iterate),
  'best_forget_val'/'best_retain_val' [L].

  Returns (qs, batch_stats, history): `qs` is a BGDState whose leaves have a leading λ axis, `history`
  holds per-iteration arrays [steps+1, L] of 'kl' (0 at iteration 0), and [steps, L] of 'objective',
  'batch_acc', 'std_ratio_mean', 'std_ratio_max'. A run that produces NaN/inf parameters raises
  NumericalError (naming the steps; the last good checkpoint is kept), unless
  `raise_on_nonfinite=False` (then check `finite_mask(qs)`).
  """
  if not isinstance(source, ForgetBatches):
    raise DataError("DiStruction's forgetting loop takes its data from a ForgetBatches source built "
                    "on the forget set; wrap ctx.data.forget_train in distruction.ForgetBatches")
  lams = jnp.asarray([float(cfg.lam)] if lams is None else [float(x) for x in lams], jnp.float32)
  num_l = lams.shape[0]
  if num_classes is None:
    num_classes = int(info.num_classes)
  if cfg.objective == "bad_teacher" and teacher is None:
    raise ConfigError("objective 'bad_teacher' needs a randomly initialised teacher: pass teacher= "
                      "(distruction.run builds it from ctx.model)")
  chunk_fn = forget_chunk(apply_fn, float(cfg.mean_eta), float(cfg.std_init), cfg.objective,
                           int(cfg.mc_iters), cfg.bn_mode, cfg.vectorize, int(num_classes),
                           float(cfg.max_std_ratio), bool(cfg.matmul_convs))
  stack = lambda t: jax.tree.map(lambda a: jnp.broadcast_to(a, (num_l,) + jnp.shape(a)), t)  # noqa
  steps = int(cfg.forget_steps)
  every = int(cfg.checkpoint_every) or max(steps, 1)
  select_every = int(cfg.select_every) if evaluate is not None else 0
  eval_steps = sorted(set(range(select_every, steps + 1, select_every)) | {steps}) if (
      select_every and steps) else []
  lam_list = [float(x) for x in np.asarray(lams)]
  max_forget = float(cfg.sweep_max_forget_acc)
  batch_stats = variables.get("batch_stats")
  state = {"q": stack(posterior), "batch_stats": None if batch_stats is None else stack(batch_stats),
           "kl": jnp.zeros((steps + 1, num_l), jnp.float32),
           **{k: jnp.zeros((steps, num_l), jnp.float32) for k in _HIST_KEYS}}
  if eval_steps:
    state.update(best_q=state["q"], best_batch_stats=state["batch_stats"],
                 best_step=jnp.zeros((num_l,), jnp.int32),
                 val_forget=jnp.full((len(eval_steps), num_l), jnp.nan, jnp.float32),
                 val_retain=jnp.full((len(eval_steps), num_l), jnp.nan, jnp.float32))
  mean, std = jnp.asarray(info.mean, jnp.float32), jnp.asarray(info.std, jnp.float32)
  ends = chunk_ends(steps, every, select_every) if steps else []
  starts = [0] + ends[:-1]

  def chunk(state, i):
    c0, c1 = starts[i], ends[i]
    batches = [source.batch(t) for t in range(c0, c1)]  # each one checked: forget samples only
    images = np.stack([b[0] for b in batches])
    labels = np.stack([b[1] for b in batches])
    q, bs, m = chunk_fn(state["q"], state["batch_stats"], posterior, key, jnp.int32(c0), images,
                        labels, lams, teacher, mean, std)
    new = dict(state, q=q, batch_stats=bs, kl=state["kl"].at[c0 + 1:c1 + 1].set(m["kl"]),
               **{k: state[k].at[c0:c1].set(m[k]) for k in _HIST_KEYS})
    live = finite_mask(q)
    last = jax.device_get({k: v[-1] for k, v in m.items()})
    rec = {"steps": [c0, c1], "live": live.tolist(),
           "msg": (f"[distruction] forget step {c1}/{steps}: KL {_fmt(last['kl'], '.3f')} "
                   f"E_q[U] {_fmt(last['objective'], '.4f')} batch acc(mu) "
                   f"{_fmt(last['batch_acc'], '.1f')} sigma_q/sigma_p max "
                   f"{_fmt(last['std_ratio_max'], '.3f')}")}
    if c1 in eval_steps and not (raise_on_nonfinite and not live.all()):
      j = eval_steps.index(c1)
      new = _select(new, eval_steps, j, evaluate, live, lam_list, max_forget,
                    getattr(evaluate, "closest", None))
      rec["msg"] += (f" | val acc forget {_fmt(new['val_forget'][j], '.1f')} "
                     f"retain {_fmt(new['val_retain'][j], '.2f')}")
    return new, rec

  def guard(state, rec):
    if raise_on_nonfinite and not all(rec["live"]):
      c0, c1 = rec["steps"]
      return f"NaN/inf parameters between forgetting steps {c0 + 1} and {c1}"
    return None

  state, _ = run_chunks(
      chunk, state, len(ends), phase="distruction", ckpt_dir=(
          fingerprint.tagged(ckpt_dir, "forget", _forget_description(
              cfg, lams, key, posterior, source, evaluate if eval_steps else None))
          if ckpt_dir and steps and int(cfg.checkpoint_every) > 0 else None),
      save_when=lambda done: ends[done - 1] % every == 0,  # not at the extra validation ends
      guard=guard, unit="chunk", progress=lambda i, r: r["msg"], log=log,
      fix="raise --config.distruction.lam or lower mean_eta (keep max_std_ratio=1), and run again")
  history = {k: np.asarray(jax.device_get(state[k]), np.float32) for k in ("kl",) + _HIST_KEYS}
  if not eval_steps:
    return state["q"], state["batch_stats"], history
  best_step = np.asarray(state["best_step"], np.int32)
  val = {k: np.asarray(state[k], np.float32) for k in ("val_forget", "val_retain")}
  history.update(eval_steps=np.asarray(eval_steps, np.int32), best_step=best_step, **val,
                 best_forget_val=_at_steps(val["val_forget"], eval_steps, best_step),
                 best_retain_val=_at_steps(val["val_retain"], eval_steps, best_step))
  return state["best_q"], state["best_batch_stats"], history


def _fmt(values, spec: str) -> str:
  """'[a, b, ...]' of one value per λ, each formatted with `spec` (log lines)."""
  return "[" + ", ".join(format(float(v), spec) for v in np.asarray(values).ravel()) + "]"


def _at_steps(values, eval_steps: list[int], steps) -> np.ndarray:
  """values[j(t_i), i] per λ i, with j(t) the index of iteration t in `eval_steps` (NaN for t = 0)."""
  values = np.asarray(values, np.float32)
  return np.asarray([values[eval_steps.index(int(t)), i] if int(t) else np.nan
                     for i, t in enumerate(np.asarray(steps))], np.float32)


def _select(state: dict, eval_steps: list[int], j: int, evaluate: Callable, live: np.ndarray,
            lams: list[float], max_forget: float, closest: tuple[float, float] | None = None) -> dict:
  """Measures every λ's μ_q at iteration `eval_steps[j]` and keeps, per λ, the better of it and the
  kept iterate by `selection_key` (host-side; the kept iterates are one `jnp.where` per leaf)."""
  step = eval_steps[j]
  f, r = (np.asarray(a, np.float64) for a in evaluate(state["q"], state["batch_stats"]))
  f, r = np.where(live, f, np.nan), np.where(live, r, np.nan)
  best_t = np.asarray(state["best_step"])
  best_f = _at_steps(state["val_forget"], eval_steps, best_t)
  best_r = _at_steps(state["val_retain"], eval_steps, best_t)
  better = np.asarray([selection_key(f[i], r[i], lams[i], step, max_forget, closest) <
                       selection_key(best_f[i], best_r[i], lams[i], best_t[i], max_forget, closest)
                       for i in range(len(lams))])
  def keep(b, n):
    return jnp.where(jnp.asarray(better).reshape((-1,) + (1,) * (n.ndim - 1)), n, b)
  return dict(state,
              best_q=jax.tree.map(keep, state["best_q"], state["q"]),
              best_batch_stats=(None if state["batch_stats"] is None else
                                jax.tree.map(keep, state["best_batch_stats"], state["batch_stats"])),
              best_step=jnp.where(jnp.asarray(better), step, state["best_step"]).astype(jnp.int32),
              val_forget=state["val_forget"].at[j].set(jnp.asarray(f, jnp.float32)),
              val_retain=state["val_retain"].at[j].set(jnp.asarray(r, jnp.float32)))


def finite_mask(qs: BGDState) -> np.ndarray:
  """[L] bool: which λ's stacked posterior is entirely finite."""
  per_leaf = [np.asarray(jnp.isfinite(x).reshape(x.shape[0], -1).all(1)) for x in jax.tree.leaves(qs)]
  return np.logical_and.reduce(per_leaf)


def take(tree: Any, i: int) -> Any:
  """Leaf-wise `x[i]`: one λ's posterior (or batch statistics) out of `forget`'s stacked result."""
  return None if tree is None else jax.tree.map(lambda x: x[i], tree)


def unlearned_variables(q: BGDState, batch_stats: Any) -> dict:
  """Inference variables of q: its mean μ_q and the kept BN statistics.

  MAP inference: the paper recovers the original model "by taking the mean" (§3.1).
  """
  return _variables(q.mean, batch_stats)


def _accuracy(model, variables, split, info) -> float:
  return accuracy(model, variables, split, info)


class Validator:
  """`evaluate` for `forget`: each λ's μ_q accuracy (percent) on forget-val and retain-val.

  Called with the λ-stacked (q, batch_stats); a λ whose parameters are not finite gets NaN.
  `closest` = (target, retain_ref) selects with the sub-class/random rule of `selection_key` (None:
  the class-forgetting rule). Its `fingerprint` (both splits and the rule) goes into the forgetting
  checkpoint's name."""

  def __init__(self, model, val_forget, val_retain, info, closest: tuple[float, float] | None = None):
    if len(val_forget) == 0:
      raise DataError("DiStruction's validation needs forget samples: the forget-val split is empty; "
                      "pass the forget training split instead (distruction.run does so for random "
                      "forgetting, as the SSD repository does)")
    self.model, self.val_forget, self.val_retain, self.info = model, val_forget, val_retain, info
    self.closest = None if closest is None else tuple(float(x) for x in closest)
    h = hashlib.sha1()
    for split in (val_forget, val_retain):
      h.update(np.ascontiguousarray(split.images, np.float32).tobytes())
      h.update(np.ascontiguousarray(split.labels, np.int32).tobytes())
    if self.closest is not None:
      h.update(np.asarray(self.closest, np.float64).tobytes())
    self.fingerprint = h.digest()

  def __call__(self, qs: BGDState, batch_stats) -> tuple[np.ndarray, np.ndarray]:
    live = finite_mask(qs)
    f, r = np.full(live.shape, np.nan), np.full(live.shape, np.nan)
    for i in np.flatnonzero(live):
      v = unlearned_variables(take(qs, i), take(batch_stats, i))
      f[i] = _accuracy(self.model, v, self.val_forget, self.info)
      r[i] = _accuracy(self.model, v, self.val_retain, self.info)
    return f, r


def retain_subset(split: Any, n: int, seed: int) -> Any:
  """`split` itself if `n` is 0 or >= its size, else `n` of its samples drawn without replacement by
  `numpy.random.default_rng(seed)` (kept in their original order): the retain-val images a
  `select_retain_samples` > 0 selection measures."""
  if n <= 0 or n >= len(split):
    return split
  return split.subset(np.sort(np.random.default_rng(seed).choice(len(split), n, replace=False)))


def lambda_sweep(model: Any, variables: Any, posterior: BGDState, source: ForgetBatches, val_forget: Any,
                 val_retain: Any, info: Any, cfg: Any, key: jax.Array, lams: Sequence[float],
                 teacher: Any = None, log: Callable[[str], None] = print, ckpt_dir: str | None = None,
                 closest: tuple[float, float] | None = None) -> dict:
  """Chooses λ (and, with `cfg.select_every` > 0, the number of iterations) on validation data
  (the paper gives neither): runs `forget` for all `lams` at once and measures each μ_q on
  `val_forget` and `val_retain` (never test data), after the last iteration or, with selection,
  every `select_every` iterations. The smallest `selection_key` wins: among candidates with
  forget-val accuracy <= cfg.sweep_max_forget_acc the best retain-val accuracy (ties: lower forget-val
  accuracy, then smaller λ, then fewer iterations); if none qualifies, the lowest forget-val accuracy.
  With `closest` (sub-class/random forgetting) the candidate closest to (target, retain_ref) wins
  instead (`selection_key`). A diverged (NaN/inf) candidate is never chosen.

  Returns {'lams', 'acc_forget_val', 'acc_retain_val', 'steps' (each λ's chosen iteration), 'chosen',
  'chosen_lam', 'chosen_steps', 'q', 'batch_stats', 'history'} with `q`/`batch_stats` stacked over λ
  (use `take`)."""
  lams = [float(x) for x in lams]
  validator = Validator(model, val_forget, val_retain, info, closest)
  selecting = int(cfg.select_every) > 0 and int(cfg.forget_steps) > 0
  q, bs, hist = forget(model.apply, variables, posterior, source, info, cfg, key, lams, teacher, log=log,
                       raise_on_nonfinite=False, ckpt_dir=ckpt_dir,
                       evaluate=validator if selecting else None)
  if selecting:
    f_acc = hist["best_forget_val"].astype(float).tolist()
    r_acc = hist["best_retain_val"].astype(float).tolist()
    steps = hist["best_step"].astype(int).tolist()
  else:
    f_acc, r_acc = (a.tolist() for a in validator(q, bs))
    steps = [int(cfg.forget_steps)] * len(lams)
  max_f = float(cfg.sweep_max_forget_acc)
  keys = [selection_key(f_acc[i], r_acc[i], lams[i], steps[i], max_f, closest)
          for i in range(len(lams))]
  if all(k[0] == 2 for k in keys):
    raise NumericalError("every lambda of the DiStruction sweep diverged to NaN/inf; add larger "
                         "lambdas to --config.distruction.lam_sweep or lower mean_eta, and run again")
  chosen = min(range(len(lams)), key=keys.__getitem__)
  for i, lam in enumerate(lams):
    at = f" at iteration {steps[i]}" if selecting else ""
    log(f"[distruction] lambda {lam:g}{at}: acc forget-val {f_acc[i]:.2f}%  retain-val {r_acc[i]:.2f}%"
        f"{'  <- chosen' if i == chosen else ''}")
  return {"lams": lams, "acc_forget_val": f_acc, "acc_retain_val": r_acc, "steps": steps,
          "chosen": chosen, "chosen_lam": lams[chosen], "chosen_steps": steps[chosen], "q": q,
          "batch_stats": bs, "history": hist}


@base.register("distruction", default_config=default_config, validate_config=validate_config,
               order=160, data="D_f (+ D once for the preparation; validation split for lambda)")
def run(ctx: base.UnlearnContext) -> base.UnlearnResult:
  """DiStruction on `ctx.data.forget_train` only (see the module docstring for what else is read).
  `artifacts['kl_curve']` holds KL(q‖p) per iteration and λ (the paper's Figure 1, drawn by
  `report.method_plots`)."""
  cfg = ctx.cfg
  seed = int(ctx.seed)
  posterior = ensure_prepared(ctx)
  info = ctx.data.info
  source = ForgetBatches(ctx.data.forget_train, int(cfg.forget_batch_size),
                         seed + int(cfg.forget_seed_offset), ctx.forget_classes)
  k_forget, k_teacher = jax.random.split(ctx.key)
  teacher = (make_teacher(ctx.model, k_teacher, info.image_shape)
             if cfg.objective == "bad_teacher" else None)
  t0 = time.time()
  extra = {}
  steps = int(cfg.forget_steps)
  if lam_values(cfg.lam_sweep) or int(cfg.select_every) > 0:
    # Random forgetting leaves no forget sample in the validation split: the forget accuracy is then
    # measured on the forget training samples, as the SSD repository does
    # (`forget_valid_dl = forget_train_dl`) and as `ssd.select_alpha` does; sub-class and random
    # forgetting select by the 'closest' rule.
    val_forget = ctx.data.forget_val if len(ctx.data.forget_val) else ctx.data.forget_train
    closest = None
    if ctx.forget_mode != "class":
      r0 = _accuracy(ctx.model, ctx.original, ctx.data.retain_val, info)
      closest = (r0, r0)
    val_retain = retain_subset(ctx.data.retain_val, int(cfg.select_retain_samples),
                               seed + int(cfg.forget_seed_offset))
    sweep = lambda_sweep(ctx.model, ctx.original, posterior, source, val_forget,
                         val_retain, info, cfg, k_forget,
                         lam_values(cfg.lam_sweep) or [float(cfg.lam)], teacher, ctx.log,
                         ckpt_dir=ctx.workdir, closest=closest)
    lams, i, steps = sweep["lams"], sweep["chosen"], sweep["chosen_steps"]
    q, bs, hist = take(sweep["q"], i), take(sweep["batch_stats"], i), sweep["history"]
    extra = {"sweep": {**{k: sweep[k] for k in ("lams", "acc_forget_val", "acc_retain_val", "steps",
                                                "chosen_lam", "chosen_steps")},
                       "forget_split": "forget_val" if len(ctx.data.forget_val) else "forget_train",
                       "retain_val_samples": len(val_retain),
                       "criterion": "threshold" if closest is None else "closest",
                       "target": None if closest is None else closest[0]}}
    if "val_forget" in hist:
      extra["selection"] = {"eval_steps": hist["eval_steps"].tolist(),
                            "val_forget": hist["val_forget"].tolist(),
                            "val_retain": hist["val_retain"].tolist()}
  else:
    lams, i = [float(cfg.lam)], 0
    qs, bss, hist = forget(ctx.model.apply, ctx.original, posterior, source, info, cfg, k_forget,
                           teacher=teacher, num_classes=ctx.num_classes, log=ctx.log,
                           ckpt_dir=ctx.workdir)
    q, bs = take(qs, 0), take(bss, 0)
  variables = unlearned_variables(q, bs)
  info_out = {"lam": lams[i], "objective": cfg.objective, "forget_steps": steps,
              "forget_steps_run": int(cfg.forget_steps),
              "kl_final": float(hist["kl"][steps, i]),
              "forget_batch_acc_final": (float(hist["batch_acc"][steps - 1, i]) if steps > 0
                                         else None),
              "forget_s": time.time() - t0, **extra}
  return base.UnlearnResult(variables=variables, info=info_out, artifacts={
      "kl_curve": {"lams": list(lams), "kl": np.asarray(hist["kl"]), "chosen": (i, steps)}})
