import os
import subprocess
import sys

import chex
import jax
import ml_collections
import numpy as np
import pytest

from jax_unlearn import api, data, models
from jax_unlearn.train import supervised
from jax_unlearn.train.evaluate import accuracy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _digits():
  return data.load_dataset(ml_collections.ConfigDict(dict(name="digits", data_dir="", download=False)), 0)


def _tcfg(epochs):
  return ml_collections.ConfigDict(dict(lr=0.05, momentum=0.9, weight_decay=1e-4, milestones=(2,),
                                        gamma=0.1, batch_size=64, epochs=epochs))


def test_fit_learns_and_resumes_exactly(tmp_path):
  ds = _digits()
  model = models.AllCNN(num_classes=10, width=0.125)
  key = jax.random.key(3)
  full, hist = supervised.fit(model, ds.train, ds.val, ds.info, _tcfg(3), key, str(tmp_path / "a"),
                              log=lambda s: None)
  assert hist["best_val_acc"] > 80.0
  assert accuracy(model, full, ds.test, ds.info) > 80.0
  # Interrupted after 1 epoch, then the same call again: identical result.
  supervised.fit(model, ds.train, ds.val, ds.info, _tcfg(1), key, str(tmp_path / "b"), log=lambda s: None)
  resumed, hist_b = supervised.fit(model, ds.train, ds.val, ds.info, _tcfg(3), key, str(tmp_path / "b"),
                                   log=lambda s: None)
  assert [h["epoch"] for h in hist_b["history"]] == [1, 2, 3]
  chex.assert_trees_all_close(full, resumed, atol=1e-6, rtol=1e-6)


def test_train_step_is_deterministic_and_reduces_loss():
  ds = _digits()
  model = models.AllCNN(num_classes=10, width=0.125)
  tx = supervised.make_optimizer(_tcfg(1), 10)
  mean, std = np.asarray(ds.info.mean, np.float32), np.asarray(ds.info.std, np.float32)
  batch = next(data.batches(ds.train, 64, seed=0))

  def run():
    state = supervised.create_train_state(model, jax.random.key(0), ds.info.image_shape, tx)
    losses = []
    for i in range(8):
      state, m = supervised.train_step(state, batch, jax.random.key(i), mean, std)
      losses.append(float(m["loss"]))
    return state, losses
  s1, l1 = run()
  s2, l2 = run()
  assert l1 == l2
  assert l1[-1] < l1[0]
  chex.assert_trees_all_equal(s1.params, s2.params)


def test_retrain_is_from_scratch_on_retain_data(tmp_path):
  from configs import digits
  config = digits.get_config()
  config.train.epochs = 2
  config.model.width = 0.125
  config.forget.classes = (1, 8)
  setup, original, _ = api.train_original(config, str(tmp_path), log=lambda s: None)
  result, _ = api.run_method(setup, str(tmp_path), "retrain", original, log=lambda s: None)
  flat_o = jax.tree.leaves(original["params"])
  flat_r = jax.tree.leaves(result.variables["params"])
  for a, b in zip(flat_o, flat_r):
    assert not np.any(np.isclose(np.asarray(a), np.asarray(b)) & (np.asarray(a) != 0)).all()
    assert not np.allclose(a, b)
  # The retrain model never saw classes 1 and 8, so it cannot predict them.
  logits = models.__name__ and __import__("jax_unlearn.train.evaluate", fromlist=["x"]).predict_logits(
      setup.model, result.variables, setup.data.forget_test.images, setup.info)
  assert np.mean(np.isin(logits.argmax(-1), [1, 8])) < 0.05
  # Cached: a second call loads the same variables.
  again, _ = api.run_method(setup, str(tmp_path), "retrain", original, log=lambda s: None)
  chex.assert_trees_all_equal(again.variables, result.variables)


def test_four_devices_match_one_device(tmp_path):
  outs = []
  for n in (1, 4):
    out = tmp_path / f"p{n}.npz"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "sharded_steps.py"), str(out), str(n)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"devices {n}" in r.stdout
    outs.append(np.load(out))
  assert set(outs[0].files) == set(outs[1].files)
  for k in outs[0].files:
    np.testing.assert_allclose(outs[0][k], outs[1][k], rtol=2e-4, atol=2e-5, err_msg=k)


def _launch(module, *args, timeout=240):
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                        cwd=ROOT, timeout=timeout)


@pytest.mark.parametrize("override,needle", [
    ("--config.dataset.name=mnist", "--config.dataset.name"),
    ("--config.model.name=vgg", "--config.model.name"),
    ("--config.forget.classes=12", "--config.forget.classes"),
    ("--config.forget.classes=-1", "--config.forget.classes"),
    ("--config.batch_size=0", "--config.batch_size"),
    ("--config.dataset.name=cifar10", "launch.prepare_data"),
])
def test_bad_input_is_one_clear_line(tmp_path, override, needle):
  args = ["--config=configs/digits.py", override, f"--workdir={tmp_path}/w"]
  if "cifar10" in override:
    args.append(f"--config.dataset.data_dir={tmp_path}/no_tfds")
  r = _launch("launch.train", *args)
  assert r.returncode == 2, (r.stdout, r.stderr)
  assert "Traceback" not in r.stderr
  err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
  assert len(err) == 1 and needle in err[0], r.stderr


def test_missing_config_file_and_unknown_method(tmp_path):
  r = _launch("launch.train", "--config=configs/nope.py", f"--workdir={tmp_path}")
  assert r.returncode == 2 and "Traceback" not in r.stderr and "--config=configs/digits.py" in r.stderr
  r = _launch("launch.unlearn", "--config=configs/digits.py", "--config.method=foo", f"--workdir={tmp_path}")
  assert r.returncode == 2 and "Traceback" not in r.stderr and "unknown method 'foo'" in r.stderr
