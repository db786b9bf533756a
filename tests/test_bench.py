"""Smoke tests of the benchmark harness (`launch.bench`) on digits sizes, one timing repetition."""

import pytest

from jax_unlearn.bench import harness


@pytest.fixture
def tiny(monkeypatch):
  # Tiny LFSSD pass, batches and matmul so the smoke tests stay fast; the real sizes are the launcher's.
  monkeypatch.setitem(harness.SIZES, "digits", dict(harness.SIZES["digits"], lfssd_images=128,
                                                    ispf_batch=32, ngf=8, train_batch=32))
  monkeypatch.setattr(harness, "matmul_peak", lambda n=2048, reps=3: 100.0)


def test_interleaved_timing_round_robin():
  calls = []
  first, med = harness._interleaved([lambda: calls.append("a"), lambda: calls.append("b")], reps=2)
  assert calls == ["a", "b", "a", "b", "a", "b"]  # warm-up of each, then rounds: same load for both
  assert len(first) == len(med) == 2 and all(t >= 0 for t in first + med)


@pytest.mark.parametrize("workloads", [("train_step", "lfssd"),
                                       pytest.param(tuple(harness.WORKLOADS), marks=pytest.mark.slow)])
def test_bench_harness_digits_smoke(tiny, workloads):
  res = harness.run("digits", reps=1, torch_side=False, sweep_bench=False, workloads=workloads,
                    log=lambda _: None)
  for name in workloads:
    e = res[name]["jax"]
    assert e["s_per_iter"] > 0 and e["img_per_s"] > 0 and e["compile_s"] >= 0
    assert e["load_avg"] >= 0
  assert res["train_step"]["jax"]["gflop_per_iter"] > 0
  assert 0 < res["train_step"]["jax"]["fraction_of_matmul_peak"]
  assert "train_step_speedup_vs_torch" not in res  # no PyTorch side, no ratio


def test_bench_with_torch_reports_speedups(tiny):
  pytest.importorskip("torch")
  res = harness.run("digits", reps=1, torch_side=True, sweep_bench=False, workloads=("train_step",),
                    log=lambda _: None)
  t, j = res["train_step"]["torch"]["s_per_iter"], res["train_step"]["jax"]["s_per_iter"]
  assert res["train_step_speedup_vs_torch"] == pytest.approx(t / j)
  assert res["torch"]["torch_version"].startswith("2.")


def test_bench_torch_side_runs():
  torch_side = pytest.importorskip("jax_unlearn.bench.torch_side")
  sz = harness.SIZES["digits"]
  for fn in (torch_side.make_train_step(sz["shape"], 10, sz["width"], 32),
             torch_side.make_ispf_loop(sz["shape"], 10, sz["width"], 32, 16, 8, 2),
             torch_side.make_lfssd_importance(sz["shape"], 10, sz["width"], 64, 128)):
    assert torch_side.timeit(fn, reps=1) > 0


def test_torch_postfilter_equals_jax_postfilter():
  """The PyTorch ISPF loop distils towards the same PostFilter target (Eq. 8-9) as the JAX engine."""
  torch = pytest.importorskip("torch")
  import numpy as np

  from jax_unlearn.bench import torch_side
  from jax_unlearn.methods import distill
  z = np.random.default_rng(0).normal(size=(6, 10)).astype(np.float32) * 3
  z[:, 3] += 4.0  # forget class often above tau
  forget = np.zeros(10, bool)
  forget[[3, 7]] = True
  want = np.asarray(distill.postfilter(z, forget, 0.01, True))
  got = torch_side._postfilter(torch.from_numpy(z), torch.from_numpy(forget), 0.01).numpy()
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_sweep_vs_sequential_reports_speedup(tiny):
  out = harness.sweep_vs_sequential(reps=1, n_classes=2, variants=("matmul",), peak=100.0)
  assert out["runs"] == 2 and out["sequential_s"] > 0 and out["vmap_matmul_conv_s"] > 0
  assert out["sweep_speedup_vs_sequential"] == pytest.approx(out["vmap_matmul_conv_speedup_vs_sequential"])
  # Both sides do the same FLOPs, so their GFLOP/s ratio is the measured speed-up.
  assert out["gflop_total"] > 0
  assert out["vmap_matmul_conv_gflop_per_s"] / out["sequential_gflop_per_s"] == pytest.approx(
      out["vmap_matmul_conv_speedup_vs_sequential"])
  assert out["speedup_bound_at_matmul_peak"] == pytest.approx(100.0 / out["sequential_gflop_per_s"])


def test_device_check_script_refuses_a_cpu_only_machine_with_one_line():
  """bench/device_check.sh measures an accelerator; on a CPU-only JAX it stops at once (exit 2)."""
  import os
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHON=sys.executable)
  r = subprocess.run(["bash", os.path.join(root, "bench", "device_check.sh"), "/nonexistent-not-used"],
                     capture_output=True, text=True, env=env, timeout=300)
  assert r.returncode == 2, r.stderr
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: JAX sees no accelerator"), r.stderr
