"""The array-level functional API (issue 18): pure importances that jit and vmap, and lean imports."""
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import pytest

from jax_unlearn.errors import ConfigError
from jax_unlearn.methods import lfssd, ssd
from jax_unlearn.models.adapters import as_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mlp_apply(params, x):
  """A user's plain `apply(params, x) -> logits` (no BN, no train flag)."""
  h = jnp.tanh(x.reshape(x.shape[0], -1) @ params["w1"] + params["b1"])
  return h @ params["w2"]


@pytest.fixture(scope="module")
def problem():
  k = jax.random.split(jax.random.key(0), 5)
  params = {"w1": jax.random.normal(k[0], (16, 8)) * 0.3, "b1": jax.random.normal(k[1], (8,)) * 0.1,
            "w2": jax.random.normal(k[2], (8, 10)) * 0.3}
  xs = jax.random.normal(k[3], (3, 8, 4, 4, 1))          # a stack of 3 batches of 8
  ys = jax.random.randint(k[4], (3, 8), 0, 10)
  return params, xs, ys


@pytest.mark.parametrize("mode", ["reference", "per_sample"])
def test_jit_vmap_importance_over_a_stack_of_batches_equals_per_batch_calls(problem, mode):
  params, xs, ys = problem
  kw = dict(mode=mode, chunk=4 if mode == "per_sample" else None)
  # LFSSD: label-free, `in_axes=(None, None, 0)` exactly as the issue writes it (apply_fn static).
  lf = jax.jit(jax.vmap(lambda f, p, x: lfssd.importance(f, p, x, **kw), in_axes=(None, None, 0)),
               static_argnums=0)(mlp_apply, params, xs)
  ss = jax.jit(jax.vmap(lambda f, p, x, y: ssd.importance(f, p, x, y, **kw), in_axes=(None, None, 0, 0)),
               static_argnums=0)(mlp_apply, params, xs, ys)
  for i in range(xs.shape[0]):
    one_lf = lfssd.importance(mlp_apply, params, xs[i], **kw)
    one_ss = ssd.importance(mlp_apply, params, xs[i], ys[i], **kw)
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[i], lf), one_lf, rtol=1e-5, atol=1e-7)
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[i], ss), one_ss, rtol=1e-5, atol=1e-7)
  # The per-batch terms are not all alike (the test would pass vacuously on a constant function).
  assert float(jnp.abs(lf["w1"][0] - lf["w1"][1]).max()) > 1e-4

  # The iterator helpers are the mean of the per-batch terms ('reference': over batches; 'per_sample':
  # over examples, equal here because the batches are the same size), through the adapter layer.
  model, v = as_model(mlp_apply, params)
  it_lf = lfssd.lfssd_importance(model.apply, v, [xs[i] for i in range(3)], mode, per_sample_chunk=4)
  it_ss = ssd.ssd_importance(model.apply, v, [(xs[i], ys[i]) for i in range(3)], mode, per_sample_chunk=4)
  chex.assert_trees_all_close(it_lf, jax.tree.map(lambda a: a.mean(0), lf), rtol=1e-5, atol=1e-7)
  chex.assert_trees_all_close(it_ss, jax.tree.map(lambda a: a.mean(0), ss), rtol=1e-5, atol=1e-7)


def test_importance_closed_form_and_mask(problem):
  """A linear model z = x W: d/dW of the batch-mean ||z||^2 is (2/B) x^T z, so LFSSD's 'reference'
  importance is |(2/B) x^T x W|; a masked-out row changes nothing but the divisor."""
  _, xs, _ = problem
  x = xs[0].reshape(8, -1)
  w = {"w": jax.random.normal(jax.random.key(9), (16, 10))}
  lin = lambda p, x: x @ p["w"]  # noqa: E731
  want = jnp.abs(2.0 / 8 * x.T @ (x @ w["w"]))
  chex.assert_trees_all_close(lfssd.importance(lin, w, x)["w"], want, rtol=1e-5)
  mask = jnp.arange(8) < 5
  chex.assert_trees_all_close(lfssd.importance(lin, w, x, mask=mask), lfssd.importance(lin, w, x[:5]),
                              rtol=1e-5)
  with pytest.raises(ConfigError, match="needs the labels"):
    ssd.importance(lin, w, x)


def test_dict_and_tuple_batches_give_the_same_importance(problem):
  params, xs, ys = problem
  model, v = as_model(mlp_apply, params)
  a = ssd.ssd_importance(model.apply, v, [{"image": xs[i], "label": ys[i]} for i in range(3)])
  b = ssd.ssd_importance(model.apply, v, [(xs[i], ys[i]) for i in range(3)])
  chex.assert_trees_all_equal(a, b)


def _loaded(module: str) -> set:
  code = (f"import sys; sys.path.insert(0, {ROOT!r}); import {module}; "
          "print(' '.join(sorted(sys.modules)))")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert r.returncode == 0, r.stderr
  return set(r.stdout.split())


def test_importing_one_method_or_metric_stays_lean():
  mods = _loaded("jax_unlearn.methods.lfssd")
  assert "jax_unlearn.methods.lfssd" in mods
  heavy = {"jax_unlearn.methods.distill", "jax_unlearn.methods.data_free", "jax_unlearn.methods.distruction",
           "orbax", "orbax.checkpoint", "tensorstore", "sklearn"}
  assert not heavy & mods, sorted(heavy & mods)
  mods = _loaded("jax_unlearn.metrics.kl")
  assert "jax_unlearn.metrics.kl" in mods
  heavy = {"sklearn", "scipy", "orbax", "orbax.checkpoint", "jax_unlearn.metrics.mia_i"}
  assert not heavy & mods, sorted(heavy & mods)


def test_ispf_engine_takes_a_plain_apply_fn_teacher_and_never_a_silent_bn_zero():
  from jax_unlearn.methods import data_free, distill
  from jax_unlearn.models import AllCNN, create_generator, init_variables
  k = jax.random.split(jax.random.key(1), 2)
  params = {"w1": jax.random.normal(k[0], (64, 8)) * 0.3, "b1": jnp.zeros(8),
            "w2": jax.random.normal(k[1], (8, 10)) * 0.3}
  model, v = as_model(mlp_apply, params)
  cfg = distill.default_config()
  cfg.update(batch_size=8, loops_per_epoch=1, kd_steps=1, warmup=0, ngf=8, nz=16)
  student = AllCNN(num_classes=10, width=0.25)
  generator = create_generator(cfg.generator, 8, 1, nz=cfg.nz, ngf=cfg.ngf)
  make = lambda c: distill.make_engine(model, student, generator, c, num_classes=10, mean=(0.5,),  # noqa
                                       std=(0.25,))
  # The DFQ BN term (weight 1 by default) needs BN statistics this teacher has none of: a clear error.
  with pytest.raises(ConfigError, match=r"BatchNorm input statistics.*config\.ispf\.bn=0"):
    make(cfg)
  cfg.bn = 0.0
  engine = make(cfg)
  assert not engine.teacher_bn_stats and not engine.teacher_features
  with pytest.raises(ConfigError, match="student_model="):
    data_free.student_model_for(model, cfg)  # the student cannot copy an apply function's architecture
  # Knobs built from another config (bn > 0) are refused by init_state too.
  bad = distill.make_knobs(distill.STRATEGIES["ispf"], distill.default_config(), forget_classes=(3,),
                           num_classes=10)
  with pytest.raises(ConfigError, match=r"config\.ispf\.bn=0"):
    distill.init_state(engine, bad, jax.random.key(3))
  # The generator objective runs with the teacher asked for logits only; its bn and act terms are 0.
  knobs = distill.make_knobs(distill.STRATEGIES["ispf"], cfg, forget_classes=(3,), num_classes=10)
  g = jax.jit(lambda key: init_variables(generator, key, (2, cfg.nz), train=True))(jax.random.key(4))
  s_vars = jax.jit(lambda key: init_variables(student, key, (1, 8, 8, 1)))(jax.random.key(5))
  objective = jax.jit(distill.generator_objective, static_argnums=0)
  _, (parts, _, t_logits) = objective(engine, knobs, g["params"], g["batch_stats"], s_vars, v,
                                      jnp.zeros((8, cfg.nz)))
  assert float(parts["bn"]) == 0.0 and float(parts["act"]) == 0.0 and t_logits.shape == (8, 10)
  assert float(parts["oh"]) > 0.0  # the other terms are computed
