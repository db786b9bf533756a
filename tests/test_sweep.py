"""Vmapped sweeps (`jax_unlearn.sweep`): the im2col conv equals lax's (values and gradients), a vmapped
sweep over forget classes / seeds equals the same runs done one by one, config -> runs."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jax_unlearn import sweep
from jax_unlearn.errors import ConfigError
from jax_unlearn.methods import distill
from jax_unlearn.models import BatchNorm, create_generator, init_variables
from jax_unlearn.models import conv as conv_lib

K = 10
SHAPE = (8, 8, 1)


class TinyNet(nn.Module):
  """Conv-BN-ReLU (stride 1 and 2, 3x3 and 1x1) and a linear head, with the classifier signature."""
  num_classes: int = K

  @nn.compact
  def __call__(self, x, train=False, mask=None, features=False):
    for ch, k, s in ((4, 3, 1), (6, 3, 2), (6, 1, 1)):
      x = nn.Conv(ch, (k, k), strides=(s, s), padding=[((k - 1) // 2,) * 2] * 2, use_bias=False)(x)
      x = nn.relu(BatchNorm(use_running_average=not train)(x, mask=mask))
    feat = x.mean((1, 2))
    logits = nn.Dense(self.num_classes)(feat)
    return (logits, feat) if features else logits


@pytest.mark.parametrize("conv", ["matmul", "loop_safe"])
@pytest.mark.parametrize("k,stride,pad", [(3, 1, 1), (3, 2, 1), (1, 1, 0), (3, 1, "SAME"), (3, 2, "VALID"),
                                          (3, 2, ((1, 1), (0, 2)))])
def test_matmul_conv_matches_lax(conv, k, stride, pad):
  """Both conv drop-ins of `models.conv` equal lax's conv in value and in both gradients."""
  x = jax.random.normal(jax.random.key(0), (2, 9, 7, 3))
  w = jax.random.normal(jax.random.key(1), (k, k, 3, 5))
  padding = pad if isinstance(pad, (str, tuple)) else ((pad, pad), (pad, pad))
  fn = {"matmul": conv_lib.matmul_conv_general_dilated,
        "loop_safe": conv_lib.loop_safe_conv_general_dilated}[conv]
  dn = ("NHWC", "HWIO", "NHWC")
  ref = lambda x, w: lax.conv_general_dilated(x, w, (stride, stride), padding,  # noqa: E731
                                              dimension_numbers=dn)
  got = lambda x, w: fn(x, w, (stride, stride), padding, dimension_numbers=dn)  # noqa: E731
  np.testing.assert_allclose(got(x, w), ref(x, w), rtol=1e-5, atol=1e-5)
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))  # noqa: E731
  for a, b in zip(jax.grad(loss(got), (0, 1))(x, w), jax.grad(loss(ref), (0, 1))(x, w)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_stack_unstack_roundtrip():
  trees = [{"a": jnp.full((2,), i), "b": (jnp.asarray(i * 1.0),)} for i in range(3)]
  st = sweep.stack(trees)
  chex.assert_shape(st["a"], (3, 2))
  for t, u in zip(trees, sweep.unstack(st)):
    chex.assert_trees_all_equal(t, u)


def _setup(n_teachers=1):
  cfg = distill.default_config()
  cfg.update(dict(batch_size=16, nz=8, ngf=4, kd_steps=2, loops_per_epoch=1, warmup=1, epochs=1,
                  plots=False))
  model = TinyNet()
  teachers = []
  for s in range(n_teachers):
    v = init_variables(model, jax.random.key(100 + s), (1,) + SHAPE)
    v["params"]["Dense_0"]["kernel"] = v["params"]["Dense_0"]["kernel"] * 40.0
    teachers.append(v)
  gen = create_generator("dfq", SHAPE[0], SHAPE[2], nz=cfg.nz, ngf=cfg.ngf)
  eng = distill.make_engine(model, model, gen, cfg, num_classes=K, mean=(0.5,), std=(0.25,))
  return cfg, eng, teachers


def _states(cfg, eng, runs, strategy="ispf"):
  return [distill.init_state(eng, distill.make_knobs(distill.STRATEGIES[strategy], cfg,
                                                     forget_classes=f, num_classes=K),
                             jax.random.key(seed)) for seed, f in runs]


def _sequential(eng, teachers, states, epochs):
  out = []
  for i, st in enumerate(states):
    for _ in range(epochs):
      st = distill.run_epoch(eng, teachers[i % len(teachers)], st)
    out.append(st)
  return out


def _assert_runs_equal(got, want):
  for g, w in zip(got, want):
    for a, b in zip(jax.tree.leaves((g.s_params, g.s_batch_stats, g.g_params, g.diag)),
                    jax.tree.leaves((w.s_params, w.s_batch_stats, w.g_params, w.diag))):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-3, atol=2e-4)
    assert int(g.step) == int(w.step) and int(g.epoch) == int(w.epoch)


@pytest.mark.parametrize("matmul", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_vmapped_class_sweep_equals_sequential_runs(matmul):
  cfg, eng, (teacher,) = _setup()
  runs = [(c, (c,)) for c in (0, 3, 7)]  # 3 forget classes, a different key per run (issue 18)
  epochs = int(cfg.warmup) + int(cfg.epochs)
  want = _sequential(eng, [teacher], _states(cfg, eng, runs), epochs)
  got = sweep.unstack(sweep.run_sweep(sweep.sweep_engine(eng, matmul), teacher,
                                      sweep.stack(_states(cfg, eng, runs)), epochs))
  _assert_runs_equal(got, want)
  assert int(got[0].step) == int(cfg.epochs) * cfg.loops_per_epoch * cfg.kd_steps  # really trained
  # Different classes really are different runs.
  assert not np.allclose(got[0].s_params["Dense_0"]["bias"], got[1].s_params["Dense_0"]["bias"])


def test_vmapped_seed_sweep_with_stacked_teachers_equals_sequential_runs():
  cfg, eng, teachers = _setup(n_teachers=2)
  runs = [(0, (3,)), (1, (3,))]
  epochs = int(cfg.warmup) + int(cfg.epochs)
  want = _sequential(eng, teachers, _states(cfg, eng, runs), epochs)
  got = sweep.unstack(sweep.run_sweep(sweep.sweep_engine(eng), sweep.stack(teachers),
                                      sweep.stack(_states(cfg, eng, runs)), epochs,
                                      stacked_teacher=True))
  _assert_runs_equal(got, want)


def test_sweep_runs_from_config():
  from configs import digits
  c = digits.get_config()
  c.sweep = sweep.default_config()
  assert sweep.sweep_runs(c) == [(0, (3,))]
  c.sweep.classes = (0, 1, 2)
  c.sweep.seeds = (0, 5)
  assert sweep.sweep_runs(c) == [(s, (k,)) for s in (0, 5) for k in (0, 1, 2)]
  c.forget.mode = "random"
  with pytest.raises(ConfigError, match="forget.mode=class"):
    sweep.sweep_runs(c)
  c.forget.mode = "class"
  c.method = "ssd"
  with pytest.raises(ConfigError, match="data-free"):
    sweep.run(c, "/tmp/unused-sweep-workdir")


_SHARDED_SWEEP = """
import sys, numpy as np, jax
sys.path.insert(0, {tests!r})
import test_sweep as T
from jax_unlearn import sweep
assert jax.local_device_count() == 4, jax.devices()
cfg, eng, (teacher,) = T._setup()
cfg.warmup = 0  # one distillation epoch keeps the subprocess short
runs = [(c, (c,)) for c in (0, 3, 5, 7)]
epochs = 1
want = T._sequential(eng, [teacher], T._states(cfg, eng, runs), epochs)
out = sweep.run_sweep(sweep.sweep_engine(eng), teacher, sweep.stack(T._states(cfg, eng, runs)), epochs,
                      shard=True)
leaf = out.s_params["Dense_0"]["kernel"]
print("devices", len(leaf.sharding.device_set), "shard", leaf.addressable_shards[0].data.shape[0])
T._assert_runs_equal(sweep.unstack(out), want)
print("OK")
"""


@pytest.mark.slow  # ~30 s quiet: a subprocess compiles the sequential and the sharded programs
def test_sweep_members_shard_across_four_devices():
  """4 forced host devices: each device holds one run of a 4-run sweep, and the runs equal sequential."""
  import os
  import subprocess
  import sys
  tests = os.path.dirname(os.path.abspath(__file__))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([os.path.dirname(tests), os.environ.get("PYTHONPATH", "")]))
  r = subprocess.run([sys.executable, "-c", _SHARDED_SWEEP.format(tests=tests)], capture_output=True,
                     text=True, env=env, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "devices 4 shard 1" in r.stdout and "OK" in r.stdout, r.stdout


def test_with_loop_safe_convs_apply_equals_plain_apply():
  """`models.conv.with_loop_safe_convs(model.apply)` (the bench's TrainState.apply_fn) computes the same
  logits and gradients, and compares equal across constructions (jit cache keys)."""
  model = TinyNet()
  v = init_variables(model, jax.random.key(0), (1,) + SHAPE)
  x = jax.random.normal(jax.random.key(1), (4,) + SHAPE)
  wrapped = conv_lib.with_loop_safe_convs(model.apply)
  assert wrapped == conv_lib.with_loop_safe_convs(model.apply)
  assert hash(wrapped) == hash(conv_lib.with_loop_safe_convs(model.apply))
  loss = lambda f: lambda p: jnp.sum(jnp.sin(f({"params": p, "batch_stats": v["batch_stats"]}, x)))  # noqa: E731
  chex.assert_trees_all_close(jax.value_and_grad(loss(wrapped))(v["params"]),
                              jax.value_and_grad(loss(model.apply))(v["params"]), rtol=1e-5, atol=1e-5)
