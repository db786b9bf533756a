"""`jax_unlearn.xla_flags` (config.xla_cpu_flags) and the chunked conv weight gradient it goes with."""

import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import pytest

from jax_unlearn import metrics, xla_flags
from jax_unlearn.errors import ConfigError
from jax_unlearn.models import conv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code, xla_env=None):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  if xla_env is not None:
    env["XLA_FLAGS"] = xla_env
  env["PYTHONPATH"] = ROOT
  return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                        timeout=120)


APPLY_THEN_RUN = (
    "import os, jax.numpy as jnp\n"
    "from jax_unlearn import xla_flags\n"
    "print(xla_flags.apply(xla_flags.FAST_CPU_CONVS))\n"
    "print(float(jnp.ones(3).sum()), xla_flags.backend_started())\n"
    "print(os.environ['XLA_FLAGS'])\n")


def test_apply_sets_the_flag_before_the_backend_starts():
  r = _python(APPLY_THEN_RUN)
  assert r.returncode == 0, r.stderr
  added, ran, env = r.stdout.splitlines()
  assert added == f"['{xla_flags.FAST_CPU_CONVS}']"
  assert ran == "3.0 True"
  assert env == xla_flags.FAST_CPU_CONVS


def test_the_users_xla_flags_win():
  mine = "--xla_cpu_experimental_ynn_fusion_type=INDIVIDUAL_DOT,ELTWISE --xla_cpu_enable_fast_math=false"
  r = _python(APPLY_THEN_RUN, xla_env=mine)
  assert r.returncode == 0, r.stderr
  added, _, env = r.stdout.splitlines()
  assert added == "[]" and env == mine


def test_other_user_flags_are_kept_and_ours_appended():
  mine = "--xla_cpu_enable_fast_math=false"
  r = _python(APPLY_THEN_RUN, xla_env=mine)
  assert r.returncode == 0, r.stderr
  added, _, env = r.stdout.splitlines()
  assert added == f"['{xla_flags.FAST_CPU_CONVS}']" and env == f"{mine} {xla_flags.FAST_CPU_CONVS}"


def test_apply_after_the_backend_started_is_an_error(monkeypatch):
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  jnp.zeros(1).block_until_ready()
  assert xla_flags.backend_started()
  with pytest.raises(ConfigError, match="before the first JAX computation"):
    xla_flags.apply(xla_flags.FAST_CPU_CONVS)
  assert "XLA_FLAGS" not in os.environ
  assert xla_flags.apply("") == []


@pytest.mark.parametrize("bad", ["xla_cpu_enable_fast_math=true", "--xla_cpu_enable_fast_math", "--foo=1"])
def test_malformed_flags_are_config_errors(bad):
  with pytest.raises(ConfigError, match="--xla_name=value"):
    xla_flags.apply(bad)


def test_launcher_reports_a_bad_flag_in_one_line(tmp_path):
  r = subprocess.run([sys.executable, "-m", "launch.train", "--config=configs/digits.py",
                      "--config.xla_cpu_flags=fast", f"--workdir={tmp_path / 'w'}"],
                     capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert r.returncode == 2, r.stderr
  err = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
  assert len(err) == 1 and "config.xla_cpu_flags" in err[0] and "Traceback" not in r.stderr, r.stderr
  assert not os.path.exists(tmp_path / "w")


def test_paper_configs_ask_for_fast_cpu_convs_and_digits_for_nothing():
  from configs import cifar10_allcnn, digits
  assert cifar10_allcnn.get_config().xla_cpu_flags == xla_flags.FAST_CPU_CONVS
  assert digits.get_config().xla_cpu_flags == ""


@pytest.mark.parametrize("shape", [(8, 32, 32, 8, 6, 3, 1), (8, 32, 32, 8, 6, 3, 2), (4, 17, 9, 5, 3, 3, 2),
                                   (8, 16, 16, 8, 4, 1, 1)])
@pytest.mark.parametrize("chunks", [2, 4])
def test_chunked_weight_gradient_equals_xla(shape, chunks):
  n, h, w_, c, o, k, s = shape
  p = (k - 1) // 2
  pads = ((p, p), (p, p))
  x = jax.random.normal(jax.random.key(0), (n, h, w_, c))
  w = jax.random.normal(jax.random.key(1), (k, k, c, o))
  y, vjp = jax.vjp(lambda w: jax.lax.conv_general_dilated(x, w, (s, s), pads,
                                                           dimension_numbers=("NHWC", "HWIO", "NHWC")), w)
  dy = jax.random.normal(jax.random.key(2), y.shape)
  ref = vjp(dy)[0]
  if (n * y.shape[1] * y.shape[2]) % chunks:
    with pytest.raises(ValueError, match="does not divide"):
      conv.conv_weight_grad(x, dy, (k, k), (s, s), pads, chunks=chunks)
    return
  got = conv.conv_weight_grad(x, dy, (k, k), (s, s), pads, chunks=chunks)
  chex.assert_shape(got, w.shape)
  chex.assert_trees_all_close(got, ref, rtol=1e-4, atol=1e-4)


def test_small_layers_keep_one_exact_gemm_per_tap(monkeypatch):
  """Below the size threshold the default is the unchunked contraction (bit for bit: the recorded
  digits numbers); above it, the chunked one (same values up to rounding)."""
  x = jax.random.normal(jax.random.key(0), (16, 8, 8, 24))
  dy = jax.random.normal(jax.random.key(1), (16, 8, 8, 12))
  args = ((3, 3), (1, 1), ((1, 1), (1, 1)))
  one = conv.conv_weight_grad(x, dy, *args, chunks=1)
  assert bool(jnp.all(conv.conv_weight_grad(x, dy, *args) == one))
  monkeypatch.setattr(conv, "_CHUNK_MIN_ELEMENTS", 1)
  chex.assert_trees_all_close(conv.conv_weight_grad(x, dy, *args), conv.conv_weight_grad(
      x, dy, *args, chunks=4), rtol=0, atol=0)  # the default is chunks=4 here
  chex.assert_trees_all_close(conv.conv_weight_grad(x, dy, *args), one, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("generator", ["dfq", "zskt"])
def test_no_digits_layer_is_chunked(monkeypatch, generator):
  """Every loop-safe conv gradient of the digits configs (student, teacher-sized shadows, DFQ/ZSKT
  generator at the ISPF batch) stays below the chunking threshold, so digits results are unchanged."""
  from configs import digits
  from jax_unlearn import models
  c = digits.get_config()
  sizes = []
  orig = conv.conv_weight_grad

  def spy(x, dy, *a, **kw):
    sizes.append(x.shape[0] * dy.shape[1] * dy.shape[2] * x.shape[3])
    return orig(x, dy, *a, **kw)
  monkeypatch.setattr(conv, "conv_weight_grad", spy)
  gen = models.create_generator(generator, 8, 1, nz=c.ispf.nz, ngf=c.ispf.ngf)
  clf = models.create_classifier(c.model, 10)
  b = max(c.ispf.batch_size, c.batch_size, metrics.resolve_config(c)[0].shadow_batch_size,
          c.metrics.ain_batch_size)
  gv = models.init_variables(gen, jax.random.key(0), (1, gen.nz))
  cv = models.init_variables(clf, jax.random.key(0), (1, 8, 8, 1))

  def loss(gp, cp):
    x, _ = gen.apply({**gv, "params": gp}, jnp.zeros((b, gen.nz)), train=True, mutable=["batch_stats"])
    y, _ = clf.apply({**cv, "params": cp}, x, train=True, mutable=["batch_stats"])
    return jnp.sum(y)
  with conv.loop_safe_convs():  # shapes only: traced, not run
    jax.eval_shape(jax.grad(loss, (0, 1)), gv["params"], cv["params"])
  assert len(sizes) >= 8, sizes
  assert max(sizes) < conv._CHUNK_MIN_ELEMENTS, sizes
