"""models.adapters: plain apply_fns, stateful apply_fns, linen and NNX modules as one `Model`.

Equivalences (our AllCNN through the adapter == the direct call, bit for bit; NNX under jit/grad/vmap/
scan == eager; a mask == dropping the rows), hand-computed BN input moments for foreign BatchNorms,
and the capability errors that replace silent zeros.
"""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jax_unlearn.errors import ConfigError
from jax_unlearn.methods.distill import bn_statistics_loss
from jax_unlearn.models import AllCNN, adapters, bn_input_stats
from jax_unlearn.models.adapters import as_model, require

X = jax.random.normal(jax.random.key(0), (6, 8, 8, 1))
Y = jnp.arange(6) % 3
MASK = jnp.array([True, False, True, True, False, True])
# Plain normal initialisers: flax's default lecun_normal (a truncated normal) costs seconds of
# compilation per layer shape on a loaded 2-core CPU, and the tests need no particular init.
INIT = nn.initializers.normal(0.3)


def _moments(h):
  h = np.float64(h)
  return h.mean((0, 1, 2)), h.var((0, 1, 2))


# ----------------------------------------------------------------------------------------------------
# Models from "other people".

class LinenCNN(nn.Module):
  """flax's own nn.BatchNorm, `train` argument; sows its BN inputs so the test can check them."""
  @nn.compact
  def __call__(self, x, train: bool = False):
    for i, ch in enumerate((4, 5)):
      x = nn.Conv(ch, (3, 3), strides=(1 + i, 1 + i), kernel_init=INIT)(x)
      self.sow("intermediates", "bn_in", x)
      x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    return nn.Dense(3, kernel_init=INIT)(x.mean((1, 2)))


class LinenMLP(nn.Module):
  """No `train` argument, no state."""
  @nn.compact
  def __call__(self, x):
    return nn.Dense(3, kernel_init=INIT)(nn.relu(nn.Dense(7, kernel_init=INIT)(x.reshape(x.shape[0], -1))))


class NNXCNN(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.c1 = nnx.Conv(1, 4, (3, 3), kernel_init=INIT, rngs=rngs)
    self.b1 = nnx.BatchNorm(4, momentum=0.9, rngs=rngs)
    self.c2 = nnx.Conv(4, 5, (3, 3), strides=2, kernel_init=INIT, rngs=rngs)
    self.b2 = nnx.BatchNorm(5, momentum=0.9, rngs=rngs)
    self.head = nnx.Linear(5, 3, kernel_init=INIT, rngs=rngs)

  def features(self, x):
    h = nnx.relu(self.b2(self.c2(nnx.relu(self.b1(self.c1(x))))))
    f = h.mean((1, 2))
    return self.head(f), f

  def __call__(self, x):
    return self.features(x)[0]


def _mlp_apply(params, x):
  h = jnp.tanh(x.reshape(x.shape[0], -1) @ params["w1"] + params["b1"])
  return h @ params["w2"]


def _mlp_params():
  k1, k2 = jax.random.split(jax.random.key(3))
  return {"w1": 0.1 * jax.random.normal(k1, (64, 7)), "b1": jnp.zeros(7),
          "w2": 0.1 * jax.random.normal(k2, (7, 3))}


def _numpy_values(shapes, seed=0):
  """Concrete values for an abstract variable tree without compiling an initialiser (each init
  compile costs seconds on a loaded CPU): weights N(0, 0.3²), running means N(0, 0.1²), running
  variances 1 + |N(0, 0.1²)|."""
  rng = np.random.default_rng(seed)

  def value(path, s):
    name = str(getattr(path[-1], "key", getattr(path[-1], "name", "")))
    if name == "value":  # an NNX Variable's array: the name is the key before it
      name = str(getattr(path[-2], "key", ""))
    z = rng.normal(size=s.shape).astype(s.dtype)
    return jnp.asarray({"mean": 0.1 * z, "var": 1 + 0.1 * np.abs(z)}.get(name, 0.3 * z))
  return jax.tree_util.tree_map_with_path(value, shapes)


@pytest.fixture(scope="module")
def linen_cnn():
  module = LinenCNN()
  v = _numpy_values(jax.eval_shape(module.init, jax.random.key(1), X))
  return module, {"params": v["params"], "batch_stats": v["batch_stats"]}


@pytest.fixture(scope="module")
def nnx_cnn():
  """(graphdef, params, rest) of one NNXCNN; `_fresh` gives each test its own module."""
  graphdef, params, rest = nnx.split(nnx.eval_shape(lambda: NNXCNN(nnx.Rngs(0))), nnx.Param, ...)
  return graphdef, _numpy_values(params), _numpy_values(rest, 1)


def _fresh(split):
  return nnx.merge(*jax.tree.map(lambda a: a, split))


# ----------------------------------------------------------------------------------------------------

def test_our_allcnn_passes_through_bit_identically():
  """Our classifiers go through the very same `module.apply` call: the traced programs of eval logits
  and features, the masked train-mode loss, its gradient and new batch_stats, and the DFQ L_BN and
  its gradient are identical jaxprs, so every number is bit-identical (and no compile is needed)."""
  module = AllCNN(num_classes=3, width=0.05)
  v = jax.eval_shape(module.init, jax.random.key(1), X)
  model, mv = as_model(module, v)
  assert (model.kind, model.supports_train, model.supports_mask, model.supports_features,
          model.supports_bn_stats) == ("linen", True, True, True, True)
  assert mv is v and model == as_model(module, v)[0] and hash(model) == hash(as_model(module, v)[0])

  def everything(apply, v):
    def train_loss(q):
      logits, upd = apply({"params": q, "batch_stats": v["batch_stats"]}, X, train=True, mask=MASK,
                          mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, Y).mean(), upd

    def bn_loss(q):
      _, upd = apply({**v, "params": q}, X, mutable=["bn_stats"])
      return bn_statistics_loss(bn_input_stats(upd["bn_stats"]))

    return (apply(v, X, features=True), jax.value_and_grad(train_loss, has_aux=True)(v["params"]),
            jax.value_and_grad(bn_loss)(v["params"]))

  direct = str(jax.make_jaxpr(lambda v: everything(module.apply, v))(v))
  adapted = str(jax.make_jaxpr(lambda v: everything(model.apply, v))(v))
  assert len(direct) > 10_000 and adapted == direct


def test_plain_apply_fn_and_capability_errors():
  params = _mlp_params()
  model, v = as_model(_mlp_apply, params)
  assert v == {"params": params} and model.kind == "apply_fn"
  assert not (model.supports_train or model.supports_features or model.supports_bn_stats)
  chex.assert_trees_all_equal(model.apply(v, X), _mlp_apply(params, X))
  # No state: train mode is eval mode, a mask is vacuous, batch_stats updates are empty.
  out, upd = model.apply(v, X, train=True, mask=MASK, mutable=["batch_stats"])
  chex.assert_trees_all_equal(out, _mlp_apply(params, X))
  assert upd == {"batch_stats": {}}
  g = jax.jit(jax.grad(lambda p: model.apply({"params": p}, X).sum()))(params)
  chex.assert_trees_all_close(g, jax.grad(lambda p: _mlp_apply(p, X).sum())(params), atol=1e-6)
  with pytest.raises(ConfigError, match=r"set --config.ispf.bn=0 or use flax nn.BatchNorm"):
    require(model, "bn_stats", "the DFQ BN-statistics loss (config.ispf.bn weight 1.0)",
            "set --config.ispf.bn=0")
  with pytest.raises(ConfigError, match="BatchNorm input statistics"):
    model.apply(v, X, mutable=["bn_stats"])
  with pytest.raises(ConfigError, match="features_fn="):
    model.apply(v, X, features=True)
  with pytest.raises(ConfigError, match="state="):
    as_model(lambda p, s, x, train: (x, s), params)
  # With features_fn it has features.
  fmodel, _ = as_model(_mlp_apply, params, features_fn=lambda p, x: (_mlp_apply(p, x), x.reshape(6, -1)))
  assert fmodel.supports_features and fmodel.apply(v, X, features=True)[1].shape == (6, 64)


def test_stateful_apply_fn():
  def apply_fn(params, state, x, train):
    h = x.reshape(x.shape[0], -1) @ params["w"]
    mean = h.mean(0) if train else state["mean"]
    new = {"mean": 0.9 * state["mean"] + 0.1 * h.mean(0)} if train else state
    return h - mean, new

  params, state = {"w": jnp.ones((64, 3))}, {"mean": jnp.zeros(3)}
  model, v = as_model(apply_fn, params, state=state)
  assert model.supports_train and not model.supports_mask and v["batch_stats"] is state
  out, upd = model.apply(v, X, train=True, mutable=["batch_stats"])
  want_out, want_state = apply_fn(params, state, X, True)
  chex.assert_trees_all_equal((out, upd["batch_stats"]), (want_out, want_state))
  chex.assert_trees_all_equal(model.apply(v, X), apply_fn(params, state, X, False)[0])
  with pytest.raises(ConfigError, match="row masks"):
    model.apply(v, X, train=True, mask=MASK, mutable=["batch_stats"])


def test_linen_mlp_without_train_argument():
  module = LinenMLP()
  v = _numpy_values(jax.eval_shape(module.init, jax.random.key(2), X))
  model, mv = as_model(module, v)
  assert not model.supports_train and not model.supports_bn_stats
  chex.assert_trees_all_equal(model.apply(mv, X, train=True), module.apply(v, X))
  with pytest.raises(ConfigError, match="BatchNorm input statistics"):
    model.apply(mv, X, mutable=["bn_stats"])
  # features_fn runs as `module.apply(..., method=features_fn)` on the bound module.
  fmodel, _ = as_model(module, v, features_fn=lambda m, x: (m(x), x.reshape(x.shape[0], -1)))
  logits, feats = fmodel.apply(mv, X, features=True)
  chex.assert_trees_all_equal((logits, feats), (module.apply(v, X), X.reshape(6, -1)))
  # An empty 'batch_stats' is no state: train mode is eval mode, as for a BN-free model.
  chex.assert_trees_all_equal(model.apply({**mv, "batch_stats": {}}, X, train=True), module.apply(v, X))
  # A linen model with state but no way to switch it to train mode refuses train=True.
  with pytest.raises(ConfigError, match="train"):
    model.apply({**mv, "batch_stats": {"mean": np.zeros(3, np.float32)}}, X, train=True)


@pytest.mark.parametrize("train", [False, True])
def test_linen_flax_batchnorm_stats_equal_hand_moments(train, linen_cnn):
  module, v = linen_cnn
  model, _ = as_model(module, v)
  mutable = ["bn_stats", "intermediates"] + (["batch_stats"] if train else [])
  _, upd = model.apply(v, X, train=train, mutable=mutable)
  stats = bn_input_stats(upd["bn_stats"])
  inputs = upd["intermediates"]["bn_in"]
  assert len(stats) == 2 and len(inputs) == 2
  running = (upd if train else v)["batch_stats"]
  for (mean, var, rm, rv), h, name in zip(stats, inputs, ("BatchNorm_0", "BatchNorm_1")):
    want_m, want_v = _moments(h)
    np.testing.assert_allclose(mean, want_m, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var, want_v, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_equal((rm, rv), (running[name]["mean"], running[name]["var"]))

  def bn_loss(x):
    return bn_statistics_loss(bn_input_stats(model.apply(v, x, mutable=["bn_stats"])[1]["bn_stats"]))
  loss, gx = jax.jit(jax.value_and_grad(bn_loss))(X)
  assert loss > 0 and np.all(np.isfinite(gx)) and np.abs(gx).max() > 0


def test_nnx_cnn_stats_transforms_and_features(nnx_cnn):
  module = _fresh(nnx_cnn)
  model, v = as_model(module, features_fn=lambda m, x: m.features(x))
  assert model.kind == "nnx" and model.supports_bn_stats and model.supports_features
  assert set(v) == {"params", "batch_stats"} and hash(model) == hash(model)
  # Eval and train logits and the updated running statistics equal the module's own calls.
  module.eval()
  chex.assert_trees_all_close(model.apply(v, X), module(X), rtol=1e-6)
  chex.assert_trees_all_close(model.apply(v, X, features=True), module.features(X), rtol=1e-6)
  out, upd = model.apply(v, X, train=True, mutable=["batch_stats", "bn_stats"])
  h1 = module.c1(X)  # BN inputs by hand, from the original module in train mode
  module.train()
  h2 = module.c2(nnx.relu(module.b1(h1)))
  chex.assert_trees_all_close(out, module.head(nnx.relu(module.b2(h2)).mean((1, 2))), rtol=1e-6)
  chex.assert_trees_all_close(upd["batch_stats"], nnx.split(module, nnx.Param, ...)[2], rtol=1e-6)
  stats = upd["bn_stats"]
  assert len(stats) == 2
  for (mean, var, rm, rv), h, bn in zip(stats, (h1, h2), (module.b1, module.b2)):
    want_m, want_v = _moments(h)
    np.testing.assert_allclose(mean, want_m, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var, want_v, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close((rm, rv), (bn.mean[...], bn.var[...]), rtol=1e-6)
  # The adapter's variables do not alias the module's Variables: training the module did not move them.
  before = nnx_cnn[2]["b1"]["mean"][...]
  assert np.array_equal(v["batch_stats"]["b1"]["mean"][...], before)
  assert not np.array_equal(module.b1.mean[...], before)

  def bn_loss(x):
    return bn_statistics_loss(model.apply(v, x, mutable=["bn_stats"])[1]["bn_stats"])
  loss, gx = jax.jit(jax.value_and_grad(bn_loss))(X)
  assert loss > 0 and np.abs(gx).max() > 0

  # jit(grad) over params runs and reaches every layer; vmap over examples (eval) == the batched call.
  def ce(p, bs, x):
    logits, u = model.apply({"params": p, "batch_stats": bs}, x, train=True, mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, Y).mean(), u["batch_stats"]
  g_jit = jax.jit(jax.grad(ce, has_aux=True))(v["params"], v["batch_stats"], X)
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(g_jit[0]))
  chex.assert_trees_all_close(g_jit[1], upd["batch_stats"], rtol=1e-5, atol=1e-7)
  per_row = jax.jit(jax.vmap(lambda xi: model.apply(v, xi[None])[0]))(X)
  chex.assert_trees_all_close(per_row, model.apply(v, X), rtol=1e-5, atol=1e-6)

  # lax.scan of SGD steps (params and running statistics carried) == a Python loop.
  def step(carry, _):
    p, bs = carry
    g, bs = jax.grad(ce, has_aux=True)(p, bs, X)
    return (jax.tree.map(lambda a, b: a - 0.1 * b, p, g), bs), None
  (p_scan, bs_scan), _ = jax.jit(lambda c: jax.lax.scan(step, c, None, length=3))(
      (v["params"], v["batch_stats"]))
  carry, jstep = (v["params"], v["batch_stats"]), jax.jit(step)
  for _ in range(3):
    carry, _ = jstep(carry, None)
  chex.assert_trees_all_close((p_scan, bs_scan), carry, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["linen", "nnx"])
def test_row_mask_equals_dropping_the_rows(kind, linen_cnn, nnx_cnn):
  """Injected into foreign BatchNorms: train-mode logits of kept rows and the running-average update
  are those of the batch without the masked rows."""
  if kind == "linen":
    model, v = as_model(*linen_cnn)
  else:
    model, v = as_model(_fresh(nnx_cnn))
  out, upd = model.apply(v, X, train=True, mask=MASK, mutable=["batch_stats", "bn_stats"])
  kept, kupd = model.apply(v, X[MASK], train=True, mutable=["batch_stats", "bn_stats"])
  chex.assert_trees_all_close(out[MASK], kept, rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(upd["batch_stats"], kupd["batch_stats"], rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(bn_input_stats(upd["bn_stats"]), bn_input_stats(kupd["bn_stats"]),
                              rtol=1e-4, atol=1e-6)
  unmasked, _ = model.apply(v, X, train=True, mutable=["batch_stats"])
  assert not np.allclose(unmasked[MASK], kept, atol=1e-4)  # the mask did something


def test_bn_free_modules_raise_instead_of_a_silent_zero():
  class NNXMLP(nnx.Module):
    def __init__(self, rngs):
      self.l = nnx.Linear(64, 3, kernel_init=INIT, rngs=rngs)

    def __call__(self, x):
      return self.l(x.reshape(x.shape[0], -1))

  model, v = as_model(nnx.eval_shape(lambda: NNXMLP(nnx.Rngs(0))))
  assert not model.supports_bn_stats and set(v) == {"params"}
  with pytest.raises(ConfigError, match="BatchNorm input statistics"):
    model.apply(v, X, mutable=["bn_stats"])
  # A linen model whose state is not from a flax BatchNorm: the capture finds no layer.
  class Counter(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
      c = self.variable("batch_stats", "count", jnp.zeros, ())
      if train:
        c.value += 1
      return nn.Dense(3, kernel_init=INIT)(x.reshape(x.shape[0], -1))
  module = Counter()
  cv = _numpy_values(jax.eval_shape(module.init, jax.random.key(0), X))
  cmodel, cv = as_model(module, cv)
  with pytest.raises(ConfigError, match="ran no flax"):
    cmodel.apply(cv, X, mutable=["bn_stats"])
  with pytest.raises(ConfigError, match="ran no flax"):
    cmodel.apply(cv, X, train=True, mask=MASK, mutable=["batch_stats"])
  assert adapters.CAPABILITIES == ("train", "mask", "features", "bn_stats")
