"""MIA-II shadow models: per-epoch orbax checkpoints, exact resume, reuse, NaN and corruption (issue 8)."""

from __future__ import annotations

import glob
import os
import re

import chex
import jax
import numpy as np
import pytest

from jax_unlearn.errors import CheckpointError, NumericalError
from jax_unlearn.metrics import mia_ii
from jax_unlearn.train import checkpoint
from tests.test_metrics import TinyNet, make_data

# augment=True: the step keys (fold_in(key, t)) are used, so a resume that lost or shifted the PRNG
# state would change the shadows.
KW = dict(num_shadow=2, epochs=3, lr=0.05, batch_size=16, seed=0, augment=True)


@pytest.fixture(scope="module")
def data():
  return make_data()


@pytest.fixture(scope="module")
def reference(data):
  """One scan over all steps, no checkpoint (the path without `ckpt_dir`)."""
  return mia_ii.train_shadow_models(TinyNet(), data, jax.random.PRNGKey(5), **KW)


class _Interrupt(Exception):
  pass


def _equal(a, b):
  chex.assert_trees_all_equal(a.variables, b.variables)
  np.testing.assert_array_equal(a.losses, b.losses)
  np.testing.assert_array_equal(a.in_mask, b.in_mask)
  assert a.final_loss == b.final_loss


@pytest.mark.parametrize("vmapped", [True, False])
def test_epoch_checkpointed_run_equals_one_scan(data, reference, tmp_path, vmapped):
  one_scan = reference if vmapped else mia_ii.train_shadow_models(
      TinyNet(), data, jax.random.PRNGKey(5), vmapped=False, **KW)
  logs = []
  got = mia_ii.train_shadow_models(TinyNet(), data, jax.random.PRNGKey(5), vmapped=vmapped,
                                   ckpt_dir=str(tmp_path), log=logs.append, **KW)
  chex.assert_shape(got.losses, (reference.losses.shape[0], KW["num_shadow"]))
  assert reference.losses.shape[0] % KW["epochs"] == 0
  _equal(got, one_scan)  # the same steps and keys, one epoch per scan: bit-identical
  assert checkpoint.Checkpointer(str(tmp_path)).latest_step() == KW["epochs"]
  assert sum("[mia_ii shadows] epoch" in m for m in logs) == KW["epochs"], logs


def _interrupted_after_epoch_1(data, d, monkeypatch):
  real, saves = checkpoint.Checkpointer.save, []

  def save(self, step, state):
    saves.append(step)
    if len(saves) > 1:
      raise _Interrupt(step)  # a kill right after epoch 1 was committed
    real(self, step, state)
  monkeypatch.setattr(checkpoint.Checkpointer, "save", save)
  with pytest.raises(_Interrupt):
    mia_ii.train_shadow_models(TinyNet(), data, jax.random.PRNGKey(5), ckpt_dir=d, **KW)
  monkeypatch.undo()


def test_interrupted_run_resumes_exactly(data, reference, tmp_path, monkeypatch):
  _interrupted_after_epoch_1(data, str(tmp_path), monkeypatch)
  assert checkpoint.Checkpointer(str(tmp_path)).latest_step() == 1
  logs = []
  got = mia_ii.train_shadow_models(TinyNet(), data, jax.random.PRNGKey(5), ckpt_dir=str(tmp_path),
                                   log=logs.append, **KW)
  assert any("resumed at epoch 1/3" in m for m in logs), logs
  _equal(got, reference)


def test_finished_checkpoint_is_reused_without_training(data, reference, tmp_path, monkeypatch):
  mia_ii.train_shadow_models(TinyNet(), data, jax.random.PRNGKey(5), ckpt_dir=str(tmp_path), **KW)

  def no_training(*a, **k):
    raise AssertionError("the finished shadows were trained again")
  monkeypatch.setattr(mia_ii, "train_shadows_scan", no_training)
  logs = []
  got = mia_ii.train_shadow_models(TinyNet(), data, jax.random.PRNGKey(5), ckpt_dir=str(tmp_path),
                                   log=logs.append, **KW)
  assert any("reused the finished run at epoch 3/3" in m for m in logs), logs
  _equal(got, reference)


def test_nan_names_epoch_and_keeps_last_good_checkpoint(data, reference, tmp_path, monkeypatch):
  d = str(tmp_path / "k")
  _interrupted_after_epoch_1(data, d, monkeypatch)
  t_total = reference.losses.shape[0]
  spe = t_total // KW["epochs"]
  # The same shadows resumed with an absurd learning rate: epoch 2 diverges.
  with pytest.raises(NumericalError) as e:
    mia_ii.train_shadow_models(TinyNet(), data, jax.random.PRNGKey(5), ckpt_dir=d,
                               **{**KW, "lr": 1e12})
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith("[mia_ii shadows] "), msg
  m = re.search(rf"became (nan|inf) (at|after) step (\d+)(?: \(of {t_total}\))? in epoch 2 of 3", msg)
  assert m and spe < int(m.group(3)) <= 2 * spe, msg  # a step of epoch 2, 1-based
  assert f"last good checkpoint (epoch 1) is kept in {d}" in msg and "shadow_lr" in msg, msg
  assert checkpoint.Checkpointer(d).latest_step() == 1
  # The kept checkpoint is still good: the sane run resumes from it and ends as the reference.
  _equal(mia_ii.train_shadow_models(TinyNet(), data, jax.random.PRNGKey(5), ckpt_dir=d, **KW), reference)
  with pytest.raises(NumericalError, match="in epoch 1 of 3; no checkpoint was written yet"):
    mia_ii.train_shadow_models(TinyNet(), data, jax.random.PRNGKey(5), ckpt_dir=str(tmp_path / "n"),
                               **{**KW, "lr": 1e12})
  assert checkpoint.Checkpointer(str(tmp_path / "n")).latest_step() is None


# orbax's tensorstore reads outlive the failed restore and log to a closed event loop (checkpoint.py).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_corrupted_checkpoint_is_reported(data, tmp_path):
  d = str(tmp_path)
  mia_ii.train_shadow_models(TinyNet(), data, jax.random.PRNGKey(5), ckpt_dir=d, **KW)
  files = [f for f in glob.glob(os.path.join(d, "3", "**", "*"), recursive=True)
           if os.path.isfile(f) and "/d/" in f]
  assert files
  for f in files:
    os.truncate(f, 3)
  with pytest.raises(CheckpointError, match="corrupted") as e:
    mia_ii.train_shadow_models(TinyNet(), data, jax.random.PRNGKey(5), ckpt_dir=d, **KW)
  assert "\n" not in str(e.value) and "delete that directory" in str(e.value), str(e.value)


def test_experiment_shadow_dir_follows_exactly_the_shadow_inputs():
  """The experiment's shadow checkpoint dir changes with what the shadows depend on, and only that."""
  from configs import digits
  from jax_unlearn import experiment

  def sdir(**changes):
    c = digits.get_config()
    for path, v in changes.items():
      sub, field = path.split("__")
      c[sub][field] = v
    return experiment.shadow_dir(c, "/w")

  base = sdir()
  assert base.startswith("/w/shadows/class-3_seed0_"), base
  for same in ({"metrics__ain_lr": 0.1}, {"metrics__names": ("acc",)}, {"dataset__data_dir": "/d"},
               {"ispf__epochs": 99}):
    assert sdir(**same) == base, same
  # The shadows follow the original's recipe (config.train), unless a shadow_* field overrides it.
  for other in ({"metrics__shadow_lr": 0.01}, {"metrics__num_shadow": 3}, {"metrics__seed_offset": 7},
                {"metrics__mia_ii_max_eval": 10}, {"model__width": 0.5}, {"forget__classes": (4,)},
                {"train__epochs": 99}, {"train__milestones": (5,)}):
    assert sdir(**other) != base, other
