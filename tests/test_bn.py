"""`layers.BatchNorm.running_var`: PyTorch's running-variance update ('unbiased') and Flax's ('biased').

PyTorch (`nn.BatchNorm2d`, momentum 0.1) normalises a training batch with the biased variance and
updates running_var <- 0.9 running_var + 0.1 var_unbiased; Flax (momentum 0.9) updates with the
biased one. The tests compute PyTorch's rule in float64 numpy (`np.var(ddof=1)`) and check it on every
code path (Flax's call, masked rows, the `dot_stats` GEMV path), plus the closed form n/(n-1).
"""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jax_unlearn import models
from jax_unlearn.errors import ConfigError
from jax_unlearn.models import layers

C = 5
M = 0.9  # Flax momentum; PyTorch's is 1 - M
KEEP = np.array([1, 0, 1, 1, 0, 0], bool)
# path: (BatchNorm kwargs, row mask). Shapes are small so that n/(n-1) is far from 1 (36/35, 18/17).
PATHS = {"plain": ({}, None), "masked": ({}, KEEP), "dot_stats": ({"dot_stats": True}, None)}


def _x(shape=(6, 2, 3, C)):
  rng = np.random.default_rng(0)
  c = shape[-1]
  return jnp.asarray(rng.normal(size=shape) * rng.uniform(0.5, 2.0, c) + rng.normal(size=c), jnp.float32)


def _variables():
  rng = np.random.default_rng(1)
  f = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
  return {"params": {"scale": f(rng.uniform(0.5, 1.5, C)), "bias": f(rng.normal(size=C))},
          "batch_stats": {"mean": f(rng.normal(size=C)), "var": f(rng.uniform(0.5, 2.0, C))}}


def _train(bn, x, keep=None):
  """One train-mode call (jitted, as in a train step): (y, new batch_stats)."""
  mask = None if keep is None else jnp.asarray(keep)
  y, upd = jax.jit(lambda v, x, mask: bn.apply(v, x, use_running_average=False, mask=mask,
                                                 mutable=["batch_stats"]))(_variables(), x, mask)
  return y, upd["batch_stats"]


def _rows(x, keep):
  """The values per channel that enter the statistics, float64: [n, C]."""
  x = np.asarray(x, np.float64)
  return (x if keep is None else x[keep]).reshape(-1, C)


@pytest.mark.parametrize("path", list(PATHS))
def test_unbiased_running_var_is_pytorchs_update(path):
  kw, keep = PATHS[path]
  x = _x()
  y, stats = _train(layers.BatchNorm(**kw), x, keep)
  y_b, stats_b = _train(layers.BatchNorm(running_var="biased", **kw), x, keep)
  rows = _rows(x, keep)
  old = {k: np.asarray(v, np.float64) for k, v in _variables()["batch_stats"].items()}
  # PyTorch's train step, by hand: running_var = (1 - 0.1) running_var + 0.1 var(unbiased=True).
  np.testing.assert_allclose(stats["var"], M * old["var"] + (1 - M) * rows.var(0, ddof=1), rtol=2e-6)
  np.testing.assert_allclose(stats["mean"], M * old["mean"] + (1 - M) * rows.mean(0), rtol=2e-6, atol=1e-7)
  # Closed form: over m·v the increment is n/(n-1) times Flax's, n = kept rows·H·W (18 masked, 36
  # plain: telling the two apart is the point of the masked case).
  n = rows.shape[0]
  ratio = (np.asarray(stats["var"], np.float64) - M * old["var"]) / (
      np.asarray(stats_b["var"], np.float64) - M * old["var"])
  np.testing.assert_allclose(ratio, n / (n - 1), rtol=1e-5)
  # The switch moves the running variance only: outputs and running mean are bit-for-bit the same.
  np.testing.assert_array_equal(y, y_b)
  np.testing.assert_array_equal(stats["mean"], stats_b["mean"])


def test_axis_name_counts_every_shard():
  """With `axis_name` (pmap/shard_map/vmap style), n is the global count: two shards of 3 rows update
  the running var as one batch of 6 rows does."""
  x = _x()
  _, whole = _train(layers.BatchNorm(), x)
  _, shards = jax.vmap(lambda x: layers.BatchNorm(axis_name="d").apply(
      _variables(), x, use_running_average=False, mutable=["batch_stats"]), axis_name="d")(
          x.reshape(2, 3, *x.shape[1:]))
  chex.assert_trees_all_close(jax.tree.map(lambda a: a[0], shards["batch_stats"]), whole, rtol=1e-6)


@pytest.mark.parametrize("path", ["plain", "masked"])
def test_biased_is_flax_batchnorm_bit_for_bit(path):
  """'biased' is the old behaviour: exactly `flax.linen.BatchNorm` (the mask as Flax takes it)."""
  _, keep = PATHS[path]
  x = _x()
  ours = _train(layers.BatchNorm(running_var="biased"), x, keep)
  flax_bn = nn.BatchNorm(momentum=M, epsilon=1e-5)

  def ref(v, x, keep):  # the [N] mask broadcast inside the jit, as the layer does (same fusions)
    mask = None if keep is None else jnp.broadcast_to(keep[:, None, None, None], x.shape)
    return flax_bn.apply(v, x, use_running_average=False, mask=mask, mutable=["batch_stats"])
  ref_y, ref = jax.jit(ref)(_variables(), x, None if keep is None else jnp.asarray(keep))
  chex.assert_trees_all_equal(ours, (ref_y, ref["batch_stats"]))


def test_biased_dot_stats_is_the_old_rule():
  """`dot_stats` + 'biased': m v + (1 - m) var of `batch_norm_train`, bit for bit (the rule before the
  switch existed), and Flax's values to float rounding."""
  x, v = _x(), _variables()
  y, stats = _train(layers.BatchNorm(dot_stats=True, running_var="biased"), x)
  want_y, mean, var = jax.jit(layers.batch_norm_train, static_argnums=3)(
      x, v["params"]["scale"], v["params"]["bias"], 1e-5)
  np.testing.assert_array_equal(y, want_y)
  np.testing.assert_array_equal(stats["var"], M * v["batch_stats"]["var"] + (1.0 - M) * var)
  _, flax_stats = _train(layers.BatchNorm(running_var="biased"), x)
  chex.assert_trees_all_close(stats, flax_stats, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("path", list(PATHS))
def test_one_value_per_channel_keeps_the_biased_value(path):
  """n = 1 (PyTorch raises in train mode): the running variance stays finite, m v + (1 - m)·0."""
  kw, keep = PATHS[path]
  x = _x((6, 1, 1, C))
  keep = None if keep is None else np.eye(6, dtype=bool)[2]  # one kept row of a 1x1 map: n = 1
  x = x[:1] if keep is None else x
  _, stats = _train(layers.BatchNorm(**kw), x, keep)
  np.testing.assert_allclose(stats["var"], M * _variables()["batch_stats"]["var"], rtol=1e-6)
  assert layers.bessel_correction(1) == 1.0 and layers.bessel_correction(4) == 4 / 3
  np.testing.assert_allclose(layers.bessel_correction(jnp.array([0.0, 1.0, 2.0, 5.0])),
                             [1.0, 1.0, 2.0, 1.25])


def test_eval_mode_and_bn_stats_do_not_depend_on_the_rule():
  """Eval mode reads the stored running statistics, and the `bn_stats` input variance (DFQ's L_BN,
  compared with the running var as in DeepInversion's hook: `var(1, unbiased=False)`) is biased."""
  x, v = _x(), _variables()
  outs = []
  for mode in layers.RUNNING_VAR_MODES:
    y, st = layers.BatchNorm(running_var=mode).apply(v, x, use_running_average=True, mutable=["bn_stats"])
    outs.append(y)
    mean, var, rm, rv = models.bn_input_stats(st["bn_stats"])[0]
    np.testing.assert_allclose(var, _rows(x, None).var(0), rtol=1e-5)
    np.testing.assert_array_equal(rv, v["batch_stats"]["var"])
  np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.parametrize("mode", layers.RUNNING_VAR_MODES)
@pytest.mark.parametrize("name", ["allcnn", "resnet18"])
def test_create_classifier_threads_bn_running_var_to_every_bn(name, mode):
  """`config.model.bn_running_var` reaches all 8 (AllCNN) / 20 (ResNet18) BatchNorms (traced only)."""
  net = models.create_classifier(ml_collections.ConfigDict(dict(name=name, width=0.125,
                                                                bn_running_var=mode)), 10)
  seen = {}

  def spy(next_fun, args, kwargs, context):  # keyed by module path: super().__call__ is seen too
    if context.method_name == "__call__" and isinstance(context.module, layers.BatchNorm):
      seen[context.module.path] = context.module.running_var
    return next_fun(*args, **kwargs)
  v = jax.eval_shape(lambda: models.init_variables(net, jax.random.key(0), (2, 8, 8, 3)))
  with nn.intercept_methods(spy):
    jax.eval_shape(lambda v: net.apply(v, jnp.ones((2, 8, 8, 3)), train=True, mutable=["batch_stats"]), v)
  assert list(seen.values()) == [mode] * (8 if name == "allcnn" else 20)


@pytest.mark.parametrize("fast", [False, True])
def test_allcnn_running_var_increments_are_n_over_n_minus_1(fast):
  """One AllCNN train step (8x8 input, N = 2): each layer's running-var increment is n_l/(n_l - 1)
  times Flax's, n_l = N·H_l·W_l = 128, 32, 8 at the 8x8, 4x4, 2x2 stages; logits and running means
  are bit-for-bit the same in both modes."""
  x = _x((2, 8, 8, 3))
  nets = {mode: models.AllCNN(10, 0.25, fast_cpu_kernels=fast, bn_running_var=mode)
          for mode in layers.RUNNING_VAR_MODES}
  v = models.init_variables(nets["biased"], jax.random.key(0), x.shape)
  logits, upd = {}, {}
  for mode, net in nets.items():
    logits[mode], u = net.apply(v, x, train=True, mutable=["batch_stats"])
    upd[mode] = u["batch_stats"]
  np.testing.assert_array_equal(logits["biased"], logits["unbiased"])
  for layer, n in zip(sorted(upd["biased"]), (128, 128, 32, 32, 32, 8, 8, 8)):
    unb, bia = upd["unbiased"][layer], upd["biased"][layer]
    np.testing.assert_array_equal(unb["mean"], bia["mean"])
    # The running var starts at 1, so an increment is (1 - m) σ²_B, times n/(n-1) when unbiased.
    # Channels with a tiny σ²_B (dead ReLU inputs) carry no signal: leave them out.
    du, db = np.asarray(unb["var"], np.float64) - M, np.asarray(bia["var"], np.float64) - M
    np.testing.assert_allclose(du[db > 1e-3] / db[db > 1e-3], n / (n - 1), rtol=1e-4, err_msg=layer)


def test_bad_bn_running_var_is_a_config_error():
  from jax_unlearn.config import base_config
  assert base_config().model.bn_running_var == "unbiased"
  with pytest.raises(ConfigError, match="--config.model.bn_running_var=unbiased"):
    models.create_classifier(ml_collections.ConfigDict(dict(name="allcnn", bn_running_var="torch")), 10)
  with pytest.raises(ValueError, match="running_var"):
    layers.BatchNorm(running_var="torch").init(jax.random.key(0), jnp.ones((2, C)), use_running_average=True)
