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


def _sharded_steps(tmp_path):
  """`tests/sharded_steps.py` on 1 and on 4 forced host devices (two processes, in parallel)."""
  procs = {n: subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "sharded_steps.py"),
                                str(tmp_path / f"s{n}.npz"), str(n)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for n in (1, 4)}
  for n, p in procs.items():
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 0, stderr[-2000:]
    assert f"devices {n}" in stdout
  return {n: np.load(tmp_path / f"s{n}.npz") for n in procs}


def _leaves(run, prefix):
  return {k[len(prefix):]: run[k].astype(np.float64) for k in run.files if k.startswith(prefix + "[")}


EPS32 = float(np.finfo(np.float32).eps)
# float32 tolerances, as multiples of eps32 (1.19e-7). Each gradient leaf is a chain of reductions
# of length up to n = N·H·W = 4096 (BN statistics and backward sums, conv weight gradients; conv
# taps sum over 3·3·C_in <= 432 values). Rounding errors of a length-n sum behave like a random walk:
# relative error ~ sqrt(n)·eps, not the worst case n·eps (Higham & Mary, SIAM J. Sci. Comput. 41(5),
# 2019). sqrt(4096) = 64, times 4 for the few chained reductions and for conditioning, gives
# GRAD_ULPS: the gradient error relative to the leaf's largest entry. BN outputs pass through up to 8
# BN layers, each adding its own: BN_OUT_ULPS. Measured on an AMD EPYC: gradients <= 12 eps, BN outputs
# <= 55 eps (layer 7). A reduced-precision kernel (bf16: 2^-8 = 33000 eps; TF32: 2^-11 = 4100 eps)
# fails both; a real algorithmic difference (e.g. per-shard BN statistics) fails the float64 check.
GRAD_ULPS, BN_OUT_ULPS = 256, 1024


def test_four_devices_match_one_device(tmp_path):
  """Data parallelism over 4 devices is the 1-device algorithm (global BN statistics via the
  all-reduce XLA inserts), and the float32 numbers of either are float32 rounding of the exact ones.

  * float64: 1-step gradients, BN outputs and 5-step params/batch_stats of N=4 equal N=1 to 1e-12
    relative (measured ~2e-15): the algorithm is the same.
  * float32, N=1 and N=4 each: every BN output is within BN_OUT_ULPS·eps32·σ of float64 (so a ReLU
    decision can differ from float64's only that close to the kink), and the 1-step gradient within
    GRAD_ULPS·eps32·max|g| of the float64 gradient *on the float32 run's side
    of every ReLU kink*. The loss is only piecewise smooth: a ReLU input within rounding of 0 (at
    this batch one BN_2 output is -1.1e-7 σ in float64) takes either side depending on reduction
    order and kernel choice, and the gradient jumps by that unit's whole contribution (BN_2 bias by
    2.4e-4 of 1.5e-2, Conv_1 kernel by 3.8e-4, ...). Those jumps made N=1 and N=4 float32 differ on
    an Intel Xeon; comparing float32 across device counts, or 5-step float32 parameters, is not a
    test of the algorithm.
  """
  runs = _sharded_steps(tmp_path)
  for prefix in ("f64/grad", "f64/state", "f64/z"):
    one, four = _leaves(runs[1], prefix), _leaves(runs[4], prefix)
    assert one and set(one) == set(four), prefix
    for k in one:
      err = np.abs(four[k] - one[k]).max() / np.abs(one[k]).max()
      assert err <= 1e-12, f"{prefix}{k}: float64 N=4 differs from N=1 by {err:.1e} of its max"
  for n, run in runs.items():
    z32, z64 = _leaves(run, "f32/z"), _leaves(run, "f64/z")
    for k in z64:
      sigma = z64[k].reshape(-1, z64[k].shape[-1]).std(0)
      ulps = (np.abs(z32[k] - z64[k]) / sigma).max() / EPS32
      flips = int(np.sum((z32[k] > 0) != (z64[k] > 0)))
      assert ulps <= BN_OUT_ULPS, (f"N={n} BN output {k}: float32 off by {ulps:.0f} eps32·σ "
                                   f"({flips} ReLU flips)")
    g32, ref, g64 = (_leaves(run, p) for p in ("f32/grad", "f64/grad_f32relu", "f64/grad"))
    report = {k: np.abs(g32[k] - ref[k]).max() / np.abs(g64[k]).max() / EPS32 for k in g64}
    worst = max(report, key=report.get)
    assert report[worst] <= GRAD_ULPS, (
        f"N={n}: float32 gradient {worst} off by {report[worst]:.0f} eps32 of max|g| (all: "
        + ", ".join(f"{k} {v:.0f}" for k, v in sorted(report.items())) + ")")


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
