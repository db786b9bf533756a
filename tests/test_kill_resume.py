"""SIGKILL in every long phase of `launch.experiment`, then the same command again, gives exactly the
metrics of an uninterrupted run (the fault is injected at a chosen chunk with `JAX_UNLEARN_KILL_AT`,
after or before that chunk's checkpoint is written)."""

import json
import os
import signal
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--config=configs/digits.py", "--compile_cache=none",
        "--config.methods=original,retrain,finetune,ispf,distruction",
        "--config.model.width=0.125", "--config.train.epochs=3",
        "--config.ispf.epochs=2", "--config.ispf.warmup=1", "--config.ispf.loops_per_epoch=2",
        "--config.ispf.kd_steps=3", "--config.ispf.batch_size=32", "--config.ispf.ngf=16",
        "--config.ispf.nz=32", "--config.finetune.epochs=2", "--config.distruction.prep_epochs=2",
        "--config.distruction.forget_steps=4", "--config.distruction.select_every=2",
        "--config.distruction.checkpoint_every=2", "--config.distruction.mc_iters=2",
        "--config.metrics.shadow_epochs=2", "--config.metrics.num_shadow=2",
        "--config.metrics.ain_max_epochs=2", "--config.metrics.mia_max_samples=300"]
# (phase, chunk[, unsaved]) in the order the phases run: every checkpointed phase, plus the short,
# unsaved ones that a rerun recomputes. The shadows and Retrain's relearning run while the first
# row (original) is evaluated; the killed runs also kill the table midway.
KILLS = ["original:2", "retrain:1:unsaved", "mia_ii shadows:1", "ain relearning:1", "finetune:1",
         "ispf:2", "distruction preparation:1:unsaved", "distruction:1"]
METRICS = ("acc_forget", "acc_retain", "mia_i", "mia_ii", "mia_entropy", "ain", "kl_to_retrain")


def _run(workdir, kill=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("JAX_UNLEARN_KILL_AT", None)
  if kill:
    env["JAX_UNLEARN_KILL_AT"] = kill
  return subprocess.run([sys.executable, "-m", "launch.experiment", *ARGS, f"--workdir={workdir}"],
                        capture_output=True, text=True, cwd=ROOT, env=env, timeout=1800)


def _rows(workdir):
  with open(os.path.join(workdir, "results.json")) as f:
    return {r["method"]: {k: r[k] for k in METRICS} for r in json.load(f)["rows"]}


@pytest.mark.slow
def test_sigkill_in_every_phase_then_rerun_gives_the_uninterrupted_table(tmp_path):
  ref = _run(tmp_path / "ref")
  assert ref.returncode == 0, ref.stderr[-3000:]
  w = tmp_path / "killed"
  for kill in KILLS:
    r = _run(w, kill)
    assert r.returncode == -signal.SIGKILL, (kill, r.returncode, r.stderr[-3000:])
  final = _run(w)
  assert final.returncode == 0, final.stderr[-3000:]
  assert _rows(w) == _rows(tmp_path / "ref")
