"""Populations (`train.population`, issue 20): the schedule, vmapped == one by one (float64-justified
tolerance), SIGKILL and resume == uninterrupted, reuse, fingerprints, the guard, logits and FLOPs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jax_unlearn.errors import CheckpointError, ConfigError, DataError, NumericalError
from jax_unlearn.metrics.lira import membership_masks
from jax_unlearn.train import population as pop
from tests.test_metrics import TinyNet, make_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = dict(epochs=2, lr=0.05, momentum=0.9, weight_decay=1e-4, milestones=(1,), gamma=0.1,
              batch_size=16)


def _masks(m=5, seed=0):
  """Membership masks over the toy pool (160 examples): 60 always in, 100 each in 2 of the 5 members
  (5 members: layout chunks:2 has groups of 2, 2 and 1, the uneven and the one-member path)."""
  keep = np.ones((m, 160), bool)
  keep[:, 60:] = membership_masks(m, 100, np.random.default_rng(seed))
  return keep


@pytest.fixture(scope="module")
def data():
  return make_data()


def _train(data, layout, masks=None, **kw):
  kw.setdefault("augment", True)  # the step keys matter: a wrong key per member would show
  return pop.train_population(TinyNet(), data.train, _masks() if masks is None else masks, data.info,
                              kw.pop("recipe", RECIPE), jax.random.key(3), seed=1, layout=layout,
                              log=kw.pop("log", lambda m: None), **kw)


def test_epoch_schedule_draws_each_members_own_examples():
  masks = _masks(6)
  masks[2, :30] = False  # a smaller member: it sets the steps per epoch
  n_min = masks.sum(1).min()
  a = pop.epoch_schedule(masks, 16, seed=1, epoch=0)
  chex.assert_shape(a, (n_min // 16, 6, 16))
  for m in range(6):
    got = a[:, m].reshape(-1)
    assert masks[m, got].all()                   # only the member's own examples
    assert len(np.unique(got)) == got.size       # without replacement within the epoch
  np.testing.assert_array_equal(a, pop.epoch_schedule(masks, 16, seed=1, epoch=0))  # a function of (seed, e)
  assert not np.array_equal(a, pop.epoch_schedule(masks, 16, seed=1, epoch=1))
  assert not np.array_equal(a, pop.epoch_schedule(masks, 16, seed=2, epoch=0))
  with pytest.raises(DataError, match="no training example"):
    pop.epoch_schedule(np.zeros((2, 5), bool), 4, 0, 0)


def test_parse_layout_and_validate_config():
  assert pop.parse_layout("auto", 8, "cpu") == 1 and pop.parse_layout("auto", 8, "gpu") == 8
  assert pop.parse_layout("vmap", 8) == 8 and pop.parse_layout("sequential", 8) == 1
  assert pop.parse_layout("chunks:3", 8) == 3 and pop.parse_layout("chunks:30", 8) == 8
  for bad in ("chunks:0", "chunks:x", "grouped"):
    with pytest.raises(ConfigError, match="audit.layout"):
      pop.parse_layout(bad, 8)
  assert pop.resolve_conv("auto", 4) == "matmul" and pop.resolve_conv("auto", 1) == "loop_safe"
  with pytest.raises(ConfigError, match="audit.conv"):
    pop.resolve_conv("fft", 2)
  pop.validate_config(pop.default_config())
  for field, value in (("num_models", 7), ("num_models", 4), ("num_models", True), ("epochs", 0),
                       ("checkpoint_every", -1), ("eval_batch_size", 0), ("layout", "chunks:0")):
    cfg = pop.default_config()
    cfg[field] = value
    with pytest.raises(ConfigError, match=field.split("_")[0]):
      pop.validate_config(cfg)


def _max_diff(a, b):
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_vmapped_population_equals_its_members_trained_one_by_one(data):
  """'vmap' (one vmapped scan), 'sequential' (one scan per member) and 'chunks:2' (vmapped groups of
  2, 2, then a member alone) are the same algorithm: in float64 they agree to 1e-12, so in float32
  they may differ only by rounding, bounded here by what float32 rounding does to one layout (its
  distance to the float64 run); a wrong member key, batch or state row would be O(1)."""
  layouts = ("vmap", "sequential", "chunks:2")
  runs = {lay: _train(data, lay) for lay in layouts}
  with jax.enable_x64(True):
    runs64 = {lay: _train(data, lay, dtype=jnp.float64) for lay in layouts[:2]}
  for r in runs64.values():
    assert all(a.dtype == np.float64 for a in jax.tree.leaves(r.variables["params"]))
  assert _max_diff(runs64["vmap"].variables, runs64["sequential"].variables) < 1e-12
  rounding = _max_diff(runs["sequential"].variables, runs64["sequential"].variables)
  assert 0 < rounding < 1e-4
  for lay in ("vmap", "chunks:2"):
    assert _max_diff(runs[lay].variables, runs["sequential"].variables) <= 4 * rounding, lay
    np.testing.assert_allclose(runs[lay].losses, runs["sequential"].losses, rtol=1e-5, atol=1e-6)
  r = runs["vmap"]
  spe = r.steps_per_epoch
  chex.assert_shape(r.losses, (2 * spe, 5))
  assert spe == _masks().sum(1).min() // 16 and r.chunk == 5
  assert runs["chunks:2"].chunk == 2 and len(runs["chunks:2"].history) == 3 * 2  # 3 groups x 2 epochs
  # the members really differ (own keys and data): not one model copied M times
  p = r.variables["params"]["Dense_0"]["kernel"]
  assert min(float(np.abs(p[0] - p[m]).max()) for m in range(1, 5)) > 1e-3
  assert float(r.losses[-spe:].mean()) < float(r.losses[:spe].mean())  # it learns


def _desc(data, masks):
  return pop.describe_population(kind="test", pool=data.train, masks=masks, recipe=RECIPE,
                                 model_cfg="tiny", key=jax.random.key(3), seed=1,
                                 stream=pop.STREAM_ORDER, augment=True)


# The killed run: a fresh process, SIGKILLed by the loop's fault hook right after chunk 3 (with
# layout chunks:2 and 2 epochs: the second group's first epoch) has been saved, so the rerun resumes
# inside a group (then trains the last, one-member group).
_CHILD = """
import sys
from tests.test_population import _desc, _masks, _train, make_data
d = make_data()
_train(d, "chunks:2", ckpt_dir=sys.argv[1], fingerprint_desc=_desc(d, _masks()))
"""


@pytest.mark.slow
def test_killed_population_run_resumes_exactly(data, tmp_path):
  ckpt = str(tmp_path / "ckpt")
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_UNLEARN_KILL_AT="population:3")
  r = subprocess.run([sys.executable, "-c", _CHILD, ckpt], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=600)
  assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-3000:])
  ref = _train(data, "chunks:2")
  logs = []
  got = _train(data, "chunks:2", ckpt_dir=ckpt, fingerprint_desc=_desc(data, _masks()), log=logs.append)
  assert any("resumed at chunk 3/6" in m for m in logs), logs
  assert not any("members 0-1" in m or "members 2-3 epoch 1/2" in m for m in logs), logs  # 1-3 not rerun
  assert sum("members 2-3 epoch 2/2" in m for m in logs) == 1, logs
  chex.assert_trees_all_equal(got.variables, ref.variables)
  np.testing.assert_array_equal(got.losses, ref.losses)
  assert [h["losses"] for h in got.history] == [h["losses"] for h in ref.history]
  assert "5/5 members done" in logs[-1]
  # A finished checkpoint is the cached population; other inputs never resume from it.
  logs.clear()
  again = _train(data, "chunks:2", ckpt_dir=ckpt, fingerprint_desc=_desc(data, _masks()), log=logs.append)
  assert any("reused the finished run" in m for m in logs), logs
  chex.assert_trees_all_equal(again.variables, ref.variables)
  other = _masks(seed=1)
  with pytest.raises(CheckpointError, match="other inputs"):
    _train(data, "chunks:2", masks=other, ckpt_dir=ckpt, fingerprint_desc=_desc(data, other))


def test_divergent_member_stops_the_run_naming_it(data, tmp_path):
  with pytest.raises(NumericalError, match=r"\[population\] the training loss of member \d became (nan|inf) "
                                           r"at step \d+ \(of 10\) in epoch 1 of 2; no checkpoint was "
                                           r"written yet: lower the learning rate"):
    _train(data, "vmap", recipe={**RECIPE, "lr": 1e9}, ckpt_dir=str(tmp_path))


def test_stacked_logits_equal_each_members_apply(data):
  r = _train(data, "vmap", recipe={**RECIPE, "epochs": 1})
  x = data.test.images[:37]
  got = {lay: pop.stacked_logits(TinyNet(), r.variables, x, data.info, batch_size=16, layout=lay)
         for lay in ("vmap", "sequential")}
  xn = (x - 0.5) / 0.25
  for m in range(5):
    want = TinyNet().apply(pop.take(r.variables, m), xn, train=False)
    for lay, g in got.items():
      np.testing.assert_allclose(g[m], want, rtol=1e-5, atol=1e-5, err_msg=lay)


def test_step_flops_grow_linearly_with_the_batch(data):
  f8, f16 = (pop.step_flops(TinyNet(), data.info, b) for b in (8, 16))
  # per-example work (forward + backward, ~6 x 1,088 MACs) dominates the per-step optimiser update
  assert f8 > 0 and 1.6 < f16 / f8 < 2.1


@pytest.mark.slow
def test_vmapped_conv_population_equals_the_sequential_one():
  """AllCNN on digits: 'vmap' (matmul convs, one batched GEMM per conv) vs 'sequential' (loop-safe
  convs) compute the same function; after 2 epochs their logits agree to float32 rounding."""
  from jax_unlearn.data import digits
  from jax_unlearn.models import create_classifier
  info, train, test = digits.load(0)
  model = create_classifier(ml_collections.ConfigDict(dict(name="allcnn", width=0.125)), 10)
  masks = membership_masks(4, 300, np.random.default_rng(0))
  pool = train.subset(np.arange(300))
  runs = {lay: pop.train_population(model, pool, masks, info, {**RECIPE, "batch_size": 32},
                                    jax.random.key(0), layout=lay, log=lambda m: None)
          for lay in ("vmap", "sequential")}
  np.testing.assert_allclose(runs["vmap"].losses, runs["sequential"].losses, rtol=1e-4, atol=1e-5)
  lg = [pop.stacked_logits(model, r.variables, test.images[:64], info) for r in runs.values()]
  np.testing.assert_allclose(lg[0], lg[1], rtol=1e-3, atol=1e-4)
