"""Issue 8 (reliability): bad inputs, kill-and-resume, atomic results, NaN detection, determinism.

Bad inputs already covered elsewhere (unknown dataset/model, forget class out of range or negative,
batch size 0, missing config file, unknown method, unprepared TFDS data: tests/test_train.py and
tests/test_data.py) are not repeated here.
"""

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jax_unlearn import api, cli, io
from jax_unlearn.errors import CheckpointError, NumericalError
from jax_unlearn.train import checkpoint, supervised

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Tiny runs: the launchers are called with exactly these overrides, and the in-process reference runs
# use the same config, so their metrics must agree exactly.
TINY = ("--config.train.epochs=2", "--config.model.width=0.125")
TIMING_KEYS = {"train_s", "elapsed_s", "wall_s", "time_s"}


def _config(**train):
  from configs import digits
  c = digits.get_config()
  c.train.epochs = 2
  c.model.width = 0.125
  c.train.update(train)
  return c


def _cmd(module, workdir, *extra):
  return [sys.executable, "-m", module, "--config=configs/digits.py", *TINY, *extra, f"--workdir={workdir}"]


def _run(cmd, timeout=240):
  return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                        env={**os.environ, "PYTHONPATH": ROOT})


def _orig(workdir: str) -> str:
  """The (single) original-model directory of a workdir: W/original/seed0-<fingerprint>."""
  (d,) = glob.glob(os.path.join(workdir, "original", "seed0-*"))
  return d


def _one_error_line(stderr: str) -> str:
  assert "Traceback" not in stderr, stderr[-3000:]
  lines = [line for line in stderr.splitlines() if line.startswith("error:")]
  assert len(lines) == 1, stderr[-3000:]
  return lines[0]


def _strip_timing(obj):
  if isinstance(obj, dict):
    return {k: _strip_timing(v) for k, v in obj.items() if k not in TIMING_KEYS}
  if isinstance(obj, list):
    return [_strip_timing(v) for v in obj]
  return obj


def _expect_user_error(fn, capsys) -> str:
  """`cli.run_main(fn)` must exit with code 2 and print exactly one `error:` line."""
  with pytest.raises(SystemExit) as e:
    cli.run_main(fn)
  assert e.value.code == 2
  return _one_error_line(capsys.readouterr().err)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A workdir holding the original model of `_config()`, trained in this process."""
  w = str(tmp_path_factory.mktemp("trained"))
  _, _, m = api.train_original(_config(), w, log=lambda s: None)
  return w, m


# ---------------------------------------------------------------------------------------------------
# Bad inputs: one line naming the problem and the fix, exit code 2.

def _set(c, dotted, value):
  *path, leaf = dotted.split(".")
  for p in path:
    c = c[p]
  c[leaf] = value


@pytest.mark.parametrize("field,value,needle", [
    ("train.lr", -0.1, "--config.train.lr=0.05"),
    ("forget.classes", (), "--config.forget.classes=3"),
    ("ssd.alpha", -1.0, "--config.ssd.alpha"),
    ("lfssd.lam", -1.0, "--config.lfssd.lam"),
    ("ispf.lr_g", -1e-3, "--config.ispf.lr_g"),
    ("ispf.batch_size", 0, "--config.ispf.batch_size"),
    ("distruction.lam", -0.5, "--config.distruction.lam"),
])
def test_bad_config_value_is_one_line(tmp_path, capsys, field, value, needle):
  c = _config()
  _set(c, field, value)
  line = _expect_user_error(lambda: api.load_setup(c, str(tmp_path), ("ispf", "ssd", "lfssd",
                                                                      "distruction")), capsys)
  assert needle in line, line


def test_unwritable_workdir(tmp_path, capsys):
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  line = _expect_user_error(lambda: api.load_setup(_config(), str(blocker / "w")), capsys)
  assert "is a file, not a directory" in line and "--workdir" in line
  # A directory nobody can create files in (works as root too, unlike chmod).
  line = _expect_user_error(lambda: api.load_setup(_config(), "/proc/jax_unlearn_w"), capsys)
  assert "is not writable" in line and "--workdir" in line


@pytest.mark.parametrize("flag,needle", [("--config.train.lr=abc", "could not convert string to float"),
                                         ("--config.train.no_such_field=1", "names no field")])
def test_bad_flag_value_is_one_line_exit_2(tmp_path, flag, needle):
  r = _run([sys.executable, "-m", "launch.unlearn", "--config=configs/digits.py", flag,
            f"--workdir={tmp_path}/w"])
  assert r.returncode == 2, r.stderr[-2000:]
  line = _one_error_line(r.stderr)
  assert needle in line and "fix that flag" in line
  assert not os.path.exists(tmp_path / "w")  # nothing started


def test_unreadable_config_file(tmp_path):
  # A directory cannot be read as a file, even by root (chmod 000 does not stop root).
  r = _run([sys.executable, "-m", "launch.train", f"--config={tmp_path}", f"--workdir={tmp_path}/w"])
  assert r.returncode == 2
  line = _one_error_line(r.stderr)
  assert "could not be loaded" in line and "--config=configs/digits.py" in line


_LAUNCHER = """
from absl import flags
from ml_collections import config_flags
from jax_unlearn import cli
_C = config_flags.DEFINE_config_file("config", "configs/digits.py", "")
def main(argv):
  cli.run_main(lambda: print("dataset", cli.config_value(_C).dataset.name))
if __name__ == "__main__":
  cli.run_app(main)
"""


@pytest.mark.parametrize("text,needle", [("def get_config(:\n", "SyntaxError"),
                                         ("def get_config():\n  raise RuntimeError('boom')\n", "boom")])
def test_broken_config_file_under_run_app(tmp_path, text, needle):
  """A config file that fails while absl parses the flags (before `main`): one line via `run_app`."""
  (tmp_path / "launcher.py").write_text(_LAUNCHER)
  (tmp_path / "broken.py").write_text(text)
  r = _run([sys.executable, str(tmp_path / "launcher.py"), f"--config={tmp_path}/broken.py"])
  assert r.returncode == 2
  line = _one_error_line(r.stderr)
  assert needle in line and "--config=configs/digits.py" in line
  r = _run([sys.executable, str(tmp_path / "launcher.py"), "--config=configs/digits.py"])
  assert r.returncode == 0 and "dataset digits" in r.stdout, r.stderr[-2000:]


def test_another_model_gets_its_own_directory(trained, tmp_path):
  """A model of another config never loads (or overwrites) the cached one: it is trained beside it."""
  w, _ = trained
  wd = str(tmp_path / "w")
  shutil.copytree(w, wd)
  before = _orig(wd)
  c = _config()
  c.model.width = 0.25
  setup, _, _ = api.train_original(c, wd, log=lambda s: None)
  assert setup.original_dir != before and os.path.exists(before)
  with pytest.raises(CheckpointError, match="model"):  # a directory's meta still guards its content
    checkpoint.load_variables(os.path.join(before, "final"),
                              jax.eval_shape(lambda: setup.model.init(jax.random.key(0),
                                                                      np.zeros((1, 8, 8, 1)))),
                              {"model": c.model.to_dict()})


def test_corrupted_checkpoints_are_reported_without_traceback(trained, tmp_path):
  w, _ = trained
  final = os.path.join(_orig(w), "final")
  ckpt = os.path.join(_orig(w), "ckpt")
  # (a) the finished model's variables, (b) a resumable training checkpoint.
  for name, victim, drop in (("final", final, None), ("ckpt", ckpt, final)):
    wd = str(tmp_path / name)
    shutil.copytree(w, wd)
    target = victim.replace(w, wd)
    data_files = [f for f in glob.glob(os.path.join(target, "**", "*"), recursive=True)
                  if os.path.isfile(f) and f"{os.sep}d{os.sep}" in f]
    assert data_files
    for f in data_files:
      os.truncate(f, 7)
    if drop:
      shutil.rmtree(drop.replace(w, wd))
    # Same config: the finished model is loaded (a), or (final removed) its last checkpoint (b).
    r = _run(_cmd("launch.train", wd))
    assert r.returncode == 2, r.stderr[-2000:]
    line = _one_error_line(r.stderr)
    assert "could not be restored" in line and "corrupted" in line and "delete" in line, line


# ---------------------------------------------------------------------------------------------------
# Kill and resume.

def _kill_once_checkpointed(cmd, pattern, timeout=180):
  """Starts `cmd`, SIGKILLs it as soon as `pattern` (a committed orbax step) exists."""
  p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env={**os.environ, "PYTHONPATH": ROOT})
  t0 = time.time()
  try:
    while not glob.glob(pattern):
      assert p.poll() is None, "the run ended before it wrote a checkpoint"
      assert time.time() - t0 < timeout
      time.sleep(0.02)
  finally:
    p.kill()  # SIGKILL; a no-op when the run already ended (the assertion above then fails)
    p.wait()
  return p.returncode


def test_supervised_kill_and_resume_matches_uninterrupted(trained, tmp_path):
  w_ref, m_ref = trained
  wd = str(tmp_path / "killed")
  cmd = _cmd("launch.train", wd)
  rc = _kill_once_checkpointed(cmd, os.path.join(wd, "original", "seed0-*", "ckpt", "1",
                                                 "commit_success.txt"))
  assert rc == -signal.SIGKILL
  assert not os.path.exists(os.path.join(wd, "metrics.json"))
  r = _run(cmd)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "[original] resumed at epoch 1/2" in r.stdout
  with open(os.path.join(wd, "metrics.json")) as f:
    resumed = json.load(f)
  assert resumed.pop("directory") == _orig(wd)
  assert [h["epoch"] for h in resumed["history"]] == [1, 2]
  # Same seed, same device count: exactly the same numbers (timings aside).
  assert _strip_timing(resumed) == _strip_timing(json.loads(json.dumps(m_ref)))


@pytest.mark.slow
def test_distill_kill_and_resume_matches_uninterrupted(trained, tmp_path):
  w_ref, _ = trained
  ispf = ("--config.method=ispf", "--config.ispf.epochs=3", "--config.ispf.warmup=1",
          "--config.ispf.ngf=8", "--config.ispf.nz=16", "--config.ispf.loops_per_epoch=1",
          "--config.ispf.kd_steps=2", "--config.ispf.batch_size=32", "--config.ispf.checkpoint_every=1",
          "--config.ispf.plots=False")
  out = {}
  for name in ("full", "killed"):
    wd = str(tmp_path / name)
    shutil.copytree(os.path.join(w_ref, "original"), os.path.join(wd, "original"))
    cmd = _cmd("launch.unlearn", wd, *ispf)
    if name == "killed":
      ck = os.path.join(api.run_dir(_config(), wd, "ispf"), "ckpt-*", "2", "commit_success.txt")
      assert _kill_once_checkpointed(cmd, ck) == -signal.SIGKILL
      assert not os.path.exists(os.path.join(wd, "metrics.json"))
    r = _run(cmd)
    assert r.returncode == 0, r.stderr[-2000:]
    assert ("resumed at epoch" in r.stdout) == (name == "killed"), r.stdout
    with open(os.path.join(wd, "metrics.json")) as f:
      out[name] = _strip_timing(json.load(f))
  assert out["killed"] == out["full"]


@pytest.mark.slow
def test_distruction_kill_and_resume_matches_uninterrupted(trained, tmp_path):
  """SIGKILL during the BGD preparation, and (separately) during forgetting: the same command resumes
  the phase from its last checkpoint and writes exactly the uninterrupted run's metrics."""
  w_ref, _ = trained
  dis = ("--config.method=distruction", "--config.distruction.prep_epochs=3")
  out, logs = {}, {}
  for name, pattern in (("full", None),
                        ("prep", "original/seed0-*/distruction_posterior-*_ckpt/1/commit_success.txt"),
                        ("forget", "runs/*/distruction/forget-*/*/commit_success.txt")):
    wd = str(tmp_path / name)
    shutil.copytree(os.path.join(w_ref, "original"), os.path.join(wd, "original"))
    if name == "forget":  # the posterior prepared by the uninterrupted run
      for f in glob.glob(os.path.join(_orig(str(tmp_path / "full")), "distruction_posterior-*")):
        shutil.copytree(f, os.path.join(_orig(wd), os.path.basename(f)))
    cmd = _cmd("launch.unlearn", wd, *dis)
    if pattern:
      _kill_once_checkpointed(cmd, os.path.join(wd, pattern))
      assert not os.path.exists(os.path.join(wd, "metrics.json"))
    r = _run(cmd)
    assert r.returncode == 0, r.stderr[-2000:]
    logs[name] = r.stdout
    with open(os.path.join(wd, "metrics.json")) as f:
      out[name] = _strip_timing(json.load(f))
  assert "[distruction preparation] resumed at epoch 1/3" in logs["prep"], logs["prep"]
  # The first forgetting checkpoint is the first chunk ending on a multiple of checkpoint_every.
  assert "[distruction] resumed at chunk " in logs["forget"], logs["forget"]
  # Paths of the run's own plots and its forgetting wall time differ; everything else must not.
  drop = lambda m: {**m, "info": {k: v for k, v in m["info"].items()  # noqa: E731
                                  if "curve" not in k and k != "forget_s"}}
  assert drop(out["prep"]) == drop(out["full"])
  assert drop(out["forget"]) == drop(out["full"])


# ---------------------------------------------------------------------------------------------------
# Atomic results, NaN detection, determinism.

def test_atomic_write_keeps_old_file_on_failure(tmp_path):
  path = str(tmp_path / "metrics.json")
  io.atomic_write_json(path, {"a": 1.0, "nan": float("nan")})
  with open(path) as f:
    assert json.load(f) == {"a": 1.0, "nan": None}
  with pytest.raises(TypeError):
    io.atomic_write_json(path, {"a": object()})  # fails while serialising
  with open(path) as f:
    assert json.load(f) == {"a": 1.0, "nan": None}
  assert os.listdir(tmp_path) == ["metrics.json"]  # no temporary file left behind


def test_atomic_write_survives_sigkill(tmp_path):
  """A writer killed in a loop of rewrites never leaves a truncated file."""
  path = str(tmp_path / "results.json")
  io.atomic_write_json(path, {"rows": list(range(200_000))})
  code = ("import sys; sys.path.insert(0, %r)\nfrom jax_unlearn import io\n"
          "while True: io.atomic_write_json(%r, {'rows': list(range(200_000))})\n" % (ROOT, path))
  p = subprocess.Popen([sys.executable, "-c", code])
  time.sleep(1.5)
  os.kill(p.pid, signal.SIGKILL)
  p.wait()
  with open(path) as f:
    assert len(json.load(f)["rows"]) == 200_000


def test_failed_method_does_not_overwrite_results(trained, tmp_path, monkeypatch):
  w_ref, _ = trained
  wd = str(tmp_path / "w")
  shutil.copytree(os.path.join(w_ref, "original"), os.path.join(wd, "original"))
  c = _config()
  c.method = "finetune"
  old = {"method": "finetune", "acc_forget": 1.0}
  for p in (os.path.join(wd, "metrics.json"), os.path.join(api.run_dir(c, wd, "finetune"), "metrics.json")):
    io.atomic_write_json(p, old)

  def nan_method(ctx):
    from jax_unlearn.methods import base
    return base.UnlearnResult(variables=jax.tree.map(lambda x: x * np.nan, ctx.original), info={})

  monkeypatch.setattr(api.methods_lib, "get", lambda name: nan_method)
  with pytest.raises(NumericalError, match="--config.finetune.lr"):
    api.unlearn(c, wd, log=lambda s: None)
  for p in (os.path.join(wd, "metrics.json"), os.path.join(api.run_dir(c, wd, "finetune"), "metrics.json")):
    with open(p) as f:
      assert json.load(f) == old


def test_nan_stops_training_and_keeps_last_good_checkpoint(trained, tmp_path):
  w_ref, _ = trained
  setup = api.load_setup(_config())
  ds = setup.dataset
  ckpt_dir = str(tmp_path / "ckpt")
  key = api.phase_key(setup.config, "original")
  good = supervised.recipe(_config(epochs=1).train, 64)
  supervised.fit(setup.model, ds.train, ds.val, ds.info, good, key, ckpt_dir, log=lambda s: None)
  # Same run continued with an absurd learning rate: the loss explodes in epoch 2.
  bad = supervised.recipe(_config(epochs=3, lr=1e6).train, 64)
  with pytest.raises(NumericalError) as e:
    supervised.fit(setup.model, ds.train, ds.val, ds.info, bad, key, ckpt_dir, log=lambda s: None,
                   name="original")
  msg = str(e.value)
  assert "[original]" in msg and "in epoch 2 of 3" in msg and "last good checkpoint (epoch 1)" in msg
  assert "--config.train.lr" in msg
  assert checkpoint.Checkpointer(ckpt_dir).latest_step() == 1
  # From scratch: no checkpoint exists yet, and the message says so.
  with pytest.raises(NumericalError, match="no checkpoint was written yet"):
    supervised.fit(setup.model, ds.train, ds.val, ds.info, bad, key, str(tmp_path / "c2"),
                   log=lambda s: None, name="original")


def test_distill_nan_names_epoch_and_keeps_last_good_checkpoint(trained, tmp_path):
  """An absurd student learning rate makes a distillation epoch (after the checkpointed warm-up) NaN:
  the error names the phase, the epoch and the kept checkpoint of the epoch before."""
  w_ref, _ = trained
  wd = str(tmp_path / "w")
  shutil.copytree(os.path.join(w_ref, "original"), os.path.join(wd, "original"))
  c = _config()
  c.method = "ispf"
  c.ispf.update(dict(epochs=2, warmup=1, ngf=8, nz=16, loops_per_epoch=1, kd_steps=2, batch_size=32,
                     checkpoint_every=1, plots=False, lr=1e12))
  with pytest.raises(NumericalError) as e:
    api.unlearn(c, wd, log=lambda s: None)
  msg = str(e.value)
  m = re.search(r"^\[ispf\] .* NaN/inf \(distillation loop\) in epoch (\d) of 3", msg)
  assert m and int(m.group(1)) >= 2, msg
  bad = int(m.group(1))
  assert f"last good checkpoint (epoch {bad - 1})" in msg and "--config.ispf.lr" in msg, msg
  (ck,) = glob.glob(os.path.join(api.run_dir(c, wd, "ispf"), "ckpt-*"))
  assert checkpoint.Checkpointer(ck).latest_step() == bad - 1
  assert not os.path.exists(os.path.join(wd, "metrics.json"))


def test_same_command_twice_gives_identical_metrics(trained, tmp_path):
  _, m_ref = trained
  _, _, m = api.train_original(_config(), str(tmp_path / "again"), log=lambda s: None)
  assert _strip_timing(m) == _strip_timing(m_ref)


def test_corrupted_checkpoint_raises_checkpoint_error_in_process(trained, tmp_path):
  w, _ = trained
  d = str(tmp_path / "final")
  shutil.copytree(os.path.join(_orig(w), "final"), d)
  for f in glob.glob(os.path.join(d, "variables", "d", "*")):
    os.truncate(f, 3)
  setup = api.load_setup(_config())
  target = jax.eval_shape(lambda: setup.model.init(jax.random.key(0), np.zeros((1, 8, 8, 1))))
  with pytest.raises(CheckpointError, match="corrupted"):
    checkpoint.load_variables(d, {k: v for k, v in target.items() if k in ("params", "batch_stats")})
