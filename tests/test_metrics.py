"""Tests for jax_unlearn.metrics: closed forms, separable attacks, vmap == sequential, identities."""

from __future__ import annotations

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jax_unlearn import metrics
from jax_unlearn.data import DataInfo, Split, UnlearnData
from jax_unlearn.errors import ConfigError
from jax_unlearn.metrics import ain, kl, mia_entropy, mia_i, mia_ii
from jax_unlearn.models import AllCNN, init_variables
from jax_unlearn.models.layers import BatchNorm
from jax_unlearn.train.evaluate import accuracy

K = 4


class TinyNet(nn.Module):
  """Dense-BN-ReLU-Dense with the classifiers' call signature (train, mask, features)."""
  num_classes: int = K

  @nn.compact
  def __call__(self, x, train: bool = False, mask=None, features: bool = False):
    h = nn.Dense(16)(x.reshape(x.shape[0], -1))
    h = nn.relu(BatchNorm(use_running_average=not train)(h, mask=mask))
    logits = nn.Dense(self.num_classes)(h)
    return (logits, h) if features else logits


def _split(rng, templates, n):
  y = rng.integers(0, K, n).astype(np.int32)
  x = np.clip(templates[y] + 0.15 * rng.standard_normal((n, 8, 8, 1)), 0, 1).astype(np.float32)
  return Split(images=x, labels=y, fine_labels=None)


def make_data(random_forget: bool = False, seed: int = 0) -> UnlearnData:
  """Learnable 4-class 8x8x1 data: class templates + noise; forget class 0 (or 10 random samples)."""
  rng = np.random.default_rng(seed)
  templates = rng.uniform(0, 1, (K, 8, 8, 1))
  train, val, test = (_split(rng, templates, n) for n in (160, 48, 96))
  info = DataInfo(name="toy", num_classes=K, image_shape=(8, 8, 1), mean=(0.5,), std=(0.25,),
                  augment=False)
  if random_forget:
    ftr = np.zeros(len(train.labels), bool)
    ftr[rng.permutation(len(ftr))[:10]] = True
    fva, fte = np.zeros(len(val.labels), bool), np.zeros(len(test.labels), bool)
  else:
    ftr, fva, fte = train.labels == 0, val.labels == 0, test.labels == 0
  return UnlearnData(info=info, train=train, val=val, test=test, forget_train_mask=ftr,
                     forget_val_mask=fva, forget_test_mask=fte)


@pytest.fixture(scope="module")
def data():
  return make_data()


@pytest.fixture(scope="module")
def model_vars():
  model = TinyNet()
  return model, init_variables(model, jax.random.PRNGKey(0), (1, 8, 8, 1))


# ----------------------------------------------------------------------------- pure cores


def test_mia_i_separable_confidences():
  rng = np.random.default_rng(0)
  members, nonmembers = rng.uniform(0.9, 1.0, 200), rng.uniform(0.0, 0.1, 200)
  assert mia_i.mia_i_from_confidences(members, nonmembers, rng.uniform(0.0, 0.1, 50)) == 100.0
  assert mia_i.mia_i_from_confidences(members, nonmembers, rng.uniform(0.9, 1.0, 50)) == 0.0
  assert math.isnan(mia_i.mia_i_from_confidences(members, nonmembers, np.zeros(0)))


def test_mia_entropy_separable_entropies():
  rng = np.random.default_rng(1)
  members, nonmembers = rng.uniform(0.0, 0.1, 200), rng.uniform(1.0, 1.3, 300)  # unbalanced on purpose
  assert mia_entropy.mia_entropy_from_entropies(members, nonmembers, rng.uniform(1.0, 1.3, 40)) == 0.0
  assert mia_entropy.mia_entropy_from_entropies(members, nonmembers, rng.uniform(0.0, 0.1, 40)) == 100.0


def test_confidence_and_entropy_closed_forms():
  logits = jnp.array([[0.0, 0.0, 0.0, 0.0], [1e4, 0.0, 0.0, 0.0], [0.0, jnp.log(3.0), 0.0, 0.0]])
  conf = mia_i.true_label_confidence(logits, jnp.array([2, 0, 1]))
  ent = mia_entropy.softmax_entropy(logits)
  chex.assert_shape((conf, ent), (3,))
  np.testing.assert_allclose(conf, [0.25, 1.0, 0.5], rtol=1e-6)
  p = np.array([1, 3, 1, 1]) / 6.0
  np.testing.assert_allclose(ent, [np.log(4.0), 0.0, -(p * np.log(p)).sum()], rtol=1e-6, atol=1e-7)


def test_kl_hand_computation():
  lp = jnp.array([[0.0, jnp.log(3.0)], [5.0, 5.0]])
  lq = jnp.array([[0.0, 0.0], [2.0, 2.0]])
  got = kl.kl_divergence_from_logits(lp, lq)
  chex.assert_shape(got, (2,))
  expected = 0.25 * np.log(0.25 / 0.5) + 0.75 * np.log(0.75 / 0.5)
  np.testing.assert_allclose(got, [expected, 0.0], atol=1e-6)
  assert kl.mean_kl_from_logits(lp, lq) == pytest.approx(expected / 2, abs=1e-6)
  # Saturated logits stay finite (log_softmax, no log(0)).
  extreme = kl.kl_divergence_from_logits(jnp.array([[1e4, -1e4]]), jnp.array([[-1e4, 1e4]]))
  assert np.isfinite(extreme).all() and float(extreme[0]) == pytest.approx(2e4, rel=1e-5)


def test_anamnesis_index():
  assert metrics.anamnesis_index(7, 7) == 1.0
  assert metrics.anamnesis_index(3, 12) == 0.25
  assert metrics.anamnesis_index(0, 0) == 1.0
  assert math.isnan(metrics.anamnesis_index(4, 0))
  assert metrics.ain_target(80.0, 0.05) == pytest.approx(76.0)


def test_mia_ii_attack_f1_high_on_constructed_signal():
  rng = np.random.default_rng(2)

  def probs(n, top_lo, top_hi):
    top = rng.uniform(top_lo, top_hi, n)
    rest = rng.dirichlet(np.ones(K - 1), n) * (1 - top)[:, None]
    p = np.concatenate([top[:, None], rest], 1)
    return np.take_along_axis(p, rng.permuted(np.tile(np.arange(K), (n, 1)), axis=1), 1)

  clf, acc = mia_ii.fit_attack_from_probs(probs(400, 0.995, 1.0), probs(400, 0.4, 0.9), topk=K, seed=0)
  assert acc > 95
  f1 = mia_ii.member_f1_from_probs(clf, K, probs(100, 0.995, 1.0), probs(100, 0.4, 0.9))
  assert f1 > 95
  # An attacker that calls everything a non-member scores F1 = 0 (zero_division=0).
  f1_none = mia_ii.member_f1_from_probs(clf, K, probs(50, 0.4, 0.9), probs(50, 0.4, 0.9))
  assert f1_none < 10
  feats = mia_ii.attack_features(jnp.asarray(probs(5, 0.5, 0.6)), 2)
  chex.assert_shape(feats, (5, 2))
  assert bool(jnp.all(feats[:, 0] >= feats[:, 1]))


# ------------------------------------------------------------------------------- pools


@pytest.mark.parametrize("random_forget", [False, True])
def test_mia_ii_pools_are_disjoint_and_balanced(random_forget):
  d = make_data(random_forget)
  p = mia_ii.mia_ii_pools(d, seed=3)
  assert len(p["member_idx"]) == len(p["nonmember_idx"]) > 0
  assert d.forget_train_mask[p["member_idx"]].all()
  if not random_forget:
    assert set(p["nonmember_idx"]) == set(np.flatnonzero(d.forget_test_mask))
  assert not set(p["pool_test_idx"]) & set(p["nonmember_idx"])
  assert len(p["pool_test_idx"]) + len(p["nonmember_idx"]) == len(d.test.labels)
  masks = mia_ii.shadow_in_masks(11, 3, seed=0)
  chex.assert_shape(masks, (3, 11))
  assert (masks.sum(1) == 5).all() and not (masks[0] == masks[1]).all()
  idx = mia_ii.shadow_schedule(masks, batch_size=2, epochs=3, seed=0)
  chex.assert_shape(idx, (3 * 2, 3, 2))
  for s in range(3):
    assert masks[s][idx[:, s]].all()  # a shadow only ever trains on its own "in" half


def test_mia_i_pools(data):
  member, nonmember, target = mia_i.mia_i_pools(data, max_samples=1000, seed=0)
  assert len(member) == len(nonmember) == int((~data.forget_test_mask).sum())
  assert not data.forget_train_mask[member].any() and not data.forget_test_mask[nonmember].any()
  assert data.forget_train_mask[target].all() and len(target) == data.forget_train_mask.sum()


# --------------------------------------------------------------------- model-level metrics


@pytest.mark.parametrize("random_forget", [False, True])
def test_forget_retain_accuracy(model_vars, random_forget):
  model, v = model_vars
  d = make_data(random_forget)
  acc = metrics.forget_retain_accuracy(model, v, d)
  forget_view = d.forget_train if random_forget else d.forget_test
  assert acc["acc_forget"] == pytest.approx(accuracy(model, v, forget_view, d.info))
  assert acc["acc_retain"] == pytest.approx(accuracy(model, v, d.retain_test, d.info))


def test_kl_to_retrain_identical_model_is_zero(model_vars, data):
  model, v = model_vars
  v2 = init_variables(model, jax.random.PRNGKey(1), (1, 8, 8, 1))
  assert metrics.kl_to_retrain(model, v, v, data.forget_test.images, data.info) == pytest.approx(0, abs=1e-6)
  assert metrics.kl_to_retrain(model, v, v2, data.forget_test.images, data.info) > 1e-4


def test_relearn_zero_when_target_met_and_cap_when_unreachable(model_vars, data):
  model, v = model_vars
  relearn_split, ev = data.forget_train, data.forget_val
  assert ain.relearn_steps(model, v, relearn_split, ev, 0.0, info=data.info) == 0
  r = ain.relearn(model, v, relearn_split, ev, 101.0, info=data.info, batch_size=16, max_epochs=2)
  n = len(relearn_split.labels)
  assert r.max_steps == 2 * math.ceil(n / 16) and r.steps == r.max_steps and not r.reached


@pytest.mark.parametrize("n,batch", [(1200, 512), (1024, 512), (1, 512), (7, 3), (513, 512)])
def test_pad_to_batches_equal_batches_pad_less_than_one_row_per_batch(n, batch):
  x = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
  y = np.arange(n, dtype=np.int32)
  bx, by, bm = ain.pad_to_batches(x, y, batch)
  nb, b = by.shape
  assert nb == math.ceil(n / batch) and b <= batch and 0 <= nb * b - n < nb
  assert bm.sum() == n and np.array_equal(bx.reshape(-1, 2)[bm.reshape(-1)], x)
  assert np.array_equal(by.reshape(-1)[bm.reshape(-1)], y)


def test_relearn_identical_models_give_ain_one(model_vars, data):
  model, v = model_vars
  idx = metrics.relearn_set_index(data, retain_ratio=1.0, seed=0)
  nf = int(data.forget_train_mask.sum())
  assert len(idx) == 2 * nf and data.forget_train_mask[idx].sum() == nf
  rs = (data.train.images[idx], data.train.labels[idx])
  kw = dict(info=data.info, lr=1e-2, batch_size=32, max_epochs=10)
  r1 = ain.relearn(model, v, rs, data.forget_val, 90.0, **kw)
  r2 = ain.relearn(model, v, rs, data.forget_val, 90.0, **kw)
  assert r1.reached and 0 < r1.steps <= r1.max_steps and r1.final_acc >= 90.0 > r1.initial_acc
  assert metrics.anamnesis_index(r1.steps, r2.steps) == 1.0


@pytest.mark.parametrize("arch", ["tiny", pytest.param("allcnn", marks=pytest.mark.slow)])
def test_shadow_training_vmap_equals_sequential(data, arch):
  model = TinyNet() if arch == "tiny" else AllCNN(num_classes=K, width=0.1)
  kw = dict(num_shadow=2, epochs=2, lr=0.05, batch_size=16, seed=0)
  key = jax.random.PRNGKey(5)
  a = mia_ii.train_shadow_models(model, data, key, vmapped=True, **kw)
  b = mia_ii.train_shadow_models(model, data, key, vmapped=False, **kw)
  chex.assert_trees_all_equal_structs(a.variables, b.variables)
  # A vmapped conv runs as one grouped conv (different float reduction order) and BatchNorm after a
  # width-0.1 conv divides by small channel stds, which amplifies rounding over the steps; the dense
  # model matches to 1e-5 everywhere, AllCNN to ~1e-4 in losses/outputs and ~1e-3 in raw kernels.
  tol = (1e-5, 1e-5, 1e-5) if arch == "tiny" else (2e-4, 1e-3, 5e-4)  # losses, params, outputs
  np.testing.assert_allclose(a.losses, b.losses, atol=tol[0], rtol=tol[0])
  chex.assert_shape(a.losses, (2 * (len(a.in_mask[0]) // 2 // 16), 2))
  chex.assert_trees_all_close(a.variables, b.variables, atol=tol[1], rtol=tol[1])
  pa = mia_ii.stacked_predict_probs(model, a.variables, data.test.images, data.info)
  pb = mia_ii.stacked_predict_probs(model, b.variables, data.test.images, data.info)
  np.testing.assert_allclose(pa, pb, atol=tol[2])
  leaf = jax.tree.leaves(a.variables["params"])[0]
  assert leaf.shape[0] == 2
  assert not np.allclose(*jax.tree.leaves(a.variables["params"])[0])  # shadows differ
  np.testing.assert_array_equal(a.in_mask, b.in_mask)
  probs = mia_ii.stacked_predict_probs(model, a.variables, data.val.images[:7], data.info, batch_size=4)
  chex.assert_shape(probs, (2, 7, K))
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)


# -------------------------------------------------------------------------- suite / config


def _metrics_cfg(**kw):
  c = metrics.default_config()
  c.update(dict(num_shadow=2, shadow_epochs=3, shadow_batch_size=16, ain_batch_size=32,
                ain_max_epochs=3, **kw))
  return c


def test_metric_suite_end_to_end(model_vars, data):
  model, orig = model_vars
  retrain = init_variables(model, jax.random.PRNGKey(7), (1, 8, 8, 1))
  full = ml_collections.ConfigDict({"seed": 3, "metrics": _metrics_cfg()})
  logs = []
  suite = metrics.MetricSuite(model, data, original_vars=orig, retrain_vars=retrain, config=full,
                              log=logs.append)
  row = suite(orig)
  assert set(metrics.RESULT_KEYS) <= set(row)
  population = {k for s in metrics.specs() if s.population for k in s.keys}
  for k in metrics.RESULT_KEYS:
    assert np.isfinite(row[k]) != (k in population), k  # population metrics: NaN (not configured)
  for k in ("acc_forget", "acc_retain", "mia_i", "mia_ii", "mia_entropy"):
    assert 0.0 <= row[k] <= 100.0, k
  assert row["relearn_steps"] == 0 and row["ain"] == 0.0  # the original is at its own target
  same = suite(retrain)
  assert same["ain"] == 1.0 and same["kl_to_retrain"] == pytest.approx(0.0, abs=1e-6)
  # The suite's shared forward passes give the same numbers as the standalone metric functions.
  assert row["mia_i"] == metrics.mia_i.mia_i(model, orig, data, max_samples=10000, seed=suite.seed)
  assert row["mia_entropy"] == mia_entropy.mia_entropy(model, orig, data, seed=suite.seed)
  assert row["mia_ii"] == metrics.mia_ii_f1(suite.evaluators["mia_ii"].attack, model, orig, data)
  # The attacks' held-out accuracies: MIA-I's from the same pools' confidences, MIA-II's one per suite.
  member, nonmember, _ = mia_i.mia_i_pools(data, max_samples=10000, seed=suite.seed)
  conf = lambda split, idx: np.asarray(mia_i.true_label_confidence(  # noqa: E731
      suite.logits_of(orig, split.images[idx]), split.labels[idx]))
  assert row["mia_i_attack_acc"] == mia_i.mia_i_attack_accuracy(conf(data.train, member),
                                                                conf(data.test, nonmember), suite.seed)
  assert 0.0 <= row["mia_i_attack_acc"] <= 100.0 and 0.0 <= row["mia_ii_attack_acc"] <= 100.0
  assert same["mia_ii_attack_acc"] == row["mia_ii_attack_acc"] == suite.info()["mia_ii_attack_acc"]
  assert row["kl_to_retrain"] == pytest.approx(
      metrics.kl_to_retrain(model, orig, retrain, data.forget_test.images, data.info), rel=1e-5)
  # Cached parts are reused: a second suite given the shadows does not retrain them.
  again = metrics.evaluate_all(model, orig, data=data, original_vars=orig, retrain_vars=retrain,
                               shadow=suite.evaluators["mia_ii"].shadow, config=full, log=logs.append)
  assert again["mia_ii"] == row["mia_ii"]
  info = suite.info()
  assert info["num_shadow"] == 2 and info["relearn_steps_retrain"] == same["relearn_steps"]


def test_metric_suite_random_forgetting_and_no_retrain(model_vars):
  model, orig = model_vars
  d = make_data(random_forget=True)
  row = metrics.evaluate_all(model, orig, data=d, original_vars=orig, retrain_vars=None,
                             config=_metrics_cfg(names=("acc", "mia_i", "mia_entropy")), log=lambda s: None)
  assert np.isfinite([row["acc_forget"], row["mia_i"], row["mia_entropy"]]).all()
  assert all(math.isnan(row[k]) for k in ("mia_ii", "ain", "kl_to_retrain"))


def test_config_validation():
  with pytest.raises(ConfigError):
    metrics.resolve_config(ml_collections.ConfigDict({"num_shadows": 3}))
  with pytest.raises(ConfigError):
    metrics.resolve_config(_metrics_cfg(names=("acc", "mia_iii")))
  with pytest.raises(ConfigError):
    metrics.resolve_config(_metrics_cfg(ain_alpha=1.5))
  cfg, seed = metrics.resolve_config(ml_collections.ConfigDict({"seed": 2, "metrics": _metrics_cfg(
      names=("acc,ain",))}))  # what --config.metrics.names=acc,ain gives
  assert cfg.names == ("acc", "ain") and seed == 2 + cfg.seed_offset
  cfg, _ = metrics.resolve_config(ml_collections.ConfigDict({"names": "acc,mia_i"}))  # a plain string
  assert cfg.names == ("acc", "mia_i")


@pytest.mark.parametrize("name", ["digits", "cifar10_allcnn", "svhn_allcnn"])
def test_shadows_take_the_original_models_recipe(name):
  # SPEC §1.10: shadows of "the same architecture and recipe" as the target.
  import importlib
  c = importlib.import_module(f"configs.{name}").get_config()
  cfg, _ = metrics.resolve_config(c)
  assert (cfg.shadow_epochs, cfg.shadow_lr, cfg.shadow_momentum, cfg.shadow_weight_decay,
          cfg.shadow_gamma) == (c.train.epochs, c.train.lr, c.train.momentum, c.train.weight_decay,
                                c.train.gamma)
  assert tuple(cfg.shadow_milestones) == tuple(c.train.milestones)
  assert cfg.shadow_batch_size == c.batch_size
  with c.unlocked():
    c.metrics.shadow_epochs, c.train.lr = 3, 0.123  # an explicit shadow field wins; the rest follow
  cfg, _ = metrics.resolve_config(c)
  assert cfg.shadow_epochs == 3 and cfg.shadow_lr == 0.123
  alone, _ = metrics.resolve_config(metrics.default_config())  # no full config: base_config's recipe
  assert alone.shadow_epochs == 30 and alone.shadow_batch_size == 64


def test_shadow_lr_schedule_is_applied(data):
  # gamma 0 at the epoch-1 milestone freezes the parameters for epoch 2 (the batches of epoch 1 do not
  # depend on the number of epochs), so 2 epochs end where 1 epoch without a schedule ends.
  kw = dict(num_shadow=2, lr=0.05, batch_size=16, seed=0, vmapped=True)
  key = jax.random.PRNGKey(5)
  one = mia_ii.train_shadow_models(TinyNet(), data, key, epochs=1, **kw)
  frozen = mia_ii.train_shadow_models(TinyNet(), data, key, epochs=2, milestones=(1,), gamma=0.0, **kw)
  moving = mia_ii.train_shadow_models(TinyNet(), data, key, epochs=2, **kw)
  chex.assert_trees_all_close(frozen.variables["params"], one.variables["params"], atol=1e-6)
  diff = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), moving.variables["params"],
                      one.variables["params"])
  assert max(jax.tree.leaves(diff)) > 1e-3
