"""No silent reuse of stale artefacts: every cache key covers what the artefact depends on."""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jax_unlearn import api
from jax_unlearn.errors import CheckpointError
from jax_unlearn.methods import base, data_free, distill
from jax_unlearn.train import fingerprint
from jax_unlearn.train.loop import run_chunks


def _config(**train):
  from configs import digits
  c = digits.get_config()
  c.model.width = 0.125
  c.train.update({"epochs": 1, **train})
  return c


def _quiet(_):
  pass


def test_digests_follow_content_not_names():
  a = np.arange(6, dtype=np.float32)
  assert fingerprint.array_digest(a) == fingerprint.array_digest(a.copy())
  assert fingerprint.array_digest(a) != fingerprint.array_digest(a + 1)
  assert fingerprint.array_digest(a) != fingerprint.array_digest(a.astype(np.float64))
  d1 = fingerprint.describe(x=(1, 2), cfg=ml_collections.ConfigDict({"lr": 0.1}))
  d2 = fingerprint.describe(x=[1, 2], cfg={"lr": 0.1})
  assert fingerprint.digest(d1) == fingerprint.digest(d2)
  assert fingerprint.digest(d1) != fingerprint.digest(fingerprint.describe(x=[1, 2], cfg={"lr": 0.2}))
  k = jax.random.key(0)
  assert fingerprint.array_digest(k) != fingerprint.array_digest(jax.random.key(1))


def test_changed_recipe_or_split_trains_a_new_original(tmp_path):
  w = str(tmp_path)
  s1, v1, m1 = api.train_original(_config(), w, log=_quiet)
  s2, v2, m2 = api.train_original(_config(), w, log=_quiet)          # same config: reused
  assert s2.original_dir == s1.original_dir
  jax.tree.map(np.testing.assert_array_equal, v1, v2)
  s3, v3, m3 = api.train_original(_config(epochs=2), w, log=_quiet)  # recipe changed: retrained
  assert s3.original_dir != s1.original_dir and len(m3["history"]) == 2
  c = _config()
  c.dataset.test_fraction = 0.5                                     # data split changed: retrained
  s4, _, _ = api.train_original(c, w, log=_quiet)
  assert s4.original_dir not in (s1.original_dir, s3.original_dir)
  assert len(s4.dataset.test) != len(s1.dataset.test)
  c = _config(lr=0.01)                                              # lr changed (e.g. after a NaN)
  s5, _, _ = api.train_original(c, w, log=_quiet)
  assert s5.original_dir not in (s1.original_dir, s3.original_dir, s4.original_dir)
  assert sorted(os.listdir(os.path.join(w, "original"))) == sorted(
      os.path.basename(s.original_dir) for s in (s1, s3, s4, s5))


def test_truncated_metrics_file_is_measured_again(tmp_path):
  w = str(tmp_path)
  setup, _, m = api.train_original(_config(), w, log=_quiet)
  path = os.path.join(setup.original_dir, "metrics.json")
  with open(path, "w") as f:
    f.write('{"acc_te')
  _, _, again = api.train_original(_config(), w, log=_quiet)
  assert again["acc_test"] == m["acc_test"] and again["history"] == m["history"]
  assert again["train_s"] == m["train_s"]  # the stored measurement, not the reload time


def _tiny_ispf(epochs=2, **kw):
  cfg = distill.default_config()
  cfg.update({"epochs": epochs, "warmup": 0, "loops_per_epoch": 1, "kd_steps": 2, "batch_size": 32,
              "ngf": 8, "nz": 16, "plots": False, **kw})
  return cfg


def test_distill_checkpoint_is_never_resumed_under_new_settings(tmp_path):
  config = _config()
  setup, original, _ = api.train_original(config, str(tmp_path / "w"), log=_quiet)
  logs = []
  ctx = api.make_context(setup, str(tmp_path / "w"), "ispf", original, log=logs.append)
  ctx.cfg = _tiny_ispf()
  assert int(ctx.cfg.checkpoint_every) == 1  # checkpoints by default
  r1 = data_free.run_strategy(ctx, distill.STRATEGIES["ispf"])
  ckpts = [d for d in os.listdir(ctx.workdir) if d.startswith("ckpt-")]
  assert len(ckpts) == 1
  # The same run again: reused from its checkpoint, identical.
  logs.clear()
  r2 = data_free.run_strategy(ctx, distill.STRATEGIES["ispf"])
  assert any("reused the finished run" in m for m in logs)
  jax.tree.map(np.testing.assert_array_equal, r1.variables, r2.variables)
  # New hyper-parameters: a new checkpoint directory, a fresh run.
  logs.clear()
  ctx.cfg = _tiny_ispf(lr=0.001, kd_steps=1)
  r3 = data_free.run_strategy(ctx, distill.STRATEGIES["ispf"])
  assert not any("resumed" in m or "reused" in m for m in logs)
  assert r3.info["student_steps"] == 2 and r1.info["student_steps"] == 4
  assert len([d for d in os.listdir(ctx.workdir) if d.startswith("ckpt-")]) == 2


def test_loop_refuses_a_checkpoint_of_other_inputs(tmp_path):
  def chunk(s, i):
    return s + 1.0, {"i": i}
  state, hist = run_chunks(chunk, jnp.zeros(()), 3, phase="t", ckpt_dir=str(tmp_path),
                           fingerprint={"a": 1}, log=_quiet)
  assert float(state) == 3 and len(hist) == 3
  with pytest.raises(CheckpointError, match="other inputs"):
    run_chunks(chunk, jnp.zeros(()), 3, phase="t", ckpt_dir=str(tmp_path), fingerprint={"a": 2},
               log=_quiet)


def test_registered_methods_all_declare_their_data():
  for s in base.specs():
    assert s.data, s.name
