"""Repair baselines of the SSD repository (SPEC §4.5): finetune, bad_teacher, amnesiac, unsir.

Tiny AllCNN (width 0.125) on random 8x8x1 data with real `UnlearnData` partitions; budgets are cut to a
few steps, and every method uses batch 32 so that the jitted step compiles once per (optimiser, loss).
"""

import json

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jax_unlearn import data as data_lib
from jax_unlearn.errors import ConfigError
from jax_unlearn.methods import _repair, amnesiac, bad_teacher, base, finetune, unsir
from jax_unlearn.models import AllCNN, init_variables

MODULES = {"finetune": finetune, "bad_teacher": bad_teacher, "amnesiac": amnesiac, "unsir": unsir}
INFO = data_lib.DataInfo(name="digits", num_classes=10, image_shape=(8, 8, 1), mean=(0.3,),
                         std=(0.4,), augment=False)
SMALL = {
    "finetune": dict(epochs=1, batch_size=32),
    "bad_teacher": dict(batch_size=32),
    "amnesiac": dict(epochs=1, batch_size=32),
    "unsir": dict(noise_steps=3, num_noise_batches=2, samples_per_class=6, batch_size=32,
                  repair_batch_size=32),
}


def _split(rng, n):
  return data_lib.Split(rng.rand(n, 8, 8, 1).astype(np.float32),
                        (np.arange(n) % 10).astype(np.int32))


@pytest.fixture(scope="module")
def setup():
  rng = np.random.RandomState(0)
  ds = data_lib.Dataset(INFO, _split(rng, 120), _split(rng, 30), _split(rng, 30))
  model = AllCNN(num_classes=10, width=0.125)
  v = init_variables(model, jax.random.key(1), (1, 8, 8, 1))
  # A fresh net's BN running statistics (0, 1) do not match its tiny activations, so in eval mode it
  # outputs a near-uniform distribution. Calibrate them on the data (train-mode forwards, momentum
  # 0.9) so that this stand-in "original" has O(1) logits like a trained one.
  x = data_lib.normalize(ds.train.images, INFO.mean, INFO.std)
  bn_update = jax.jit(lambda v: {**v, **model.apply(v, x, train=True, mutable=["batch_stats"])[1]})
  for _ in range(60):
    v = bn_update(v)
  return ds, model, jax.device_get(v)


def _ctx(setup, method, key=0, mode="class", **over):
  ds, model, original = setup
  forget = ml_collections.ConfigDict(dict(mode=mode, classes=(3,), num_samples=12))
  config = ml_collections.ConfigDict(dict(seed=0, forget=forget))
  cfg = MODULES[method].default_config()
  cfg.update({**SMALL[method], **over})
  config[method] = cfg
  udata = data_lib.make_unlearn_data(ds, forget, seed=0)
  return base.context(method, config, model=model, original=original, data=udata,
                             key=jax.random.key(key), workdir="/nonexistent", log=lambda s: None,
                             forget_classes=(3,) if mode == "class" else (), num_classes=10)


def _max_diff(a, b):
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# ----------------------------------------------------------------------------------------------------
# Contract: every method runs through the registry and returns variables shaped like the original.

@pytest.mark.parametrize("method", sorted(MODULES))
def test_method_runs_and_keeps_structure(setup, method):
  assert base.get(method) is MODULES[method].run
  ctx = _ctx(setup, method)
  before = jax.tree.map(np.array, ctx.original)
  res = base.get(method)(ctx)
  chex.assert_trees_all_equal_shapes_and_dtypes(res.variables, ctx.original)
  chex.assert_tree_all_finite(res.variables)
  assert _max_diff(res.variables["params"], ctx.original["params"]) > 0        # it trained
  assert _max_diff(res.variables["batch_stats"], ctx.original["batch_stats"]) > 0  # BN in train mode
  # The donated train state never aliases the caller's original variables.
  chex.assert_trees_all_equal(ctx.original, before)
  json.dumps(res.info)


@pytest.mark.parametrize("method", ["bad_teacher", "amnesiac"])
def test_deterministic_given_key(setup, method):
  a = base.get(method)(_ctx(setup, method, key=5)).variables
  b = base.get(method)(_ctx(setup, method, key=5)).variables
  c = base.get(method)(_ctx(setup, method, key=6)).variables
  chex.assert_trees_all_equal(a, b)
  assert _max_diff(a["params"], c["params"]) > 0


def test_default_configs_are_the_reference_recipes():
  f, b, a, u = (m.default_config() for m in (finetune, bad_teacher, amnesiac, unsir))
  assert (f.optimizer, f.lr, f.momentum, f.weight_decay, f.epochs) == ("sgd", 0.02, 0.9, 5e-4, 5)
  assert (b.optimizer, b.lr, b.epochs, b.batch_size, b.retain_fraction, b.temperature) == (
      "adam", 1e-4, 1, 256, 0.3, 1.0)
  assert (a.optimizer, a.lr, a.epochs, a.batch_size) == ("adam", 1e-4, 3, 128)
  assert (u.noise_batch_size, u.noise_steps, u.noise_lr, u.noise_l2, u.num_noise_batches,
          u.samples_per_class, u.batch_size, u.lr, u.repair_batch_size, u.repair_lr) == (
              32, 25, 0.1, 0.1, 80, 500, 32, 1e-4, 128, 1e-4)


def _validate(ctx, name):
  """The method's config contract, as `config.validate` calls it before any work."""
  problem = base.Problem(info=ctx.data.info, forget_mode=ctx.forget_mode,
                         forget_classes=ctx.forget_classes)
  base.spec(name).validate_config(ctx.cfg, problem)


def test_config_errors(setup):
  with pytest.raises(ConfigError, match="finetune, bad_teacher, amnesiac"):
    _validate(_ctx(setup, "unsir", mode="random"), "unsir")
  with pytest.raises(ConfigError, match="batch_size"):
    _validate(_ctx(setup, "amnesiac", batch_size=0), "amnesiac")
  with pytest.raises(ConfigError, match="optimizer"):
    _validate(_ctx(setup, "finetune", optimizer="rmsprop"), "finetune")
  with pytest.raises(ConfigError, match="retain_fraction"):
    _validate(_ctx(setup, "bad_teacher", retain_fraction=1.5), "bad_teacher")
  with pytest.raises(ConfigError, match="noise_rows_per_copy"):
    _validate(_ctx(setup, "unsir", noise_rows_per_copy=33), "unsir")
  with pytest.raises(ConfigError, match="unknown field --config.finetune.epoch"):
    _ctx(setup, "finetune", epoch=3)


def test_unsir_noise_rows_per_copy(setup):
  # Default: every row of each of the 2 copies of the 32-row noise; the SSD code's quirk takes the
  # first C rows (C = image channels) of each copy.
  assert unsir.run(_ctx(setup, "unsir")).info["n_noise"] == 2 * 32
  assert unsir.run(_ctx(setup, "unsir", noise_rows_per_copy=1)).info["n_noise"] == 2 * 1


# ----------------------------------------------------------------------------------------------------
# Method-specific properties.

def test_bad_teacher_random_teacher_and_targets(setup):
  ds, model, original = setup
  t1 = bad_teacher.incompetent_teacher(model, jax.random.key(3), (8, 8, 1))
  t2 = bad_teacher.incompetent_teacher(model, jax.random.key(4), (8, 8, 1))
  chex.assert_trees_all_equal_shapes(t1, original)
  assert _max_diff(t1["params"], original["params"]) > 1e-3
  assert _max_diff(t1["params"], t2["params"]) > 1e-3
  x = ds.train.images[:8]
  p_rand = bad_teacher.teacher_targets(model, t1, x, INFO, 1.0)
  p_orig = bad_teacher.teacher_targets(model, original, x, INFO, 1.0)
  np.testing.assert_allclose(p_rand.sum(-1), 1.0, rtol=1e-5)
  assert np.abs(p_rand - p_orig).max() > 1e-3
  # Temperature flattens the targets.
  p_hot = bad_teacher.teacher_targets(model, original, x, INFO, 4.0)
  def ent(p):
    return -(p * np.log(p)).sum(-1)
  assert np.all(ent(p_hot) >= ent(p_orig) - 1e-5)
  # The retain subset: int(0.3 n) distinct indices.
  idx = bad_teacher.retain_subset(jax.random.key(0), 101, 0.3)
  assert len(idx) == 30 and len(np.unique(idx)) == 30 and idx.max() < 101


def test_amnesiac_relabelling_never_keeps_true_class():
  labels = np.repeat(np.arange(10, dtype=np.int32), 900)
  new = amnesiac.relabel_other_class(jax.random.key(0), labels, 10)
  assert new.dtype == np.int32 and new.min() >= 0 and new.max() <= 9
  assert not np.any(new == labels)
  # Uniform over the 9 other classes: each (true, new) pair ~ 100 times.
  counts = np.zeros((10, 10))
  np.add.at(counts, (labels, new), 1)
  off = counts[~np.eye(10, dtype=bool)]
  assert off.min() > 60 and off.max() < 140
  assert not np.array_equal(new, amnesiac.relabel_other_class(jax.random.key(1), labels, 10))


def test_unsir_noise_increases_forget_class_loss(setup):
  _, model, original = setup
  v = jax.tree.map(jnp.asarray, original)
  n0 = jax.random.normal(jax.random.key(0), (8, 8, 8, 1))
  noise, objs, ces = unsir.train_error_maximising_noise(model.apply, v, n0, jnp.int32(3), 0.1, 0.1,
                                                        steps=10)
  ces = np.asarray(ces)
  assert ces.shape == (11,) and ces[-1] > ces[0] + 0.05
  assert float(objs[-1]) < float(objs[0])
  # The objective's penalty term in closed form: -CE + l2 * mean_i ||n_i||^2.
  obj, ce = unsir.noise_objective(model.apply, v, n0, 3, 0.1, True)
  np.testing.assert_allclose(obj, -ce + 0.1 * np.mean(np.sum(np.square(n0), (1, 2, 3))), rtol=1e-5)
  # Noise stored as raw images normalises back to itself.
  raw = unsir.to_raw(noise, INFO.mean, INFO.std)
  np.testing.assert_allclose(data_lib.normalize(raw, INFO.mean, INFO.std), noise, atol=1e-5)


def test_unsir_run_uses_noise_and_retain_per_class(setup):
  res = unsir.run(_ctx(setup, "unsir"))
  (nz,) = res.info["noise"]
  assert nz["class"] == 3 and nz["ce_final"] > nz["ce_initial"]
  assert res.info["n_noise"] == 2 * 32
  # 9 retained classes, 6 samples each at most (the fixture's train split has 12 per class).
  assert res.info["n_retain_samples"] == 9 * 6
  split = data_lib.Split(np.zeros((7, 1, 1, 1), np.float32), np.array([0, 1, 0, 2, 0, 1, 0], np.int32))
  np.testing.assert_array_equal(unsir.retain_per_class(split, 2, False), [0, 1, 2, 3, 5])


# ----------------------------------------------------------------------------------------------------
# The shared loop.

def test_padded_batch_equals_short_batch(setup):
  """Masked padding = the short last batch PyTorch's DataLoader yields (loss, BN stats, update)."""
  _, model, original = setup
  rng = np.random.RandomState(2)
  x = rng.rand(5, 8, 8, 1).astype(np.float32)
  y = rng.randint(0, 10, 5).astype(np.int32)
  tx = _repair.make_tx("adam", 1e-3)
  mean, std = jnp.asarray(INFO.mean), jnp.asarray(INFO.std)

  def state():
    v = _repair.copy_variables(original)
    return _repair.supervised.TrainState.create(apply_fn=model.apply, params=v["params"], tx=tx,
                                                batch_stats=v["batch_stats"])

  (padded,) = list(_repair.padded_batches(x, y, 8, np.arange(5)))
  assert padded["weight"].tolist() == [1] * 5 + [0] * 3
  s1, l1 = _repair.repair_step(state(), padded, mean, std, loss_fn=_repair.CrossEntropy())
  short = {"image": x, "target": y, "weight": np.ones(5, np.float32)}
  s2, l2 = _repair.repair_step(state(), short, mean, std, loss_fn=_repair.CrossEntropy())
  np.testing.assert_allclose(l1, l2, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(s1.variables), jax.tree.leaves(s2.variables)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_sgd_is_pytorch_sgd_with_coupled_weight_decay():
  tx = _repair.make_tx("sgd", 0.1, 0.9, 0.01)
  assert _repair.make_tx("sgd", 0.1, 0.9, 0.01) is tx      # cached: one compiled step per setting
  p, g = jnp.array([1.0, -2.0]), jnp.array([0.5, 0.5])
  s = tx.init(p)
  buf = None
  for _ in range(3):                                       # torch.optim.SGD, written out
    d = g + 0.01 * p
    buf = d if buf is None else 0.9 * buf + d
    u, s = tx.update(g, s, p)
    np.testing.assert_allclose(p + u, p - 0.1 * buf, rtol=1e-6)
    p = p + u


def test_soft_target_kl():
  logits = jnp.array([[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]])
  q = jax.nn.softmax(logits)
  kl = _repair.SoftTargetKL(1.0, "batchmean")
  np.testing.assert_allclose(kl(logits, q), 0.0, atol=1e-6)
  p = jnp.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
  want = jnp.sum(jnp.where(p > 0, p * (jnp.log(jnp.where(p > 0, p, 1)) - jnp.log(q)), 0), -1)
  np.testing.assert_allclose(kl(logits, p), want, rtol=1e-5)
  np.testing.assert_allclose(_repair.SoftTargetKL(1.0, "mean")(logits, p), want / 3, rtol=1e-5)
  np.testing.assert_allclose(_repair.CrossEntropy()(logits, jnp.array([1, 2])),
                             optax.softmax_cross_entropy_with_integer_labels(logits, jnp.array([1, 2])))
