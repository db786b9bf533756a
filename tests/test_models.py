import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jax_unlearn import models


@pytest.mark.parametrize("name,shape,kw,n_bn,feat_dim", [
    ("allcnn", (3, 8, 8, 1), {"width": 0.25}, 8, 48),
    ("allcnn", (3, 32, 32, 3), {"width": 1.0}, 8, 192),
    ("resnet18", (2, 32, 32, 3), {"width": 0.25}, 20, 128),
    ("vit", (2, 32, 32, 3), {"patch": 4, "dim": 32, "depth": 2, "heads": 2, "mlp_dim": 64}, 0, 32),
])
def test_classifier_shapes_and_bn_stats(name, shape, kw, n_bn, feat_dim):
  m = models.create_classifier(ml_collections.ConfigDict(dict(name=name, **kw)), 10)
  v = models.init_variables(m, jax.random.key(0), shape)
  x = jax.random.normal(jax.random.key(1), shape)
  (logits, feats), upd = m.apply(v, x, features=True, mutable=["bn_stats"])
  chex.assert_shape(logits, (shape[0], 10))
  chex.assert_shape(feats, (shape[0], feat_dim))
  stats = models.bn_input_stats(upd.get("bn_stats", {}))
  assert len(stats) == n_bn
  for mean, var, rm, rv in stats:
    chex.assert_equal_shape([mean, var, rm, rv])
    assert bool(jnp.all(var >= 0))
  if name == "allcnn":  # the first BN's input is the first conv's output: check the sown moments
    conv = jax.lax.conv_general_dilated(
        x, v["params"]["Conv_0"]["kernel"], (1, 1), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(stats[0][0], conv.mean((0, 1, 2)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats[0][1], conv.var((0, 1, 2)), rtol=1e-4, atol=1e-5)


def test_masked_batchnorm_equals_filtered_batch():
  m = models.AllCNN(num_classes=10, width=0.25)
  v = models.init_variables(m, jax.random.key(0), (1, 8, 8, 1))
  x = jax.random.normal(jax.random.key(1), (8, 8, 8, 1))
  keep = jnp.array([1, 0, 1, 1, 0, 0, 1, 1], bool)
  out_m, upd_m = m.apply(v, x, train=True, mask=keep, mutable=["batch_stats"])
  out_f, upd_f = m.apply(v, x[keep], train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(out_m[keep], out_f, rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(upd_m["batch_stats"], upd_f["batch_stats"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name,size,ch", [("dfq", 8, 1), ("dfq", 32, 3), ("zskt", 32, 3), ("zskt", 8, 1)])
def test_generators(name, size, ch):
  g = models.create_generator(name, size, ch)
  v = g.init(jax.random.key(0), jnp.zeros((2, g.nz)))
  z = models.sample_z(jax.random.key(1), 4, g.nz)
  x, upd = g.apply(v, z, train=True, mutable=["batch_stats"])
  chex.assert_shape(x, (4, size, size, ch))
  if name == "dfq":
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0  # sigmoid output
  # eval mode uses running statistics and leaves them unchanged
  x_eval = g.apply(v, z, train=False)
  chex.assert_shape(x_eval, (4, size, size, ch))
  assert not np.allclose(np.asarray(upd["batch_stats"]["BatchNorm_0"]["mean"]),
                         np.asarray(v["batch_stats"]["BatchNorm_0"]["mean"]))


def test_unknown_model_is_a_config_error():
  from jax_unlearn.errors import ConfigError
  with pytest.raises(ConfigError, match="--config.model.name"):
    models.create_classifier(ml_collections.ConfigDict(dict(name="vgg")), 10)


@pytest.mark.parametrize("name,conv_bias,width", [("dfq", False, 4), ("zskt", True, 2)])
def test_generator_parameter_tree_is_stable(name, conv_bias, width):
  """Layer names and shapes are part of saved checkpoints: pin them (both generators share one body)."""
  g = models.create_generator(name, 8, 1, nz=16, ngf=4)
  shapes = jax.tree.map(jnp.shape, jax.eval_shape(g.init, jax.random.key(0), jnp.zeros((2, 16))))
  p = shapes["params"]
  assert p["Dense_0"] == {"kernel": (16, width * 4 * 2 * 2), "bias": (width * 4 * 2 * 2,)}
  conv = {"Conv_0": (3, 3, width * 4, 8), "Conv_1": (3, 3, 8, 4)}
  for k, shape in conv.items():
    assert p[k]["kernel"] == shape and ("bias" in p[k]) == conv_bias
  assert p["Conv_2"] == {"kernel": (3, 3, 4, 1), "bias": (1,)}
  n_bn = 4 if name == "zskt" else 3
  assert sorted(shapes["batch_stats"]) == [f"BatchNorm_{i}" for i in range(n_bn)]


def test_batch_norm_train_equals_flax_batchnorm():
  """`layers.batch_norm_train` (GEMV statistics, closed-form VJP) against `flax.linen.BatchNorm`:
  output, statistics, and the gradients of a loss that reads y, mean and var."""
  import flax.linen as nn

  from jax_unlearn.models import layers
  x = jax.random.normal(jax.random.key(0), (6, 5, 7, 12)) * 2.0 + 1.0
  scale = jax.random.normal(jax.random.key(1), (12,))
  bias = jax.random.normal(jax.random.key(2), (12,))
  w = jax.random.normal(jax.random.key(3), x.shape)
  u = jax.random.normal(jax.random.key(4), (2, 12))

  def flax_bn(x, scale, bias):
    y, upd = nn.BatchNorm(use_running_average=False, momentum=0.0, epsilon=1e-5).apply(
        {"params": {"scale": scale, "bias": bias},
         "batch_stats": {"mean": jnp.zeros(12), "var": jnp.ones(12)}}, x, mutable=["batch_stats"])
    return y, upd["batch_stats"]["mean"], upd["batch_stats"]["var"]  # momentum 0: the batch stats

  def loss(bn):
    def f(x, scale, bias):
      y, mean, var = bn(x, scale, bias)
      return jnp.sum(y * w) + jnp.sum(y ** 2) + mean @ u[0] + var @ u[1]
    return f

  mine = layers.batch_norm_train(x, scale, bias, 1e-5)
  ref = flax_bn(x, scale, bias)
  chex.assert_trees_all_close(mine, ref, rtol=1e-5, atol=1e-5)
  g_mine = jax.grad(loss(lambda *a: layers.batch_norm_train(*a, 1e-5)), (0, 1, 2))(x, scale, bias)
  g_ref = jax.grad(loss(flax_bn), (0, 1, 2))(x, scale, bias)
  chex.assert_trees_all_close(g_mine, g_ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(layers.column_sums(x.reshape(-1, 12)), x.sum((0, 1, 2)), rtol=1e-5, atol=1e-5)


# ResNet18's variant (76 s) is slow-only: the same layers are covered at AllCNN size.
@pytest.mark.parametrize("name", ["allcnn", pytest.param("resnet18", marks=pytest.mark.slow)])
def test_fast_cpu_kernels_model_matches_flax_batchnorm(name):
  """`config.model.fast_cpu_kernels`: same variable tree, same logits, running statistics and parameter
  gradients as the Flax BN model (to float rounding); eval mode and masked calls are unchanged."""
  cfg = dict(name=name, width=0.25)
  plain = models.create_classifier(ml_collections.ConfigDict(cfg), 10)
  dot = models.create_classifier(ml_collections.ConfigDict(dict(cfg, fast_cpu_kernels=True)), 10)
  v = models.init_variables(plain, jax.random.key(0), (1, 16, 16, 3))
  chex.assert_trees_all_equal_shapes(v, models.init_variables(dot, jax.random.key(0), (1, 16, 16, 3)))
  x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))

  def step(m):
    def loss(p):
      logits, upd = m.apply({"params": p, "batch_stats": v["batch_stats"]}, x, train=True,
                            mutable=["batch_stats"])
      return jnp.sum(logits ** 2), (logits, upd["batch_stats"])
    return jax.grad(loss, has_aux=True)(v["params"])

  (g_p, (l_p, s_p)), (g_d, (l_d, s_d)) = step(plain), step(dot)
  chex.assert_trees_all_close(l_d, l_p, rtol=1e-4, atol=1e-4)
  chex.assert_trees_all_close(s_d, s_p, rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(g_d, g_p, rtol=1e-3, atol=1e-4)
  np.testing.assert_array_equal(dot.apply(v, x), plain.apply(v, x))  # eval mode: Flax's path
  keep = jnp.array([1, 0, 1, 1], bool)
  np.testing.assert_array_equal(dot.apply(v, x, train=True, mask=keep, mutable=["batch_stats"])[0],
                                plain.apply(v, x, train=True, mask=keep, mutable=["batch_stats"])[0])


@pytest.mark.parametrize("h,k,s,pad", [
    (8, 3, 2, ((1, 1), (1, 1))),   # AllCNN's stride-2 layers (even size: the interleave path)
    (9, 3, 2, ((1, 1), (1, 1))),   # odd size: phases of unequal length
    (8, 1, 2, ((0, 0), (0, 0))),   # ResNet shortcut: some phases have no taps (zero gradient)
    (7, 3, 3, ((1, 2), (0, 1))),   # stride 3, asymmetric padding
    (8, 5, 2, ((2, 2), (2, 2))),
])
def test_phase_grad_conv_equals_lax_conv_gradients(h, k, s, pad):
  from jax_unlearn.models import conv
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, h, h + 1, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, 3, 4)), jnp.float32)
  lax_conv = lambda x, w: jax.lax.conv_general_dilated(  # noqa: E731
      x, w, (s, s), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  y = lax_conv(x, w)
  np.testing.assert_array_equal(conv.phase_grad_conv(x, w, (s, s), pad), y)  # forward is lax's
  dy = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
  want = jax.vjp(lax_conv, x, w)[1](dy)
  got = jax.vjp(lambda x, w: conv.phase_grad_conv(x, w, (s, s), pad), x, w)[1](dy)
  chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)
  chex.assert_shape(got[0], x.shape)


def test_loop_safe_interceptor_replaces_the_phase_grad_conv():
  """A `fast_cpu_kernels` model under `loop_safe_convs()` (the scanned engines) gets the loop-safe conv
  in every layer, not the phase-gradient one."""
  from jax_unlearn.models import conv
  m = models.AllCNN(num_classes=10, width=0.25, fast_cpu_kernels=True)
  v = models.init_variables(m, jax.random.key(0), (1, 8, 8, 1))
  seen = []

  import flax.linen as nn

  def spy(next_fun, args, kwargs, context):
    if context.method_name == "__call__" and isinstance(context.module, nn.Conv):
      seen.append(context.module.conv_general_dilated)
    return next_fun(*args, **kwargs)
  with conv.loop_safe_convs(), nn.intercept_methods(spy):
    m.apply(v, jnp.ones((2, 8, 8, 1)), train=True, mutable=["batch_stats"])
  assert len(seen) == 8 and all(c is conv.loop_safe_conv_general_dilated for c in seen)


@pytest.mark.parametrize("enabled", [True, False])
def test_convs_as_gemms_switch(enabled):
  """`conv.convs_as_gemms(flag)` installs the GEMM conv in every layer when the flag is set and leaves
  the model's own conv otherwise; the logits agree to float32 rounding either way."""
  import flax.linen as nn

  from jax_unlearn.models import conv
  m = models.AllCNN(num_classes=10, width=0.25)
  v = models.init_variables(m, jax.random.key(0), (1, 8, 8, 1))
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
  seen = []

  def spy(next_fun, args, kwargs, context):
    if context.method_name == "__call__" and isinstance(context.module, nn.Conv):
      seen.append(context.module.conv_general_dilated)
    return next_fun(*args, **kwargs)
  with conv.convs_as_gemms(enabled), nn.intercept_methods(spy):
    got = m.apply(v, x, train=False)
  assert len(seen) == 8
  assert all((c is conv.matmul_conv_general_dilated) == enabled for c in seen)
  chex.assert_trees_all_close(got, m.apply(v, x, train=False), rtol=1e-4, atol=1e-5)
