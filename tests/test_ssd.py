"""SSD / LFSSD: importances against closed forms, invariances, dampening, BN coverage, label-freeness, run."""

import dataclasses
import json
import os

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jax_unlearn.errors import ConfigError
from jax_unlearn.methods import base, lfssd, ssd
from jax_unlearn.models import AllCNN, init_variables

D_IN, K, N = 5, 4, 70


class Linear(nn.Module):
  """f(x) = x W + b: the closed-form test model (takes the classifier call signature)."""
  num_classes: int = K

  @nn.compact
  def __call__(self, x, train=False, mask=None, features=False):
    del train, mask, features
    return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


@pytest.fixture(scope="module")
def linear():
  rng = np.random.RandomState(0)
  model = Linear()
  params = {"Dense_0": {"kernel": jnp.asarray(rng.randn(D_IN, K), jnp.float32),
                        "bias": jnp.asarray(rng.randn(K), jnp.float32)}}
  x = rng.randn(N, D_IN).astype(np.float32)
  y = rng.randint(0, K, N).astype(np.int32)
  return model, {"params": params}, x, y


def _batches(x, y=None, b=32):
  out = []
  for i in range(0, len(x), b):
    d = {"image": x[i:i + b]}
    if y is not None:
      d["label"] = y[i:i + b]
    out.append(d)
  return out


def _grads_linear(variables, x, y, kind):
  """Per-example (dW [N,d,K], db [N,K]) of ||xW+b||^2 ('lf') or CE ('ce'), in numpy float64."""
  w = np.asarray(variables["params"]["Dense_0"]["kernel"], np.float64)
  b = np.asarray(variables["params"]["Dense_0"]["bias"], np.float64)
  x = x.astype(np.float64)
  o = x @ w + b
  if kind == "lf":
    d = 2 * o                                        # d||o||^2 / do
  else:
    p = np.exp(o - o.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    d = p - np.eye(K)[y]                             # dCE / do
  return np.einsum("ni,nk->nik", x, d), d


def _reference(gw, gb, b, r):
  n = len(gw)
  parts = [(gw[i:i + b].mean(0), gb[i:i + b].mean(0)) for i in range(0, n, b)]
  return np.mean([r(p[0]) for p in parts], 0), np.mean([r(p[1]) for p in parts], 0)


def _check(imp, w, b):
  np.testing.assert_allclose(imp["Dense_0"]["kernel"], w, rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(imp["Dense_0"]["bias"], b, rtol=2e-5, atol=1e-6)


def test_lfssd_importance_closed_form(linear):
  model, v, x, y = linear
  gw, gb = _grads_linear(v, x, None, "lf")
  # 70 examples in batches of 32: the last batch of 6 is padded + masked, its mean must be over 6 rows.
  imp = lfssd.lfssd_importance(model.apply, v, _batches(x, None, 32))
  chex.assert_trees_all_equal_shapes_and_dtypes(
      imp, jax.tree.map(lambda p: p.astype(jnp.float32), v["params"]))
  _check(imp, *_reference(gw, gb, 32, np.abs))
  imp = lfssd.lfssd_importance(model.apply, v, _batches(x, None, 32), "per_sample", per_sample_chunk=8)
  _check(imp, np.abs(gw).mean(0), np.abs(gb).mean(0))


def test_ssd_importance_closed_form(linear):
  model, v, x, y = linear
  gw, gb = _grads_linear(v, x, y, "ce")
  _check(ssd.ssd_importance(model.apply, v, _batches(x, y, 32)), *_reference(gw, gb, 32, np.square))
  _check(ssd.ssd_importance(model.apply, v, _batches(x, y, 32), "per_sample"),
         np.square(gw).mean(0), np.square(gb).mean(0))


def test_preprocess_is_applied_on_device(linear):
  model, v, x, _ = linear
  pre = ssd.Normalize((0.5,), (2.0,))
  gw, gb = _grads_linear(v, (x - 0.5) / 2.0, None, "lf")
  _check(lfssd.lfssd_importance(model.apply, v, _batches(x, None, 32), preprocess=pre),
         *_reference(gw, gb, 32, np.abs))


@pytest.fixture(scope="module")
def cnn():
  """Tiny AllCNN (width 0.1) with non-trivial BN running statistics and affine parameters."""
  model = AllCNN(num_classes=10, width=0.1)
  # Shapes only (eval_shape compiles nothing); values drawn here so BN is far from the identity.
  shapes = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), (1, 8, 8, 1)))
  rng = np.random.RandomState(1)

  def draw(path, s):
    name = jax.tree_util.keystr(path)
    if "kernel" in name:
      return rng.normal(0, 1 / np.sqrt(np.prod(s.shape[:-1])), s.shape)
    lo, hi = {"scale": (0.5, 1.5), "var": (0.5, 2.0), "mean": (-0.1, 0.1)}.get(path[-1].key, (-0.2, 0.2))
    return rng.uniform(lo, hi, s.shape)

  v = jax.tree_util.tree_map_with_path(lambda p, s: jnp.asarray(draw(p, s), jnp.float32), shapes)
  rng = np.random.RandomState(0)
  x = rng.rand(20, 8, 8, 1).astype(np.float32)
  y = rng.randint(0, 10, 20).astype(np.int32)
  return model, v, x, y


def _allclose_trees(a, b, rtol=1e-4, atol=1e-9):
  for p, q in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(p), np.asarray(q), rtol=rtol, atol=atol)


@pytest.mark.parametrize("fn", [lfssd.lfssd_importance, ssd.ssd_importance], ids=["lfssd", "ssd"])
def test_reference_equals_per_sample_at_batch_one(cnn, fn):
  model, v, x, y = cnn
  ref = fn(model.apply, v, _batches(x[:6], y[:6], 1), "reference")
  per = fn(model.apply, v, _batches(x[:6], y[:6], 4), "per_sample")
  _allclose_trees(ref, per)


def test_per_sample_invariant_to_batch_size_and_order(cnn, linear):
  model, v, x, y = cnn
  a = lfssd.lfssd_importance(model.apply, v, _batches(x, None, 16), "per_sample", per_sample_chunk=4)
  # Permuted and cut into batches of 16, 1 and 3 (padded to 16: same compiled program, other grouping).
  xp = x[np.random.RandomState(3).permutation(len(x))]
  b = lfssd.lfssd_importance(model.apply, v, [{"image": xp[:16]}, {"image": xp[16:17]}, {"image": xp[17:]}],
                             "per_sample", per_sample_chunk=4)
  _allclose_trees(a, b)
  # ...whereas the reference mode depends on the batching (so the reference batch sizes matter).
  model, v, x, _ = linear
  c = lfssd.lfssd_importance(model.apply, v, _batches(x, None, 32), "reference")
  d = lfssd.lfssd_importance(model.apply, v, _batches(x, None, 5), "reference")
  assert not np.allclose(c["Dense_0"]["kernel"], d["Dense_0"]["kernel"], rtol=1e-3)
  e = lfssd.lfssd_importance(model.apply, v, _batches(x, None, 5), "per_sample")
  _allclose_trees(e, lfssd.lfssd_importance(model.apply, v, _batches(x[::-1], None, 32), "per_sample"))


def test_dampen_hand_arrays():
  theta = {"a": jnp.array([1., 2., 3., 4., 5., 6.]),
           "b": {"c": jnp.array([[1., -1.], [2., -2.]], jnp.bfloat16)}}
  i_d = {"a": jnp.array([1., 1., 0., 0., 2., 1.]), "b": {"c": jnp.array([[1., 0.], [4., 1.]])}}
  i_f = {"a": jnp.array([5., 20., 3., 0., 1., 10.]), "b": {"c": jnp.array([[1., 0.], [100., 2.]])}}
  alpha, lam = 10.0, 1.0
  out = ssd.dampen(theta, i_d, i_f, alpha, lam)
  chex.assert_trees_all_equal_shapes_and_dtypes(out, theta)
  # a: 5 > 10? no; 20 > 10 yes -> 2*1/20; 3 > 0 yes with I_D = 0 -> zeroed; 0 > 0 no; 1 > 20 no;
  #    10 > 10 no (strict inequality).
  np.testing.assert_allclose(out["a"], [1., 2. / 20., 0., 4., 5., 6.], rtol=1e-6)
  # c: 1 > 10 no; 0 > 0 no; 100 > 40 yes -> 2*4/100; 2 > 10 no.
  np.testing.assert_allclose(np.asarray(out["b"]["c"], np.float32), [[1., -1.], [0.08, -2.]], rtol=1e-2)
  # alpha < 1 with lam large: selected entries whose lam*I_D/I_f >= 1 are capped at 1 (left unchanged).
  out = ssd.dampen(theta, i_d, i_f, 0.5, 8.0)
  # a: sel = i_f > 0.5 i_d = [T, T, T, F, F, T]; beta = min(8*i_d/i_f, 1) = [1, 0.4, 0, -, -, 0.8].
  np.testing.assert_allclose(out["a"], [1., 0.8, 0., 4., 5., 4.8], rtol=1e-6)
  stats = ssd.selection_stats(i_d, i_f, alpha)
  assert stats["n_selected"] == 3 and stats["n_params"] == 10


def test_bn_parameters_get_importance_and_are_dampened(cnn):
  model, v, x, y = cnn
  imp_full = lfssd.lfssd_importance(model.apply, v, _batches(x, None, 8))
  imp_forget = lfssd.lfssd_importance(model.apply, v, _batches(x[y < 3], None, 8))
  chex.assert_trees_all_equal_structs(imp_full, v["params"])
  bn = [k for k in v["params"] if k.startswith("BatchNorm")]
  assert len(bn) == 8
  for k in bn:
    for leaf in ("scale", "bias"):
      assert float(jnp.sum(imp_full[k][leaf] > 0)) > 0, (k, leaf)
  alpha = 1.0
  out = ssd.dampen(v["params"], imp_full, imp_forget, alpha, 1.0)
  n_bn_changed = 0
  for path, new in jax.tree_util.tree_flatten_with_path(out)[0]:
    get = lambda t: t[path[0].key][path[1].key]  # noqa: E731
    old, i_d, i_f = get(v["params"]), get(imp_full), get(imp_forget)
    sel = np.asarray(i_f > alpha * i_d)
    expect = np.where(sel, old * np.minimum(i_d / np.where(sel, i_f, 1), 1), old)
    np.testing.assert_allclose(new, expect, rtol=1e-6)
    assert np.all(np.asarray(new)[~sel] == np.asarray(old)[~sel])
    if path[0].key.startswith("BatchNorm"):
      n_bn_changed += int(np.sum(np.asarray(new) != np.asarray(old)))
  assert n_bn_changed > 0
  assert ssd.selection_stats(imp_full, imp_forget, alpha)["n_selected_norm"] > 0


class _NoLabels(dict):
  def __getitem__(self, k):
    if k == "label":
      raise AssertionError("LFSSD read a label")
    return super().__getitem__(k)

  def get(self, k, default=None):
    if k == "label":
      raise AssertionError("LFSSD read a label")
    return super().get(k, default)


def test_lfssd_never_reads_labels(linear):
  model, v, x, y = linear
  plain = lfssd.lfssd_importance(model.apply, v, _batches(x, None, 32))
  for mode in ssd.MODES:
    trapped = [_NoLabels(b) for b in _batches(x, y, 32)]
    _allclose_trees(lfssd.lfssd_importance(model.apply, v, trapped, mode),
                    lfssd.lfssd_importance(model.apply, v, _batches(x, None, 32), mode))
  with pytest.raises(ConfigError):
    lfssd.lfssd_importance(model.apply, v, _batches(x, None, 32), "fisher")
  assert plain["Dense_0"]["kernel"].dtype == jnp.float32


# ------------------------------------------------------------------------------------------------------
# run(ctx) and select_alpha on a tiny fake context (no test split: the sweep must not need it).

@dataclasses.dataclass
class _Split:
  images: np.ndarray
  labels: np.ndarray

  def __len__(self):
    return len(self.labels)


@dataclasses.dataclass
class _Info:
  mean: tuple = (0.5,)
  std: tuple = (0.25,)
  num_classes: int = 10


@dataclasses.dataclass
class _Data:
  info: _Info
  retain_train: _Split
  forget_train: _Split
  retain_val: _Split
  forget_val: _Split


def _ctx(cnn, workdir, method, forget_mode="class", **sub):
  model, v, x, y = cnn
  rng = np.random.RandomState(1)
  xs = rng.rand(90, 8, 8, 1).astype(np.float32)
  ys = np.arange(90, dtype=np.int32) % 10
  f = ys == 3 if forget_mode == "class" else np.arange(90) < 9
  val_x, val_y = rng.rand(30, 8, 8, 1).astype(np.float32), np.arange(30, dtype=np.int32) % 10
  fv = val_y == 3 if forget_mode == "class" else np.zeros(30, bool)
  data = _Data(_Info(), _Split(xs[~f], ys[~f]), _Split(xs[f], ys[f]), _Split(val_x[~fv], val_y[~fv]),
               _Split(val_x[fv], val_y[fv]))
  config = ml_collections.ConfigDict()
  config.forget = ml_collections.ConfigDict({"mode": forget_mode, "classes": (3,), "num_samples": 9})
  cfg = (lfssd if method == "lfssd" else ssd).default_config()
  cfg.update(sub)
  config[method] = cfg
  return base.context(method, config, model=model, original=v, data=data, key=jax.random.key(0),
                             workdir=str(workdir / method), log=lambda s: None,
                             forget_classes=(3,) if forget_mode == "class" else (), num_classes=10)


def test_run_lfssd_and_cache(cnn, tmp_path):
  ctx = _ctx(cnn, tmp_path, "lfssd", alpha=1.0, batch_size=16, forget_batch_size=4)
  assert base.get("lfssd") is lfssd.run and base.get("ssd") is ssd.run
  res = base.get("lfssd")(ctx)
  chex.assert_trees_all_equal_shapes_and_dtypes(res.variables, ctx.original)
  chex.assert_trees_all_equal(res.variables["batch_stats"], ctx.original["batch_stats"])
  info = res.info
  for k in ("importance_s", "importance_full_s", "importance_forget_s", "dampen_s", "n_selected"):
    assert k in info
  assert info["n_selected"] > 0 and not info["full_importance_cached"]
  assert os.path.dirname(info["full_importance_cache"]) == str(tmp_path)
  assert os.path.exists(info["full_importance_cache"])
  json.dumps(info)
  # Same expected result by hand: importances on D = retain ++ forget (unshuffled) and D_f.
  pre = ssd.Normalize((0.5,), (0.25,))
  d = ctx.data
  d_batches = ssd._batches((d.retain_train, d.forget_train), 16, False)
  full = lfssd.lfssd_importance(ctx.model.apply, ctx.original, d_batches, preprocess=pre)
  forget = lfssd.lfssd_importance(ctx.model.apply, ctx.original, _batches(d.forget_train.images, None, 4),
                                  preprocess=pre)
  _allclose_trees(res.variables["params"], ssd.dampen(ctx.original["params"], full, forget, 1.0, 1.0))
  res2 = lfssd.run(ctx)
  assert res2.info["full_importance_cached"]
  _allclose_trees(res2.variables["params"], res.variables["params"], rtol=0, atol=0)


def test_run_ssd_random_uses_forget_batch_128(cnn, tmp_path):
  ctx = _ctx(cnn, tmp_path, "ssd", forget_mode="random", batch_size=32)
  res = ssd.run(ctx)
  assert res.info["forget_batch_size"] == 128 and res.info["batch_size"] == 32
  assert not res.info["full_importance_cached"] and res.info["full_importance_cache"] == ""


def test_select_alpha_uses_validation(cnn, tmp_path):
  ctx = _ctx(cnn, tmp_path, "lfssd", batch_size=32)
  out = ssd.select_alpha(ctx, [0.5, 1.0, 100.0], "lfssd", target_forget_acc=100.0)
  assert [r["alpha"] for r in out["table"]] == [0.5, 1.0, 100.0]
  assert out["forget_split"] == "forget_val" and out["target_met"]
  best = max(out["table"], key=lambda r: (r["acc_retain_val"], r["alpha"]))
  assert out["alpha"] == best["alpha"]
  fracs = [r["frac_selected"] for r in out["table"]]
  assert fracs[0] >= fracs[1] >= fracs[2]
  with open(tmp_path / "lfssd" / "alpha_sweep_lfssd.json") as f:
    assert json.load(f)["alpha"] == out["alpha"]
  # Random forgetting: no forget_val, so forget_train is measured and the 'closest' criterion is used.
  ctx = _ctx(cnn, tmp_path, "ssd", forget_mode="random", batch_size=32)
  out = ssd.select_alpha(ctx, [1.0, 3.0], "ssd", write=False)
  assert out["forget_split"] == "forget_train" and out["criterion"] == "closest"
  assert out["alpha"] == min(out["table"], key=lambda r: (r["score"], -r["alpha"]))["alpha"]


def test_auto_alpha_is_the_validation_choice_and_recorded(cnn, tmp_path):
  """alpha='auto' (the default) dampens at the alpha `select_alpha` picks on the validation split over
  `alpha_grid`, and records the choice and the sweep in info (metrics.json) and alpha_sweep_*.json."""
  grid = (0.5, 1.0, 100.0)
  ctx = _ctx(cnn, tmp_path, "lfssd", batch_size=32, alpha_grid=grid)
  assert ssd.is_auto(ctx.cfg) and lfssd.default_config().alpha == ssd.AUTO
  res = lfssd.run(ctx)
  choice = ssd.select_alpha(ctx, grid, "lfssd", write=False)
  assert res.info["alpha_auto"] and res.info["alpha"] == choice["alpha"]
  assert [r["alpha"] for r in res.info["alpha_selection"]["table"]] == list(grid)
  assert res.info["alpha_selection"]["forget_split"] == "forget_val"
  json.dumps(res.info)
  fixed = lfssd.run(_ctx(cnn, tmp_path, "lfssd", batch_size=32, alpha=choice["alpha"]))
  assert "alpha_auto" not in fixed.info
  _allclose_trees(res.variables["params"], fixed.variables["params"], rtol=0, atol=0)
  with open(tmp_path / "lfssd" / "alpha_sweep_lfssd.json") as f:
    assert json.load(f)["alpha"] == choice["alpha"]
  # The functional API has no validation split: 'auto' is one line naming the fix.
  model, v, x, y = cnn
  with pytest.raises(ConfigError, match="needs a number for alpha"):
    lfssd.unlearn(model, v, x, x[:4])


def test_config_errors(cnn, tmp_path):
  with pytest.raises(ConfigError, match="fisher"):
    ssd.validate_config(_ctx(cnn, tmp_path, "ssd", mode="fisher").cfg)
  with pytest.raises(ConfigError, match="config.lfssd.alpha"):
    base.spec("lfssd").validate_config(_ctx(cnn, tmp_path, "lfssd", alpha=0.0).cfg, None)


@pytest.mark.parametrize("alphas", [[], [0.0], [1.0, -1.0], [float("nan")], ["x"], np.array([2.0, 0.0])])
def test_alpha_sweeps_reject_non_positive_alphas_before_any_work(alphas):
  """Both entry points check the grid first (no context, no importances needed to fail)."""
  with pytest.raises(ConfigError, match="alpha"):
    ssd.select_alpha(None, alphas)
  with pytest.raises(ConfigError, match="alpha"):
    ssd.sweep_alpha(None, "ssd", None, None, alphas, 1.0)
