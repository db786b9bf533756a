"""Timing harness of `launch.bench`: JAX vs PyTorch on the same workloads, sweep vs sequential runs.

Every number is a median over `reps` steady-state repetitions (after one warm-up call); JAX compile time
(first call minus a steady-state call) is reported separately. The JAX and the PyTorch iteration (and the
sweep and its sequential runs) are timed *interleaved* — jax, torch, jax, torch, ... — so that both sides
see the same machine load and their ratio stays meaningful on a shared machine, where absolute times
under load are upper bounds. Each entry records the 1-minute load average at its start and end.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

from jax_unlearn import sweep
from jax_unlearn.methods import data_free, distill, lfssd, ssd
from jax_unlearn.models import AllCNN, init_variables
from jax_unlearn.models import conv as conv_lib
from jax_unlearn.train import supervised

SIZES = {
    # AllCNN width 1 on 32x32x3, batch 256 (the paper's CIFAR/SVHN setting, ISPF generator ngf 64).
    "paper": dict(shape=(32, 32, 3), width=1.0, train_batch=256, ispf_batch=256, ngf=64, nz=256,
                  lfssd_batch=256, lfssd_images=512),
    # configs/digits.py: AllCNN width 0.25 on 8x8x1, batch 64; ISPF batch 128, ngf 64.
    "digits": dict(shape=(8, 8, 1), width=0.25, train_batch=64, ispf_batch=128, ngf=64, nz=256,
                   lfssd_batch=128, lfssd_images=512),
}
K = 10
# The engine's conv choices (`distill.Engine.conv_interceptor`): None = its default (loop-safe convs).
CONV_INTERCEPTORS = {"loop_safe": conv_lib._loop_safe_convs, "matmul": conv_lib.matmul_convs}
MEAN, STD = (0.5,), (0.25,)


def _load():
  return round(os.getloadavg()[0], 2)


def _once(fn) -> float:
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def _time(fn, reps):
  """(first-call seconds, median steady-state seconds); `fn` must block until its result is ready."""
  first, (t,) = _interleaved([fn], reps)
  return first[0], t


def _interleaved(fns, reps):
  """Times callables round-robin: one warm-up call each (its seconds returned: the JAX compile), then
  `reps` rounds of one call each. Returns (first-call seconds, median seconds) per callable."""
  first = [_once(f) for f in fns]
  times = [[] for _ in fns]
  for _ in range(max(1, reps)):
    for f, ts in zip(fns, times):
      ts.append(_once(f))
  return first, [float(np.median(ts)) for ts in times]


def matmul_peak(n=2048, reps=3) -> float:
  """Measured f32 matmul throughput (GFLOP/s) of an n^3 jnp.dot: the 'peak' the benchmarks are
  compared against."""
  a = jax.random.normal(jax.random.key(0), (n, n))
  f = jax.jit(jnp.dot)
  _, t = _time(lambda: f(a, a).block_until_ready(), reps)
  return 2 * n ** 3 / t / 1e9


def _flops(jitted, *args) -> float | None:
  try:
    ca = jitted.lower(*args).compile().cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    return float(ca.get("flops", 0.0)) or None
  except Exception:  # noqa: BLE001 (cost analysis is best effort)
    return None


def _entry(first, t, n_images, flops, peak, load0=None):
  e = {"s_per_iter": t, "img_per_s": n_images / t, "compile_s": max(0.0, first - t),
       "load_avg_start": load0 if load0 is not None else _load(), "load_avg": _load()}
  if flops:
    e["gflop_per_iter"] = flops / 1e9
    e["gflop_per_s"] = flops / t / 1e9
    e["fraction_of_matmul_peak"] = flops / t / 1e9 / peak
  return e


# ----------------------------------------------------------------------------------------------------
# JAX workloads: each returns (one-iteration callable that blocks, images per iteration, FLOPs or None).

def jax_train_step(sz, conv=None):
  """`supervised.train_step` (the library's jitted SGD step) on one fixed batch, with plain
  `model.apply` as `supervised.create_train_state` gives it; `conv='loop_safe'` gives the state
  `models.conv.with_loop_safe_convs(model.apply)` instead (faster without `xla_flags.FAST_CPU_CONVS`)."""
  import ml_collections  # noqa: PLC0415
  model = AllCNN(K, sz["width"], fast_cpu_kernels=sz.get("fast_cpu_kernels", False))
  tcfg = ml_collections.ConfigDict(dict(lr=0.05, momentum=0.9, weight_decay=1e-4, milestones=(), gamma=0.1))
  state = supervised.create_train_state(model, jax.random.key(0), sz["shape"],
                                        supervised.make_optimizer(tcfg, 100))
  if conv == "loop_safe":
    # Tap-GEMM weight gradients (`models.conv.conv_weight_grad`): BUILD_NOTES "Performance (issue 7)".
    state = state.replace(apply_fn=conv_lib.with_loop_safe_convs(state.apply_fn))
  b = sz["train_batch"]
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.random((b,) + sz["shape"], dtype=np.float32)),
           "label": jnp.asarray(rng.integers(0, K, b), jnp.int32)}
  mean, std = jnp.asarray(MEAN * sz["shape"][2]), jnp.asarray(STD * sz["shape"][2])
  key = jax.random.key(1)
  flops = _flops(supervised.train_step, state, batch, key, mean, std)
  box = [state]

  def step():
    box[0], m = supervised.train_step(box[0], batch, key, mean, std)
    jax.block_until_ready(m)
  return step, b, flops


def _ispf_run(sz, forget_class=3, seed=0, loops=1, conv=None):
  """(cfg, engine, teacher variables, initial state) of one ISPF run at size `sz`, through the library's
  builder (`methods.data_free.build`, as `launch.unlearn` and the sweep use it)."""
  cfg = distill.default_config()
  cfg.update(dict(batch_size=sz["ispf_batch"], ngf=sz["ngf"], nz=sz["nz"], kd_steps=10, g_steps=1,
                  loops_per_epoch=loops, warmup=0, epochs=1))
  h, _, c = sz["shape"]
  model = AllCNN(K, sz["width"], fast_cpu_kernels=sz.get("fast_cpu_kernels", False))
  teacher = init_variables(model, jax.random.key(0), (1,) + sz["shape"])
  info = types.SimpleNamespace(image_shape=sz["shape"], num_classes=K, mean=MEAN * c, std=STD * c)
  eng, state = data_free.build(cfg, model, info, distill.STRATEGIES["ispf"], (forget_class,),
                               jax.random.key(seed))
  if conv is not None:
    eng = dataclasses.replace(eng, conv_interceptor=CONV_INTERCEPTORS[conv])
  return cfg, eng, teacher, state


def _ispf_flops(cfg, eng, teacher, state):
  """FLOPs of one loop, from XLA's cost analysis of its loop-free pieces (scans are counted once)."""
  gvars = {"params": state.g_params, "batch_stats": state.g_batch_stats}
  svars = distill.student_variables(state)
  z = jnp.zeros((eng.batch_size, eng.nz))
  g = jax.jit(lambda gp: jax.grad(lambda p: distill.generator_objective(
      eng, state.knobs, p, state.g_batch_stats, svars, teacher, z)[0])(gp))
  x, tl = jax.jit(lambda k: distill.synthetic_batch(eng, teacher, gvars, k))(jax.random.key(0))
  sb = jax.jit(lambda k: distill.synthetic_batch(eng, teacher, gvars, k))
  st = jax.jit(lambda p: distill.student_loss_and_grads(eng, state.knobs, p, svars["batch_stats"], x, tl,
                                                        jnp.ones(x.shape[0], bool)))
  parts = [_flops(g, state.g_params), _flops(sb, jax.random.key(0)), _flops(st, state.s_params)]
  if any(p is None for p in parts):
    return None
  return parts[0] + eng.kd_steps * (parts[1] + parts[2])


def jax_ispf_loop(sz, conv=None):
  """`distill.loop_step` (one jitted loop: 1 generator + 10 student steps) of ISPF, forget class 3."""
  cfg, eng, teacher, state = _ispf_run(sz, conv=conv)
  box = [state]
  flops = _ispf_flops(cfg, eng, teacher, box[0])

  def loop():
    box[0] = distill.loop_step(eng, teacher, box[0])
    jax.block_until_ready(box[0].s_params)
  return loop, eng.batch_size * (1 + eng.kd_steps), flops


def jax_lfssd(sz):
  """`lfssd.lfssd_importance` ('reference' mode) over `lfssd_images` images in `lfssd_batch` batches."""
  model = AllCNN(K, sz["width"], fast_cpu_kernels=sz.get("fast_cpu_kernels", False))
  v = init_variables(model, jax.random.key(0), (1,) + sz["shape"])
  n, b = sz["lfssd_images"], sz["lfssd_batch"]
  x = np.random.default_rng(0).random((n,) + sz["shape"], dtype=np.float32)
  batches = [{"image": x[i:i + b]} for i in range(0, n, b)]
  pre = ssd.Normalize(MEAN * sz["shape"][2], STD * sz["shape"][2])

  def run():
    jax.block_until_ready(lfssd.lfssd_importance(model.apply, v, batches, "reference", preprocess=pre))
  # FLOPs: one batch's gradient of the squared output norm, times the number of batches.
  f = _flops(jax.jit(lambda p, xb: jax.grad(lambda q: jnp.mean(jnp.sum(jnp.square(model.apply(
      {"params": q, "batch_stats": v["batch_stats"]}, xb, train=False)), -1)))(p)), v["params"],
      jnp.asarray(x[:b]))
  return run, n, f * (n // b) if f else None


def _torch_workload(ts, name, sz):
  if name == "train_step":
    return ts.make_train_step(sz["shape"], K, sz["width"], sz["train_batch"])
  if name == "ispf_loop":
    return ts.make_ispf_loop(sz["shape"], K, sz["width"], sz["ispf_batch"], sz["nz"], sz["ngf"], 10)
  return ts.make_lfssd_importance(sz["shape"], K, sz["width"], sz["lfssd_batch"], sz["lfssd_images"])


def sweep_vs_sequential(reps, n_classes=10, loops=1, variants=("matmul", "lax"), peak=None):
  """The 10-class digits ISPF sweep: R runs (one forget class each, own key) as one vmapped program
  vs the same R runs one after another (`distill.run_epoch`, one shared compiled program). Same total
  steps: R x loops x (1 + 10) steps. Timed interleaved.

  With `peak` (matmul GFLOP/s) it also reports each side's share of it and
  `speedup_bound_at_matmul_peak` = peak / the sequential runs' GFLOP/s: the speed-up a vmapped program
  would show if every FLOP of it ran at the matmul peak (both sides do the same FLOPs)."""
  sz = SIZES["digits"]
  runs = [_ispf_run(sz, c, c, loops) for c in range(n_classes)]
  cfg, eng, teacher, _ = runs[0]
  states = [r[3] for r in runs]
  loop_flops = _ispf_flops(cfg, eng, teacher, states[0])

  def seq():
    jax.block_until_ready([distill.run_epoch(eng, teacher, s) for s in states])

  def vmapped(e):
    stacked = sweep.stack(states)
    # sweep_epoch donates its input: give it a fresh copy every call.
    return lambda: jax.block_until_ready(sweep.sweep_epoch(e, teacher, jax.tree.map(jnp.copy, stacked)))
  names = [f"vmap_{v}_conv" for v in variants]
  fns = [seq] + [vmapped(sweep.sweep_engine(eng, v == "matmul")) for v in variants]
  out = {"runs": n_classes, "loops_per_run": loops, "load_avg_start": _load()}
  first, t = _interleaved(fns, reps)
  out.update(sequential_s=t[0], sequential_compile_s=max(0.0, first[0] - t[0]))
  for name, f, tv in zip(names, first[1:], t[1:]):
    out[f"{name}_s"] = tv
    out[f"{name}_compile_s"] = max(0.0, f - tv)
    out[f"{name}_speedup_vs_sequential"] = t[0] / tv
  if loop_flops:
    total = loop_flops * n_classes * loops
    out["gflop_total"] = total / 1e9
    for name, tv in zip(["sequential"] + names, t):
      out[f"{name}_gflop_per_s"] = total / tv / 1e9
      if peak:
        out[f"{name}_fraction_of_matmul_peak"] = total / tv / 1e9 / peak
    if peak:
      out["speedup_bound_at_matmul_peak"] = peak / out["sequential_gflop_per_s"]
  out["load_avg_end"] = _load()
  out["sweep_speedup_vs_sequential"] = max(out[f"{n}_speedup_vs_sequential"] for n in names)
  return out


# ----------------------------------------------------------------------------------------------------

WORKLOADS = {"train_step": jax_train_step, "ispf_loop": jax_ispf_loop, "lfssd": jax_lfssd}


def run(size: str = "paper", reps: int = 3, torch_side: bool = True, sweep_bench: bool = True,
        workloads=tuple(WORKLOADS), log=print, fast_cpu_kernels: bool = False) -> dict:
  """All benchmarks of `launch.bench`; returns the JSON-able results (keys in BUILD_NOTES).
  `fast_cpu_kernels`: the JAX AllCNN's `config.model.fast_cpu_kernels` (the paper configs set it)."""
  sz = dict(SIZES[size], fast_cpu_kernels=bool(fast_cpu_kernels))
  res = {"size": size, "config": dict(sz), "reps": reps, "jax_version": jax.__version__,
         "backend": jax.default_backend(), "devices": jax.device_count(),
         "device_kind": jax.devices()[0].device_kind, "cpus": os.cpu_count(),
         "machine": platform.machine(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
         "load_avg_start": _load()}
  # 2048^3 keeps a CPU busy for ~0.1 s; an accelerator needs a larger product to reach its peak.
  peak = matmul_peak(2048 if jax.default_backend() == "cpu" else 8192)
  res["matmul_peak_gflop_per_s"] = peak
  log(f"matmul peak {peak:.1f} GFLOP/s (load {_load()})")
  ts = None
  if torch_side:
    from jax_unlearn.bench import torch_side as ts  # noqa: PLC0415
    res["torch"] = ts.info()
  for name in workloads:
    load0 = _load()
    jfn, n, flops = WORKLOADS[name](sz)
    fns = [jfn] + ([_torch_workload(ts, name, sz)] if ts is not None else [])
    first, t = _interleaved(fns, reps)
    res[name] = {"jax": _entry(first[0], t[0], n, flops, peak, load0)}
    if name == "train_step":
      res[name]["jax"]["apply_fn"] = "model.apply"
    if ts is not None:
      # PyTorch has no compile step: its first call is a warm-up only.
      e = _entry(first[1], t[1], n, flops, peak, load0)
      del e["compile_s"]
      res[name]["torch"] = e
      res[f"{name}_speedup_vs_torch"] = t[1] / t[0]
    log(f"{name}: {res[name]}" + (f"  speed-up JAX/PyTorch {res[f'{name}_speedup_vs_torch']:.2f}"
                                  if ts is not None else ""))
  if sweep_bench:
    res["sweep"] = sweep_vs_sequential(reps, peak=peak)
    res["sweep_speedup_vs_sequential"] = res["sweep"]["sweep_speedup_vs_sequential"]
    log(f"sweep: {res['sweep']}")
  res["load_avg_end"] = _load()
  return res
