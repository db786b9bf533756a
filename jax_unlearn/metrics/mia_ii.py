"""MIA-II: a Shokri-style shadow-model membership attack, reported as F1 (ISPF paper §4.1).

ISPF reports MIA-II as the F1 score of a shadow-model attack but ships no code for it (neither does the
Boundary-Unlearning repository it cites). Reconstruction, with every pool stated:

* **Evaluation pools** (`mia_ii_pools`): members = forget-class *training* images (members of the
  original model), non-members = forget-class *test* images (never trained on by any model). For
  random-sample forgetting (no forget test images) the non-members are a seeded random subset of the
  test split of size min(|forget_train|, |test| / 2). The two sides are balanced: the members are a
  seeded random subsample of size |non-members| (both capped at `max_eval`), so F1 is not dominated by
  the larger side and a blind attacker scores about 50-67.
* **Shadow pool**: every image the original model never trained on and that is not an evaluation
  non-member: the whole validation split (the 20 % held out for checkpoint selection) plus the test
  split minus the evaluation non-members. It is disjoint from the original's training data (Shokri's
  requirement for the shadows' "out" samples to be true non-members) and from the evaluation images,
  so the attack never saw any image it is scored on. It holds all K classes (forget class included
  through `forget_val`).
* **Shadows**: S models of the target's architecture (the same `model` module), each trained from its
  own initialisation on a random half ("in") of the pool; the other half is its "out" set. Every shadow
  has exactly floor(N/2) "in" images. Training: the target's recipe (`metrics.resolve_config` fills the
  shadow fields from `config.train` and `config.batch_size`): cross-entropy, SGD with momentum,
  PyTorch-style weight decay and the MultiStep schedule of `train.supervised.make_optimizer`, the same
  number of epochs, the dataset's augmentation if it has one; no validation selection (the validation
  split is part of the shadow pool). All S shadows train at once: one jitted `lax.scan` over steps of a
  `jax.vmap`-ed step over the stacked parameter pytrees.
* **Attack features**: each shadow's softmax vector on each pool image, sorted in descending order,
  first `topk` entries (ML-Leaks' single class-agnostic attack, Salem et al. 2019; Shokri's per-class
  attack models would have ~30 training rows per class on digits). Label 1 = the image was in that
  shadow's training half.
* **Attack classifier**: scikit-learn `HistGradientBoostingClassifier` by default: the membership signal
  lives in a non-linear region (top-1 probability within ~1e-3 of 1), which trees find without feature
  scaling; `'logreg'` and `'mlp'` (Shokri's choice) are available.
* **Score**: for each evaluated model, the attack labels the model's sorted softmax vectors on the
  evaluation members and non-members; MIA-II = F1 (percent) of the "member" class. The value to judge
  is the distance to Retrain's, not the lowest.
* **The attack's held-out accuracy** (`mia_ii_attack_acc`, `heldout_attack_accuracy`): the accuracy on
  its own training rows (`Attack.shadow_accuracy`) is optimistic. Leave-one-shadow-out: for each of the
  last min(S, 4) shadows s, the same attack kind is fitted on the other S-1 shadows' rows and scored on
  shadow s's in/out rows, balanced accuracy (TPR + TNR) / 2 in percent, averaged over those s (NaN with
  S = 1: no shadow to hold out). Fitted on S-1 of S shadows, it slightly understates the attack that
  scores the models, which stays fitted on all S. About 50 means the shadows' outputs carry no
  membership signal the attack can use, so a low MIA-II then says nothing about forgetting. One value
  per suite (a property of its attack): every row of a suite gets the same.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from numpy.typing import ArrayLike

from jax_unlearn.data import DataInfo, UnlearnData
from jax_unlearn.data.augment import augment as augment_images
from jax_unlearn.data.normalize import normalize
from jax_unlearn.errors import ConfigError, DataError
from jax_unlearn.metrics._callable import make_callable
from jax_unlearn.metrics.base import Evaluator, register
from jax_unlearn.models import init_variables
from jax_unlearn.models.conv import loop_safe_convs
from jax_unlearn.train.evaluate import padded_batches, predict_logits
from jax_unlearn.train.loop import run_chunks
from jax_unlearn.train.steps import loss_and_grads, scan_member_steps
from jax_unlearn.train.supervised import make_optimizer

STREAM_EVAL = 31
STREAM_IN_OUT = 32
STREAM_ORDER = 33
ATTACKS = ("hgb", "logreg", "mlp")
MAX_HELDOUT_SHADOWS = 4  # leave-one-shadow-out fits (digits, S=4, 2,692 rows: 2.1 s for all four)


@dataclasses.dataclass
class ShadowModels:
  """Trained shadows (cacheable: arrays only). `variables` is stacked, leading axis S."""
  variables: Any
  in_mask: np.ndarray        # [S, N] bool over the shadow pool: True = in that shadow's training half
  pool_val_idx: np.ndarray   # pool = data.val[pool_val_idx] ++ data.test[pool_test_idx]
  pool_test_idx: np.ndarray
  member_idx: np.ndarray     # evaluation members, indices into data.train
  nonmember_idx: np.ndarray  # evaluation non-members, indices into data.test
  final_loss: float = float("nan")  # mean training loss of the shadows' last epoch
  losses: np.ndarray | None = None  # [T, S] per-step training losses


@dataclasses.dataclass
class Attack:
  """A fitted attack plus the evaluation pools it is scored on."""
  classifier: Any
  topk: int
  member_idx: np.ndarray
  nonmember_idx: np.ndarray
  shadow_accuracy: float  # attack accuracy (percent) on its own shadow in/out training rows
  # Leave-one-shadow-out balanced accuracy (percent; `heldout_attack_accuracy`); NaN with one shadow.
  heldout_accuracy: float = float("nan")


# --------------------------------------------------------------------------------------- pools


def mia_ii_pools(data: UnlearnData, seed: int = 0, max_eval: int = 5000) -> dict[str, np.ndarray]:
  """Evaluation members/non-members and the shadow pool (module docstring), as index arrays."""
  ftrain = np.flatnonzero(np.asarray(data.forget_train_mask, bool))
  ftest = np.flatnonzero(np.asarray(data.forget_test_mask, bool))
  if len(ftrain) == 0:
    raise DataError("MIA-II needs forget training images (evaluation members); the forget set is "
                    "empty: check config.forget")
  rng = np.random.default_rng([seed, STREAM_EVAL])
  if len(ftest):
    nonmember = ftest[rng.permutation(len(ftest))[:max_eval]]
  else:  # random-sample forgetting: held-out test images stand in for non-members
    nonmember = rng.permutation(len(data.test))[:min(len(ftrain), len(data.test) // 2, max_eval)]
  member = ftrain[rng.permutation(len(ftrain))[:len(nonmember)]]
  if len(nonmember) == 0:
    raise DataError("MIA-II found no non-member evaluation images in the test split; check the data")
  pool_test = np.setdiff1d(np.arange(len(data.test)), nonmember)
  return {"member_idx": np.sort(member), "nonmember_idx": np.sort(nonmember),
          "pool_val_idx": np.arange(len(data.val)), "pool_test_idx": pool_test}


def shadow_pool(data: UnlearnData, shadow: ShadowModels) -> tuple[np.ndarray, np.ndarray]:
  """(images, labels) of the shadow pool."""
  x = np.concatenate([np.asarray(data.val.images)[shadow.pool_val_idx],
                      np.asarray(data.test.images)[shadow.pool_test_idx]]).astype(np.float32)
  y = np.concatenate([np.asarray(data.val.labels)[shadow.pool_val_idx],
                      np.asarray(data.test.labels)[shadow.pool_test_idx]]).astype(np.int32)
  return x, y


def shadow_in_masks(n: int, num_shadow: int, seed: int = 0) -> np.ndarray:
  """[S, n] bool; row s marks a seeded random half (floor(n/2) images) as shadow s's "in" set."""
  masks = np.zeros((num_shadow, n), bool)
  for s in range(num_shadow):
    masks[s, np.random.default_rng([seed, STREAM_IN_OUT, s]).permutation(n)[:n // 2]] = True
  return masks


def shadow_schedule(in_mask: np.ndarray, batch_size: int, epochs: int, seed: int = 0) -> np.ndarray:
  """Pool indices `[T, S, B]`: per shadow and epoch a seeded shuffle of its "in" set, cut into
  B = min(batch_size, n_in) batches, remainder dropped (fixed shapes; every shadow takes T steps)."""
  s_count, _ = in_mask.shape
  n_in = int(in_mask[0].sum())
  b = min(int(batch_size), n_in)
  spe = n_in // b
  idx = np.zeros((epochs * spe, s_count, b), np.int32)
  for s in range(s_count):
    members = np.flatnonzero(in_mask[s])
    for e in range(epochs):
      perm = members[np.random.default_rng([seed, STREAM_ORDER, s, e]).permutation(n_in)]
      idx[e * spe:(e + 1) * spe, s] = perm[:spe * b].reshape(spe, b)
  return idx


# ------------------------------------------------------------------------------------ training


def shadow_optimizer(lr: float, momentum: float, weight_decay: float, milestones: tuple = (),
                     gamma: float = 0.1, steps_per_epoch: int = 1) -> optax.GradientTransformation:
  """The original model's optimiser (`train.supervised.make_optimizer`): SGD with momentum, weight decay
  added to the gradient before momentum (PyTorch), lr x gamma at each milestone epoch."""
  recipe = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, milestones=tuple(milestones),
                gamma=gamma)
  return make_optimizer(ml_collections.ConfigDict(recipe), steps_per_epoch)


def shadow_train_step(apply_fn: Callable[..., Any], tx: optax.GradientTransformation, augment: bool,
                      state: tuple, idx: jax.Array, key: jax.Array, images: jax.Array, labels: jax.Array,
                      mean: jax.Array, std: jax.Array) -> tuple[tuple, jax.Array]:
  """One supervised CE + SGD step of ONE shadow. `state` = (params, batch_stats, opt_state); `idx`
  [B] indexes the device-resident pool `images`/`labels`. Returns (state, loss)."""
  params, bstats, opt_state = state
  x = images[idx]
  if augment:
    x = augment_images(key, x)
  # The library's one supervised step (`train.steps`), with the shadows' tuple state.
  (loss, (_, bstats)), grads = loss_and_grads(apply_fn, params, bstats, normalize(x, mean, std),
                                              labels[idx])
  updates, opt_state = tx.update(grads, opt_state, params)
  return (optax.apply_updates(params, updates), bstats, opt_state), loss


@functools.partial(jax.jit, static_argnames=("apply_fn", "lr", "momentum", "weight_decay", "milestones",
                                             "gamma", "steps_per_epoch", "augment", "vmapped"))
def train_shadows_scan(apply_fn: Callable[..., Any], state: tuple, idx: jax.Array, keys: jax.Array,
                       images: jax.Array, labels: jax.Array, mean: jax.Array, std: jax.Array, t0: int = 0,
                       *, lr: float, momentum: float, weight_decay: float, augment: bool,
                       milestones: tuple = (), gamma: float = 0.1, steps_per_epoch: int = 1,
                       vmapped: bool = True) -> tuple[tuple, jax.Array]:
  """Runs all steps of `idx` with `lax.scan`. vmapped=True: `state` is stacked over S shadows, `idx` is
  [T, S, B], `keys` [S]; the step is `jax.vmap(shadow_train_step)`. vmapped=False: one shadow, `idx`
  [T, B], `keys` a single key. Row t of `idx` is global step t0 + t and uses `fold_in(key, t0 + t)`,
  so a schedule run in pieces (one epoch at a time) equals one scan over it. Returns
  (state, losses [T, (S)]). The schedule follows the optimiser state's own step count."""
  tx = shadow_optimizer(lr, momentum, weight_decay, milestones, gamma, steps_per_epoch)
  step = functools.partial(shadow_train_step, apply_fn, tx, augment)

  def one(state, idx_t, key):
    return step(state, idx_t, key, images, labels, mean, std)

  return scan_member_steps(one, state, idx, keys, t0, vmapped)


def _init_state(model, key, image_shape, tx):
  v = init_variables(model, key, (1,) + tuple(image_shape))
  return (v["params"], v.get("batch_stats", {}), tx.init(v["params"]))


def _stack(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def train_shadow_models(model: Any, data: UnlearnData, key: jax.Array, *, num_shadow: int = 4,
                        epochs: int = 30, lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 1e-4,
                        batch_size: int = 64, milestones: tuple = (), gamma: float = 0.1,
                        augment: bool | None = None, seed: int = 0, max_eval: int = 5000,
                        vmapped: bool = True, ckpt_dir: str | None = None,
                        log: Callable[[str], None] | None = None) -> ShadowModels:
  """Trains S shadows of `model`'s architecture on random halves of the shadow pool (module docstring).

  The training arguments are the target's recipe (`metrics.resolve_config` takes them from
  `config.train` and `config.batch_size`); `milestones` are epochs at which lr is multiplied by `gamma`.
  `key` seeds the shadows' initialisations and augmentation; `seed` the pools, halves and shuffles.
  `augment=None` follows `data.info.augment`. `vmapped=False` trains the shadows one after another
  with the same per-shadow keys and batches (the reference the vmapped path is tested against).

  `ckpt_dir` (issue 8): the scan runs one epoch at a time and after each epoch the stacked state, the
  epoch, the losses so far and the step keys are saved with orbax; a run started again resumes from the
  latest epoch and ends with exactly the shadows of an uninterrupted run. A finished `ckpt_dir` is
  reused without training. A NaN/inf loss or parameter stops with NumericalError naming the epoch and
  the kept checkpoint (that epoch is not saved).
  """
  if num_shadow < 1:
    raise ConfigError(f"MIA-II needs at least one shadow model, got {num_shadow}; set "
                      "--config.metrics.num_shadow to e.g. 4")
  pools = mia_ii_pools(data, seed, max_eval)
  shadow = ShadowModels(variables=None, in_mask=np.zeros((0, 0), bool), **pools)
  images, labels = shadow_pool(data, shadow)
  if len(images) < 4:
    raise DataError(f"the MIA-II shadow pool has only {len(images)} images (validation + unused test "
                    "images); use a larger dataset or disable mia_ii in config.metrics.names")
  in_mask = shadow_in_masks(len(images), num_shadow, seed)
  idx = shadow_schedule(in_mask, batch_size, epochs, seed)
  augment = bool(data.info.augment) if augment is None else bool(augment)
  kw = dict(lr=float(lr), momentum=float(momentum), weight_decay=float(weight_decay),
            milestones=tuple(int(m) for m in milestones), gamma=float(gamma),
            steps_per_epoch=int(idx.shape[0] // max(epochs, 1)), augment=augment)
  tx = shadow_optimizer(kw["lr"], kw["momentum"], kw["weight_decay"], kw["milestones"], kw["gamma"],
                        kw["steps_per_epoch"])
  init_keys, step_keys = jax.random.split(key)
  init_keys = jax.random.split(init_keys, num_shadow)
  step_keys = jax.random.split(step_keys, num_shadow)
  states = [_init_state(model, init_keys[s], data.info.image_shape, tx) for s in range(num_shadow)]
  args = (jnp.asarray(images), jnp.asarray(labels), jnp.asarray(data.info.mean, jnp.float32),
          jnp.asarray(data.info.std, jnp.float32))
  state, losses = _train_shadows(model.apply, _stack(states), idx, step_keys, args, kw, vmapped, epochs,
                                 ckpt_dir, log or (lambda m: None))
  params, bstats, _ = state
  spe = max(1, idx.shape[0] // max(epochs, 1))
  final_loss = float(jnp.mean(losses[-spe:])) if losses.shape[0] else float("nan")
  variables = {"params": params, "batch_stats": bstats} if bstats else {"params": params}
  return dataclasses.replace(shadow, variables=jax.device_get(variables), in_mask=in_mask,
                             final_loss=final_loss, losses=np.asarray(losses))


def _scan_steps(apply_fn, state, idx, keys, args, kw, vmapped, t0):
  """Steps t0 .. t0 + len(idx) - 1 of the stacked shadows: one vmapped scan, or one scan per shadow
  (the same keys and batches). Call under `loop_safe_convs()`. Returns (state, losses [T, S])."""
  if vmapped:
    return train_shadows_scan(apply_fn, state, jnp.asarray(idx), keys, *args, jnp.int32(t0),
                              vmapped=True, **kw)
  outs = [train_shadows_scan(apply_fn, jax.tree.map(lambda a, s=s: a[s], state),
                             jnp.asarray(idx[:, s]), keys[s], *args, jnp.int32(t0), vmapped=False, **kw)
          for s in range(idx.shape[1])]
  return _stack([o[0] for o in outs]), jnp.stack([o[1] for o in outs], axis=1)


def _divergence(losses, state, lo: int) -> str | None:
  """None if this epoch's losses [spe, S] and the whole state (params, BN stats, momentum) are finite;
  else what went wrong, naming the first global step (1-based) whose loss is not finite."""
  losses = np.asarray(losses)
  bad = ~np.isfinite(losses).all(axis=1)
  if bad.any():
    t = int(np.argmax(bad))
    kind = "nan" if np.isnan(losses[t]).any() else "inf"
    return f"the training loss became {kind} at step {lo + t + 1}"
  if not all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state)):
    return f"a parameter became nan/inf after step {lo + len(losses)}"  # the epoch's last update
  return None


def _train_shadows(apply_fn, state, idx, step_keys, args, kw, vmapped, epochs, ckpt_dir, log):
  """`_scan_steps` one epoch at a time through the resumable loop (`train.loop.run_chunks`), with an
  orbax checkpoint after every epoch when `ckpt_dir` is given (a finished one is reused).

  Epoch e runs global steps e*spe .. (e+1)*spe - 1 with t0 = e*spe, so step t still uses
  fold_in(key, t) and the pieces equal one scan. A non-finite epoch is not saved."""
  t_total, s_count = idx.shape[0], idx.shape[1]
  spe = t_total // max(epochs, 1)

  def epoch_fn(state, epoch):
    lo, hi = epoch * spe, (epoch + 1) * spe
    with loop_safe_convs():  # conv gradients inside lax.scan: jax-ml/jax#12868
      state, losses = _scan_steps(apply_fn, state, idx[lo:hi], step_keys, args, kw, vmapped, lo)
    losses = np.asarray(losses, np.float32)
    return state, {"epoch": epoch + 1, "losses": losses.tolist(),
                   "problem": _divergence(losses, state, lo)}

  def guard(state, rec):
    return None if rec["problem"] is None else f"{rec['problem']} (of {t_total})"

  state, history = run_chunks(
      epoch_fn, state, epochs, phase="mia_ii shadows", ckpt_dir=ckpt_dir, guard=guard,
      fix="lower --config.metrics.shadow_lr and run the same command again",
      progress=lambda i, r: (f"[mia_ii shadows] epoch {i + 1}/{epochs}: mean loss "
                             f"{float(np.mean(r['losses'])):.4f}"), log=log)
  losses = (np.concatenate([np.asarray(r["losses"], np.float32).reshape(-1, s_count) for r in history])
            if history else np.zeros((0, s_count), np.float32))
  return state, jnp.asarray(losses)


# ------------------------------------------------------------------------------------- attack


@functools.partial(jax.jit, static_argnames=("apply_fn",))
def _stacked_probs(apply_fn, stacked_vars, x, mean, std):
  xn = normalize(x, mean, std)
  return jax.vmap(lambda v: jax.nn.softmax(apply_fn(v, xn, train=False), axis=-1))(stacked_vars)


def stacked_predict_probs(model: Any, stacked_vars: Any, images: ArrayLike, info: DataInfo,
                          batch_size: int = 512) -> np.ndarray:
  """Softmax outputs `[S, N, K]` of S stacked models on raw images (batched, padded, jitted)."""
  images = np.asarray(images, np.float32)
  mean, std = jnp.asarray(info.mean, jnp.float32), jnp.asarray(info.std, jnp.float32)
  outs = [np.asarray(_stacked_probs(model.apply, stacked_vars, chunk, mean, std))[:, :valid]
          for chunk, valid in padded_batches(images, batch_size)]
  return np.concatenate(outs, axis=1)


@functools.partial(jax.jit, static_argnames=("topk",))
def attack_features(probs: ArrayLike, topk: int) -> jax.Array:
  """Softmax vectors sorted in descending order, first `topk` entries (all when topk <= 0 or > K)."""
  k = probs.shape[-1] if topk <= 0 else min(topk, probs.shape[-1])
  return -jnp.sort(-jnp.asarray(probs, jnp.float32), axis=-1)[..., :k]


def _classifier(kind: str, seed: int):
  # scikit-learn only when an attack is fitted (import time of the metrics package).
  from sklearn.ensemble import HistGradientBoostingClassifier
  from sklearn.linear_model import LogisticRegression
  from sklearn.neural_network import MLPClassifier
  if kind == "hgb":
    return HistGradientBoostingClassifier(max_iter=200, learning_rate=0.1, max_leaf_nodes=15,
                                          early_stopping=False, random_state=seed)
  if kind == "logreg":
    return LogisticRegression(max_iter=1000)
  if kind == "mlp":
    return MLPClassifier(hidden_layer_sizes=(64,), max_iter=500, random_state=seed)
  raise ConfigError(f"unknown MIA-II attack classifier {kind!r}; set --config.metrics.mia_ii_attack "
                    f"to one of: {', '.join(ATTACKS)}")


def fit_attack_from_probs(in_probs: ArrayLike, out_probs: ArrayLike, *, topk: int = 10, kind: str = "hgb",
                          seed: int = 0) -> tuple[Any, float]:
  """Fits the binary attack on softmax vectors `[n, K]` of members (1) vs non-members (0).
  Returns (classifier, accuracy in percent on its own training rows)."""
  fi, fo = np.asarray(attack_features(in_probs, topk)), np.asarray(attack_features(out_probs, topk))
  x = np.concatenate([fi, fo]).astype(np.float64)
  y = np.concatenate([np.ones(len(fi), np.int32), np.zeros(len(fo), np.int32)])
  from threadpoolctl import threadpool_limits
  # One OpenMP thread: HistGradientBoosting's threads spin-wait, and on a shared 2-core machine that
  # made a 250-row fit take 14 s instead of 0.2 s (76k rows: 1.8 s single-threaded).
  with threadpool_limits(limits=1, user_api="openmp"):
    clf = _classifier(kind, seed).fit(x, y)
    acc = float(100.0 * np.mean(clf.predict(x) == y))
  return clf, acc


def heldout_attack_accuracy(probs: np.ndarray, in_mask: np.ndarray, *, topk: int = 10, kind: str = "hgb",
                            seed: int = 0, max_heldout: int = MAX_HELDOUT_SHADOWS) -> float:
  """Leave-one-shadow-out balanced accuracy (percent) of the attack (module docstring).

  `probs`: `[S, N, K]` softmax outputs of S shadows on the pool; `in_mask`: `[S, N]` bool, True =
  in that shadow's training half. For each of the last min(S, max_heldout) shadows s, the attack
  (`fit_attack_from_probs`, same kind/topk/seed) is fitted on the in/out rows of the other shadows and
  scored on shadow s's rows: (TPR + TNR) / 2. Returns the mean over those s; NaN when S < 2.
  """
  probs, m = np.asarray(probs), np.asarray(in_mask, bool)
  s_count = m.shape[0]
  if s_count < 2:
    return float("nan")
  from sklearn.metrics import balanced_accuracy_score
  from threadpoolctl import threadpool_limits
  accs = []
  for s in range(max(0, s_count - int(max_heldout)), s_count):
    rest = np.arange(s_count) != s
    p_rest, m_rest = probs[rest], m[rest]
    clf, _ = fit_attack_from_probs(p_rest[m_rest], p_rest[~m_rest], topk=topk, kind=kind, seed=seed)
    x = np.asarray(attack_features(probs[s], topk), np.float64)
    with threadpool_limits(limits=1, user_api="openmp"):  # see fit_attack_from_probs
      pred = clf.predict(x)
    accs.append(100.0 * balanced_accuracy_score(m[s].astype(np.int32), pred))
  return float(np.mean(accs))


def fit_attack(model: Any, shadow: ShadowModels, data: UnlearnData, *, topk: int = 10, kind: str = "hgb",
               seed: int = 0, batch_size: int = 512, heldout: bool = True) -> Attack:
  """Fits the attack on every shadow's outputs on the whole pool (its "in" half = 1, "out" half = 0).
  `heldout`: also estimate its leave-one-shadow-out accuracy (`heldout_attack_accuracy`; min(S, 4)
  more fits), which leaves the returned classifier unchanged."""
  images, _ = shadow_pool(data, shadow)
  probs = stacked_predict_probs(model, shadow.variables, images, data.info, batch_size)  # [S, N, K]
  m = np.asarray(shadow.in_mask, bool)
  clf, acc = fit_attack_from_probs(probs[m], probs[~m], topk=topk, kind=kind, seed=seed)
  held = (heldout_attack_accuracy(probs, m, topk=topk, kind=kind, seed=seed) if heldout
          else float("nan"))
  return Attack(classifier=clf, topk=topk, member_idx=shadow.member_idx,
                nonmember_idx=shadow.nonmember_idx, shadow_accuracy=acc, heldout_accuracy=held)


def member_f1_from_probs(classifier: Any, topk: int, member_probs: ArrayLike, nonmember_probs: ArrayLike
                         ) -> float:
  """F1 (percent) of the "member" class when `classifier` labels members (true 1) and non-members (0)."""
  fm = np.asarray(attack_features(member_probs, topk), np.float64)
  fn = np.asarray(attack_features(nonmember_probs, topk), np.float64)
  y = np.concatenate([np.ones(len(fm), np.int32), np.zeros(len(fn), np.int32)])
  from sklearn.metrics import f1_score
  from threadpoolctl import threadpool_limits
  with threadpool_limits(limits=1, user_api="openmp"):
    pred = classifier.predict(np.concatenate([fm, fn]))
  return float(100.0 * f1_score(y, pred, pos_label=1, zero_division=0.0))


def mia_ii_f1_from_logits(attack: Attack, member_logits: ArrayLike, nonmember_logits: ArrayLike) -> float:
  """MIA-II (F1 percent of "member") from the evaluated model's logits on the attack's two pools."""
  sm = lambda lg: np.asarray(jax.nn.softmax(jnp.asarray(lg, jnp.float32), axis=-1))  # noqa: E731
  return member_f1_from_probs(attack.classifier, attack.topk, sm(member_logits), sm(nonmember_logits))


def mia_ii_f1(attack: Attack, model: Any, variables: Any, data: UnlearnData, batch_size: int = 512) -> float:
  """MIA-II of one evaluated model: F1 (percent) of "member" on the attack's evaluation pools
  (forget-class training images vs forget-class test images of `data`)."""
  ml = predict_logits(model, variables, np.asarray(data.train.images)[attack.member_idx], data.info,
                      batch_size)
  nl = predict_logits(model, variables, np.asarray(data.test.images)[attack.nonmember_idx], data.info,
                      batch_size)
  return mia_ii_f1_from_logits(attack, ml, nl)


def mia_ii(model: Any, variables: Any, data: UnlearnData, *, attack: Attack, batch_size: int = 512) -> float:
  """The `mia_ii` metric of one model: F1 (percent) of "member" (module docstring); `mia_ii_f1`.

  `attack` is fitted once for all the models evaluated on `data`:
  `fit_attack(model, train_shadow_models(model, data, key, ...), data)` (the `MetricSuite` does this
  with the original model's training recipe). `metrics.mia_ii(...)` (the module) calls this function.
  """
  return mia_ii_f1(attack, model, variables, data, batch_size)


def num_steps(n_pool: int, batch_size: int, epochs: int) -> int:
  """Steps each shadow takes (for logs/budgets)."""
  n_in = n_pool // 2
  return epochs * (n_in // max(1, min(batch_size, n_in)))


# config.metrics shadow field -> the original's recipe field it defaults to (config.train.*, or the
# top-level supervised batch size).
SHADOW_RECIPE = {"shadow_epochs": "epochs", "shadow_lr": "lr", "shadow_momentum": "momentum",
                 "shadow_weight_decay": "weight_decay", "shadow_milestones": "milestones",
                 "shadow_gamma": "gamma", "shadow_batch_size": "batch_size"}
_SHADOW_TYPES = {"shadow_epochs": int, "shadow_lr": float, "shadow_momentum": float,
                 "shadow_weight_decay": float, "shadow_batch_size": int, "shadow_milestones": tuple,
                 "shadow_gamma": float}


def default_config() -> dict:
  """`config.metrics` fields of MIA-II. The shadows' training fields are None: `resolve` gives them
  the original model's recipe (`config.train`, `config.batch_size`): "the same architecture and
  recipe" as the target; set one to override."""
  return dict(
      num_shadow=4,
      **{k: ml_collections.config_dict.placeholder(t) for k, t in _SHADOW_TYPES.items()},
      shadow_augment=True,       # use the dataset's augmentation (DataInfo.augment) if it has one
      # Train the S shadows as one vmapped step (False: one after another; equal up to float
      # rounding). On XLA CPU the vmapped conv (a grouped conv) is slower: digits, AllCNN w=0.25, 4
      # shadows x 150 steps took 106 s vmapped vs 76 s looped on this 2-core machine.
      shadow_vmap=True,
      mia_ii_attack="hgb",       # 'hgb' (HistGradientBoosting) | 'logreg' | 'mlp'
      mia_ii_topk=10,            # sorted softmax entries fed to the attack; 0 = all K
      mia_ii_max_eval=5000)      # cap on evaluation members / non-members (each side)


def resolve(cfg: Any, recipe: Any) -> None:
  """Fills every shadow_* field left None with the original's recipe."""
  for field, key in SHADOW_RECIPE.items():
    if cfg[field] is None:
      cfg[field] = tuple(recipe[key]) if key == "milestones" else recipe[key]


def validate_config(cfg: Any, problem: Any = None) -> None:
  """Raises ConfigError for a MIA-II field of `config.metrics` out of range."""
  del problem
  if cfg.mia_ii_attack not in ATTACKS:
    raise ConfigError(f"unknown config.metrics.mia_ii_attack {cfg.mia_ii_attack!r}; use one of "
                      f"{ATTACKS}")
  for field in ("num_shadow", "shadow_epochs", "shadow_batch_size", "mia_ii_max_eval"):
    if cfg[field] is not None and int(cfg[field]) < 1:
      raise ConfigError(f"config.metrics.{field} must be >= 1, got {cfg[field]}; see "
                        "jax_unlearn.metrics.default_config() for defaults")


@register("mia_ii", columns=(("mia_ii", "MIA-II F1 (%)", "{:.2f}"),
                             ("mia_ii_attack_acc", "MIA-II attack acc (%)", "{:.1f}")), order=40,
          default_config=default_config, resolve=resolve, validate_config=validate_config)
class MiaII(Evaluator):
  """MIA-II: the shadow models and the attack are trained once per suite (lazily; checkpointed in
  `suite.cache_dir`), then every model's F1 comes from the shared forget-train and test logits.
  `shadow=` (trained `ShadowModels`) or `attack=` (a fitted `Attack`) given to the suite skip that
  work."""

  def __init__(self, suite):
    super().__init__(suite)
    self._shadow = suite.kwargs.get("shadow")
    self._attack = suite.kwargs.get("attack")

  @property
  def shadow(self) -> ShadowModels:
    if self._shadow is None:
      c, s, t0 = self.cfg, self.suite, time.time()
      self._shadow = train_shadow_models(
          s.model, s.data, s.key, num_shadow=c.num_shadow, epochs=c.shadow_epochs, lr=c.shadow_lr,
          momentum=c.shadow_momentum, weight_decay=c.shadow_weight_decay,
          batch_size=c.shadow_batch_size, milestones=tuple(c.shadow_milestones), gamma=c.shadow_gamma,
          augment=None if c.shadow_augment else False, seed=s.seed, max_eval=c.mia_ii_max_eval,
          vmapped=bool(c.shadow_vmap), ckpt_dir=s.cache_dir, log=s.log)
      s.log(f"[metrics] trained {c.num_shadow} shadow models on a pool of "
            f"{self._shadow.in_mask.shape[1]} images, last-epoch loss {self._shadow.final_loss:.4f} "
            f"({time.time() - t0:.1f}s)")
    return self._shadow

  @property
  def attack(self) -> Attack:
    if self._attack is None:
      s = self.suite
      self._attack = fit_attack(s.model, self.shadow, s.data, topk=self.cfg.mia_ii_topk,
                                kind=self.cfg.mia_ii_attack, seed=s.seed, batch_size=self.cfg.batch_size)
      s.log(f"[metrics] MIA-II attack ({self.cfg.mia_ii_attack}) accuracy on shadow in/out: "
            f"{self._attack.shadow_accuracy:.1f}% (training rows), "
            f"{self._attack.heldout_accuracy:.1f}% (balanced, leave-one-shadow-out)")
    return self._attack

  def __call__(self, out) -> dict:
    a = self.attack
    pos = np.searchsorted(self.suite.forget_idx, a.member_idx)  # members are forget-train images
    return {"mia_ii": mia_ii_f1_from_logits(a, out.logits("forget_train")[pos],
                                            out.logits("test")[a.nonmember_idx]),
            "mia_ii_attack_acc": float(getattr(a, "heldout_accuracy", float("nan")))}

  def info(self) -> dict:
    out = {}
    if self._shadow is not None:
      out.update(shadow_pool=int(self._shadow.in_mask.shape[1]),
                 num_shadow=int(self._shadow.in_mask.shape[0]),
                 shadow_final_loss=self._shadow.final_loss,
                 mia_ii_members=len(self._shadow.member_idx),
                 mia_ii_nonmembers=len(self._shadow.nonmember_idx))
    if self._attack is not None:
      out["mia_ii_attack_shadow_acc"] = self._attack.shadow_accuracy
      out["mia_ii_attack_acc"] = self._attack.heldout_accuracy
    return out


__all__ = ["mia_ii", "ShadowModels", "Attack", "mia_ii_pools", "shadow_pool", "shadow_in_masks",
           "shadow_schedule", "shadow_optimizer", "shadow_train_step", "train_shadows_scan",
           "train_shadow_models", "stacked_predict_probs", "attack_features", "fit_attack_from_probs",
           "heldout_attack_accuracy", "fit_attack", "MAX_HELDOUT_SHADOWS", "member_f1_from_probs",
           "mia_ii_f1_from_logits", "mia_ii_f1", "num_steps", "ATTACKS", "MiaII", "default_config", "resolve",
           "validate_config", "SHADOW_RECIPE"]


make_callable(__name__)
