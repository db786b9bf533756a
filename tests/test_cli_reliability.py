"""Launcher behaviour a user sees: one `error:` line (exit 2) for bad input, Ctrl-C, a full disk or a
busy workdir; --help lists what can be set; nothing written is lost."""

import os
import signal
import subprocess
import sys
import time

import pytest

from jax_unlearn import api
from jax_unlearn.errors import CheckpointError, ConfigError, WorkdirBusyError
from jax_unlearn.io import workdir_lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config=configs/digits.py", "--config.model.width=0.125", "--compile_cache=none"]


def _launch(module, *args, timeout=300, env=None):
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=ROOT,
                        timeout=timeout, env=env)


def _one_error_line(r, needle):
  assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
  assert "Traceback" not in r.stderr, r.stderr[-3000:]
  err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
  assert len(err) == 1 and needle in err[0], r.stderr
  assert "compile:" not in r.stderr  # no statistics line after an error
  return err[0]


@pytest.mark.parametrize("module,args,needle", [
    ("launch.train", ["--config.train.milestones=x"], "--config.train.milestones"),
    ("launch.sweep", ["--config.method=ispf", "--classes=a,3"], "--classes takes integers"),
    ("launch.sweep", ["--config.method=ispf", "--classes=3,3"], "twice"),
    ("launch.unlearn", ["--config.method=ispf", "--config.ispf.epochs=-1"], "--config.ispf.epochs"),
    ("launch.unlearn", ["--config.method=ispf", "--config.forget.mode=random"], "forget.mode"),
])
def test_bad_input_stops_before_any_training(tmp_path, module, args, needle):
  r = _launch(module, *TINY, *args, f"--workdir={tmp_path}/w")
  _one_error_line(r, needle)
  assert not os.path.exists(tmp_path / "w" / "original")  # checked before the original is trained


def test_help_exits_0_and_lists_methods_and_fields():
  r = _launch("launch.experiment", "--help")
  assert r.returncode == 0, r.stderr[-2000:]
  assert "distruction" in r.stdout and "--config.train.epochs=30" in r.stdout
  assert "--config.metrics.names=" in r.stdout


def test_busy_workdir_is_refused_with_the_owner(tmp_path):
  with workdir_lock(str(tmp_path)):
    with workdir_lock(str(tmp_path)):  # re-entrant in one process
      pass
    r = _launch("launch.train", *TINY, "--config.train.epochs=1", f"--workdir={tmp_path}")
    line = _one_error_line(r, "in use by process")
    assert str(os.getpid()) in line
  with workdir_lock(str(tmp_path)):  # released: can be taken again
    pass


def test_lock_of_a_dead_process_is_taken_over(tmp_path):
  p = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); "
                        "from jax_unlearn.io import workdir_lock\n"
                        "with workdir_lock(sys.argv[2]):\n  print('held', flush=True); time.sleep(60)",
                        ROOT, str(tmp_path)], stdout=subprocess.PIPE, text=True)
  assert p.stdout.readline().strip() == "held"
  with pytest.raises(WorkdirBusyError, match=str(p.pid)):
    with workdir_lock(str(tmp_path)):
      pass
  p.kill()
  p.wait()
  with workdir_lock(str(tmp_path)):  # the kernel dropped the dead owner's lock
    pass


def test_truncated_meta_json_is_one_line(tmp_path):
  from configs import digits
  c = digits.get_config()
  c.model.width, c.train.epochs = 0.125, 1
  setup, _, _ = api.train_original(c, str(tmp_path), log=lambda m: None)
  meta = os.path.join(setup.original_dir, "final", "meta.json")
  with open(meta, "w") as f:
    f.write('{"mod')
  with pytest.raises(CheckpointError, match="meta.json is unreadable"):
    api.train_original(c, str(tmp_path), log=lambda m: None)
  r = _launch("launch.train", *TINY, "--config.train.epochs=1", f"--workdir={tmp_path}")
  _one_error_line(r, "meta.json is unreadable")


def test_ctrl_c_is_one_line_and_the_run_resumes(tmp_path):
  # A shell's background job (`cmd &`, nohup) starts with SIGINT ignored, and Python then installs
  # no KeyboardInterrupt handler: restore the default in the child so the test does not depend on
  # how pytest was started. 10 epochs, interrupted after the second, leave the signal time to land.
  args = [*TINY, "--config.train.epochs=10", f"--workdir={tmp_path}"]
  p = subprocess.Popen([sys.executable, "-m", "launch.train", *args], cwd=ROOT, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True,
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  for line in p.stdout:
    if "epoch 2/10" in line:
      break
  p.send_signal(signal.SIGINT)
  _, err = p.communicate(timeout=120)
  assert p.returncode == 130, err[-2000:]
  assert "Traceback" not in err
  lines = [line for line in err.splitlines() if line.startswith("error:")]
  assert len(lines) == 1 and "interrupted" in lines[0] and "run the same command again" in lines[0]
  r = _launch("launch.train", *args)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "resumed at epoch" in r.stdout


def test_unknown_method_suggests_the_closest():
  from jax_unlearn.methods import base
  with pytest.raises(ConfigError, match="did you mean 'lfssd'"):
    base.spec("lfsd")


def _can_mount_tmpfs() -> bool:
  """Root with a working `mount -t tmpfs` (tried once, at collection, in a scratch directory)."""
  if os.geteuid() != 0 or not os.path.exists("/bin/mount"):
    return False
  import tempfile
  with tempfile.TemporaryDirectory() as d:
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", d],
                      capture_output=True).returncode:
      return False
    subprocess.run(["umount", d], check=True)
  return True


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs root and a mountable tmpfs")
def test_full_disk_is_one_line_and_resumes_once_there_is_space(tmp_path):
  mnt = tmp_path / "small"
  mnt.mkdir()
  assert subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mnt)]).returncode == 0
  try:
    args = [*TINY, "--config.train.epochs=2", f"--workdir={mnt}/w"]
    t0 = time.time()
    r = _launch("launch.train", *args)
    # The premise: the tiny model's checkpoints do not fit in 400 kB (if they ever do, shrink the mount).
    assert r.returncode != 0, "400 kB was enough for this model: lower the tmpfs size"
    line = _one_error_line(r, "no space left")
    assert len(r.stderr.splitlines()) < 20, r.stderr[-3000:]
    assert time.time() - t0 < 240, line
    subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
    r = _launch("launch.train", *args)
    assert r.returncode == 0, r.stderr[-2000:]
  finally:
    subprocess.run(["umount", "-l", str(mnt)])
