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
