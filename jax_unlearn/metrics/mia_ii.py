"""MIA-II: a Shokri-style shadow-model membership attack, reported as F1 (SPEC §1.10 reconstruction).

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
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.neural_network import MLPClassifier
from threadpoolctl import threadpool_limits

from jax_unlearn.data.normalize import normalize
from jax_unlearn.errors import ConfigError, DataError
from jax_unlearn.models import init_variables
from jax_unlearn.train.evaluate import predict_logits
from jax_unlearn.train.supervised import make_optimizer
from jax_unlearn.models.conv import loop_safe_convs

STREAM_EVAL = 31
STREAM_IN_OUT = 32
STREAM_ORDER = 33
ATTACKS = ("hgb", "logreg", "mlp")


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


# --------------------------------------------------------------------------------------- pools


def mia_ii_pools(data, seed: int = 0, max_eval: int = 5000) -> dict:
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


def shadow_pool(data, shadow: ShadowModels):
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


def _vars(params, batch_stats):
  return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def shadow_train_step(apply_fn, tx, augment: bool, state, idx, key, images, labels, mean, std):
  """One supervised CE + SGD step of ONE shadow. `state` = (params, batch_stats, opt_state); `idx`
  [B] indexes the device-resident pool `images`/`labels`. Returns (state, loss)."""
  params, bstats, opt_state = state
  x = images[idx]
  if augment:
    from jax_unlearn import data as data_lib  # the data package owns augmentation
    x = data_lib.augment(key, x)
  x = normalize(x, mean, std)
  y = labels[idx]

  def loss_fn(p):
    logits, upd = apply_fn(_vars(p, bstats), x, train=True, mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, upd.get("batch_stats", bstats)

  (loss, bstats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  return (optax.apply_updates(params, updates), bstats, opt_state), loss


@functools.partial(jax.jit, static_argnames=("apply_fn", "lr", "momentum", "weight_decay", "milestones",
                                             "gamma", "steps_per_epoch", "augment", "vmapped"))
def train_shadows_scan(apply_fn, state, idx, keys, images, labels, mean, std, t0=0, *, lr: float,
                       momentum: float, weight_decay: float, augment: bool, milestones: tuple = (),
                       gamma: float = 0.1, steps_per_epoch: int = 1, vmapped: bool = True):
  """Runs all steps of `idx` with `lax.scan`. vmapped=True: `state` is stacked over S shadows, `idx` is
  [T, S, B], `keys` [S]; the step is `jax.vmap(shadow_train_step)`. vmapped=False: one shadow, `idx`
  [T, B], `keys` a single key. Row t of `idx` is global step t0 + t and uses `fold_in(key, t0 + t)`,
  so a schedule run in pieces (one epoch at a time) equals one scan over it. Returns
  (state, losses [T, (S)]). The schedule follows the optimiser state's own step count."""
  tx = shadow_optimizer(lr, momentum, weight_decay, milestones, gamma, steps_per_epoch)
  step = functools.partial(shadow_train_step, apply_fn, tx, augment)

  def one(state, idx_t, key):
    return step(state, idx_t, key, images, labels, mean, std)

  if vmapped:
    one = jax.vmap(one)

  def body(state, xs):
    t, idx_t = xs
    k = jax.vmap(jax.random.fold_in, (0, None))(keys, t) if vmapped else jax.random.fold_in(keys, t)
    return one(state, idx_t, k)

  return jax.lax.scan(body, state, (t0 + jnp.arange(idx.shape[0]), idx))


def _init_state(model, key, image_shape, tx):
  v = init_variables(model, key, (1,) + tuple(image_shape))
  return (v["params"], v.get("batch_stats", {}), tx.init(v["params"]))


def _stack(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def train_shadow_models(model, data, key, *, num_shadow: int = 4, epochs: int = 30, lr: float = 0.05,
                        momentum: float = 0.9, weight_decay: float = 1e-4, batch_size: int = 64,
                        milestones: tuple = (), gamma: float = 0.1,
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
  if ckpt_dir is not None:
    state, losses = _train_shadows_checkpointed(model.apply, _stack(states), idx, step_keys, args, kw,
                                                vmapped, epochs, ckpt_dir, log or (lambda m: None))
  else:
    with loop_safe_convs():  # conv gradients inside lax.scan: jax-ml/jax#12868
      state, losses = _scan_steps(model.apply, _stack(states), idx, step_keys, args, kw, vmapped, 0)
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


def _finite(tree) -> bool:
  return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


def _divergence(losses, state, lo: int) -> str | None:
  """None if this epoch's losses [spe, S] and the whole state (params, BN stats, momentum) are finite;
  else what went wrong, naming the first global step (1-based) whose loss is not finite."""
  losses = np.asarray(losses)
  bad = ~np.isfinite(losses).all(axis=1)
  if bad.any():
    t = int(np.argmax(bad))
    kind = "nan" if np.isnan(losses[t]).any() else "inf"
    return f"the training loss became {kind} at step {lo + t + 1}"
  if not _finite(state):  # the last update of the epoch diverged after its (finite) loss
    return f"a parameter became nan/inf after step {lo + len(losses)}"
  return None


def _train_shadows_checkpointed(apply_fn, state, idx, step_keys, args, kw, vmapped, epochs, ckpt_dir,
                                log):
  """`_scan_steps` one epoch at a time, with an orbax checkpoint after every epoch.

  The checkpoint is {state (stacked, with optimizer state), epoch, losses [T, S] (zero after the saved
  epoch: a fixed shape, so the restore target is static), keys (the step keys' raw data: the PRNG
  state)}. Epoch e runs global steps e*spe .. (e+1)*spe - 1 with t0 = e*spe, so step t still uses
  fold_in(key, t) and the pieces equal one scan. A non-finite epoch is not saved."""
  from jax_unlearn.errors import NumericalError  # noqa: PLC0415
  from jax_unlearn.train.checkpoint import Checkpointer, key_data, wrap_key  # noqa: PLC0415
  t_total, s_count = idx.shape[0], idx.shape[1]
  spe = t_total // max(epochs, 1)
  ck = {"state": state, "epoch": jnp.asarray(0, jnp.int32),
        "losses": jnp.zeros((t_total, s_count), jnp.float32), "keys": key_data(step_keys)}
  ckptr = Checkpointer(ckpt_dir)
  try:
    if ckptr.latest_step() is not None:
      ck = ckptr.restore(ck)
      done = int(ck["epoch"])
      log(f"[mia_ii shadows] {'reused the finished' if done >= epochs else 'resumed at epoch'} "
          f"{done}/{epochs} from {ckptr.directory}")
    state, keys = ck["state"], wrap_key(ck["keys"], step_keys)
    with loop_safe_convs():  # conv gradients inside lax.scan: jax-ml/jax#12868
      for epoch in range(int(ck["epoch"]), epochs):
        lo, hi = epoch * spe, (epoch + 1) * spe
        state, losses = _scan_steps(apply_fn, state, idx[lo:hi], keys, args, kw, vmapped, lo)
        what = _divergence(losses, state, lo)
        if what is not None:
          last = int(ck["epoch"])
          kept = (f"the last good checkpoint (epoch {last}) is kept in {ckptr.directory}" if last
                  else f"no checkpoint was written yet in {ckptr.directory}")
          raise NumericalError(
              f"[mia_ii shadows] {what} (of {t_total}) in epoch {epoch + 1}/{epochs}; {kept}: lower "
              "--config.metrics.shadow_lr and run the same command again")
        ck = {"state": state, "epoch": jnp.asarray(epoch + 1, jnp.int32),
              "losses": ck["losses"].at[lo:hi].set(losses), "keys": ck["keys"]}
        ckptr.save(epoch + 1, ck)
        log(f"[mia_ii shadows] epoch {epoch + 1}/{epochs}: mean loss {float(jnp.mean(losses)):.4f} "
            "(checkpointed)")
  finally:
    ckptr.close()
  return ck["state"], ck["losses"][:epochs * spe]


# ------------------------------------------------------------------------------------- attack


@functools.partial(jax.jit, static_argnames=("apply_fn",))
def _stacked_probs(apply_fn, stacked_vars, x, mean, std):
  xn = normalize(x, mean, std)
  return jax.vmap(lambda v: jax.nn.softmax(apply_fn(v, xn, train=False), axis=-1))(stacked_vars)


def stacked_predict_probs(model, stacked_vars, images, info, batch_size: int = 512) -> np.ndarray:
  """Softmax outputs `[S, N, K]` of S stacked models on raw images (batched, padded, jitted)."""
  images = np.asarray(images, np.float32)
  mean, std = jnp.asarray(info.mean, jnp.float32), jnp.asarray(info.std, jnp.float32)
  outs = []
  for i in range(0, len(images), batch_size):
    chunk = images[i:i + batch_size]
    pad = batch_size - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], np.float32)])
    outs.append(np.asarray(_stacked_probs(model.apply, stacked_vars, chunk, mean, std))[:, :batch_size - pad])
  return np.concatenate(outs, axis=1)


@functools.partial(jax.jit, static_argnames=("topk",))
def attack_features(probs, topk: int):
  """Softmax vectors sorted in descending order, first `topk` entries (all when topk <= 0 or > K)."""
  k = probs.shape[-1] if topk <= 0 else min(topk, probs.shape[-1])
  return -jnp.sort(-jnp.asarray(probs, jnp.float32), axis=-1)[..., :k]


def _classifier(kind: str, seed: int):
  if kind == "hgb":
    return HistGradientBoostingClassifier(max_iter=200, learning_rate=0.1, max_leaf_nodes=15,
                                          early_stopping=False, random_state=seed)
  if kind == "logreg":
    return LogisticRegression(max_iter=1000)
  if kind == "mlp":
    return MLPClassifier(hidden_layer_sizes=(64,), max_iter=500, random_state=seed)
  raise ConfigError(f"unknown MIA-II attack classifier {kind!r}; set --config.metrics.mia_ii_attack "
                    f"to one of: {', '.join(ATTACKS)}")


def fit_attack_from_probs(in_probs, out_probs, *, topk: int = 10, kind: str = "hgb", seed: int = 0):
  """Fits the binary attack on softmax vectors `[n, K]` of members (1) vs non-members (0).
  Returns (classifier, accuracy in percent on its own training rows)."""
  fi, fo = np.asarray(attack_features(in_probs, topk)), np.asarray(attack_features(out_probs, topk))
  x = np.concatenate([fi, fo]).astype(np.float64)
  y = np.concatenate([np.ones(len(fi), np.int32), np.zeros(len(fo), np.int32)])
  # One OpenMP thread: HistGradientBoosting's threads spin-wait, and on a shared 2-core machine that
  # made a 250-row fit take 14 s instead of 0.2 s (76k rows: 1.8 s single-threaded).
  with threadpool_limits(limits=1, user_api="openmp"):
    clf = _classifier(kind, seed).fit(x, y)
    acc = float(100.0 * np.mean(clf.predict(x) == y))
  return clf, acc


def fit_attack(model, shadow: ShadowModels, data, *, topk: int = 10, kind: str = "hgb", seed: int = 0,
               batch_size: int = 512) -> Attack:
  """Fits the attack on every shadow's outputs on the whole pool (its "in" half = 1, "out" half = 0)."""
  images, _ = shadow_pool(data, shadow)
  probs = stacked_predict_probs(model, shadow.variables, images, data.info, batch_size)  # [S, N, K]
  m = np.asarray(shadow.in_mask, bool)
  clf, acc = fit_attack_from_probs(probs[m], probs[~m], topk=topk, kind=kind, seed=seed)
  return Attack(classifier=clf, topk=topk, member_idx=shadow.member_idx,
                nonmember_idx=shadow.nonmember_idx, shadow_accuracy=acc)


def member_f1_from_probs(classifier, topk: int, member_probs, nonmember_probs) -> float:
  """F1 (percent) of the "member" class when `classifier` labels members (true 1) and non-members (0)."""
  fm = np.asarray(attack_features(member_probs, topk), np.float64)
  fn = np.asarray(attack_features(nonmember_probs, topk), np.float64)
  y = np.concatenate([np.ones(len(fm), np.int32), np.zeros(len(fn), np.int32)])
  with threadpool_limits(limits=1, user_api="openmp"):
    pred = classifier.predict(np.concatenate([fm, fn]))
  return float(100.0 * f1_score(y, pred, pos_label=1, zero_division=0.0))


def mia_ii_f1_from_logits(attack: Attack, member_logits, nonmember_logits) -> float:
  sm = lambda lg: np.asarray(jax.nn.softmax(jnp.asarray(lg, jnp.float32), axis=-1))  # noqa: E731
  return member_f1_from_probs(attack.classifier, attack.topk, sm(member_logits), sm(nonmember_logits))


def mia_ii_f1(attack: Attack, model, variables, data, batch_size: int = 512) -> float:
  """MIA-II of one evaluated model: F1 (percent) of "member" on the attack's evaluation pools
  (forget-class training images vs forget-class test images of `data`)."""
  ml = predict_logits(model, variables, np.asarray(data.train.images)[attack.member_idx], data.info,
                      batch_size)
  nl = predict_logits(model, variables, np.asarray(data.test.images)[attack.nonmember_idx], data.info,
                      batch_size)
  return mia_ii_f1_from_logits(attack, ml, nl)


def num_steps(n_pool: int, batch_size: int, epochs: int) -> int:
  """Steps each shadow takes (for logs/budgets)."""
  n_in = n_pool // 2
  return epochs * (n_in // max(1, min(batch_size, n_in)))


__all__ = ["ShadowModels", "Attack", "mia_ii_pools", "shadow_pool", "shadow_in_masks", "shadow_schedule",
           "shadow_optimizer", "shadow_train_step", "train_shadows_scan", "train_shadow_models",
           "stacked_predict_probs", "attack_features", "fit_attack_from_probs", "fit_attack",
           "member_f1_from_probs", "mia_ii_f1_from_logits", "mia_ii_f1", "num_steps", "ATTACKS"]
