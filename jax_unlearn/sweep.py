"""Vmapped sweeps of a data-free method: many forget classes and/or seeds as ONE jitted program.

The distillation engine (`methods.distill`) keeps everything that differs between runs of one method —
forget classes, PRNG keys, hyper-parameters — in the traced `DistillState` (its `Knobs` included), and
everything static in the hashable `Engine`. A sweep therefore stacks R run states on a leading axis and
runs `jax.vmap(distill._run_epoch)` once per epoch: R runs for one dispatch, one compilation, and
per-run results equal to R separate `distill.run_epoch` calls up to float rounding
(`tests/test_sweep.py`). With several seeds the teachers (one original model per seed) are stacked too.

On XLA:CPU a vmapped convolution whose *kernel* is batched (each run has its own student/generator) is
lowered to a grouped convolution that runs slower than R separate convs (BUILD_NOTES "Performance
(issue 7)"). The sweep engine therefore routes every `nn.Conv` through
`models.conv.matmul_conv_general_dilated`: im2col by k·k strided slices and one `dot_general`, which
vmap turns into a *batched* matmul (Eigen's GEMM per run) — the same convolution, fast under vmap.

    python -m launch.sweep --config=configs/digits.py --config.method=ispf \
        --classes=0,1,2,3,4,5,6,7,8,9 --workdir=W

Public API::

    states = stack([distill.init_state(engine, knobs_r, key_r) for ...])
    states = sweep_epoch(sweep_engine(engine), teacher, states)        # jitted, vmapped over runs
    states = run_sweep(sweep_engine(engine), teacher, states, epochs, shard=True)  # runs over devices
    per_run = unstack(states)                                           # list of DistillState
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jax_unlearn import api
from jax_unlearn import config as config_lib
from jax_unlearn.errors import ConfigError, NumericalError
from jax_unlearn.io import atomic_write_json, workdir_lock
from jax_unlearn.methods import data_free, distill
from jax_unlearn.models.conv import matmul_conv_general_dilated, matmul_convs
from jax_unlearn.train import sharding
from jax_unlearn.train.loop import run_chunks

__all__ = ["default_config", "matmul_conv_general_dilated", "matmul_convs", "sweep_engine", "stack",
           "unstack", "sweep_epoch", "run_sweep", "sweep_runs", "parse_ints", "run"]

default_config = config_lib.sweep_config


# ----------------------------------------------------------------------------------------------------
# Stacked states and the vmapped epoch.

def sweep_engine(engine, matmul: bool = True):
  """The engine a sweep runs: `engine` with `matmul_convs` (or unchanged if `matmul` is False)."""
  return dataclasses.replace(engine, conv_interceptor=matmul_convs) if matmul else engine


def stack(trees: Sequence):
  """Stacks R pytrees of one structure on a new leading axis (the run axis)."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree) -> list:
  """Inverse of `stack`: the R per-run pytrees."""
  n = jax.tree.leaves(tree)[0].shape[0]
  return [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(n)]


@functools.partial(jax.jit, static_argnums=(0, 3), donate_argnums=(2,))
def sweep_epoch(engine, teacher, states, stacked_teacher: bool = False):
  """One epoch of every run: `jax.vmap(distill.epoch)` over the leading axis of `states` (and of
  `teacher` if `stacked_teacher`). Donates `states`: the runs' buffers are updated in place."""
  return jax.vmap(distill.epoch, in_axes=(None, 0 if stacked_teacher else None, 0))(
      engine, teacher, states)


def run_sweep(engine, teacher, states, epochs: int, *, stacked_teacher: bool = False,
              log: Callable[[str], None] | None = None, on_epoch: Callable | None = None,
              shard: bool = False):
  """`epochs` vmapped epochs; `on_epoch(epoch, states)` (host side) after each. Returns the states.

  shard: split the run axis of `states` (and of a stacked `teacher`) over the local devices
  (`sharding.shard_runs`); jit then runs each device's members there, with no communication.
  """
  if shard:
    mesh = sharding.runs_mesh(jax.tree.leaves(states)[0].shape[0])
    states = sharding.shard_runs(states, mesh)
    if stacked_teacher:
      teacher = sharding.shard_runs(teacher, mesh)
  n_runs = jax.tree.leaves(states)[0].shape[0]

  def epoch_fn(states, e):
    states = sweep_epoch(engine, teacher, states, stacked_teacher)
    if on_epoch is not None:
      on_epoch(e, states)
    jax.block_until_ready(states)
    return states, {"epoch": e + 1}

  states, _ = run_chunks(epoch_fn, states, int(epochs), phase="sweep",
                         guard=lambda st, r: None,  # each run's parameters are checked at the end
                         progress=(lambda i, r: f"[sweep] epoch {i + 1}/{epochs} ({n_runs} runs)")
                         if log is not None else None, log=log or (lambda m: None))
  return states


# ----------------------------------------------------------------------------------------------------
# The launcher's job: config -> runs -> metrics.json per run.

def sweep_runs(config) -> list[tuple[int, tuple[int, ...]]]:
  """[(seed, forget classes)] of `config.sweep` (class mode: one class per run)."""
  sw = config_lib.merge_sweep(config)
  seeds = tuple(int(s) for s in (sw.seeds or (config.seed,)))
  if sw.classes:
    if config.forget.mode != "class":
      raise ConfigError(f"config.sweep.classes needs --config.forget.mode=class, got "
                        f"{config.forget.mode!r}; set --config.forget.mode=class or unset "
                        "--config.sweep.classes")
    sets = [(int(c),) for c in sw.classes]
  else:
    sets = [tuple(int(c) for c in config.forget.classes)]
  return [(s, f) for s in seeds for f in sets]


def parse_ints(values, flag: str) -> tuple[int, ...]:
  """Integers of a list flag (`--classes=1,3`); one ConfigError line naming the flag otherwise."""
  out = []
  for v in values:
    try:
      out.append(int(str(v).strip()))
    except ValueError:
      raise ConfigError(f"{flag} takes integers separated by commas, got {v!r}; e.g. {flag}=1,3") from None
  if len(set(out)) != len(out):
    raise ConfigError(f"{flag} lists {sorted(x for x in set(out) if out.count(x) > 1)} twice; give each "
                      "value once")
  return tuple(out)


def _run_config(config, seed, forget):
  c = config.copy_and_resolve_references()
  c.seed = int(seed)
  c.forget.classes = tuple(forget)
  return c


def run(config, workdir: str, log: Callable[[str], None] = print) -> list[dict]:
  """Runs `config.method` (a data-free strategy) for every (seed, forget classes) of `config.sweep` as
  one vmapped program; writes each run's metrics.json where `launch.unlearn` would. Returns them."""
  method = str(config.method)
  if method not in distill.STRATEGIES:
    raise ConfigError(f"a sweep runs one data-free method, got {method!r}; set --config.method to one "
                      f"of: {', '.join(distill.STRATEGIES)}")
  sw = config_lib.merge_sweep(config)
  runs = sweep_runs(config)
  if len(set(runs)) != len(runs):
    raise ConfigError(f"the sweep lists a run twice ({runs}); give each forget class and seed once, "
                      "e.g. --classes=1,3 --seeds=0,1")
  cfgs = [_run_config(config, s, f) for s, f in runs]
  setups = [api.load_setup(c, workdir, (method,)) for c in cfgs]  # every check before any training
  with workdir_lock(workdir):
    return _run(config, workdir, log, method, sw, runs, cfgs, setups)


def _run(config, workdir, log, method, sw, runs, cfgs, setups):
  teachers, ctxs = [], []
  for i, c in enumerate(cfgs):
    setups[i], original, _ = api.train_original(c, workdir, log, setups[i])
    teachers.append({k: v for k, v in original.items() if k in ("params", "batch_stats")})
    ctxs.append(api.make_context(setups[i], workdir, method, original, log))
  strategy = distill.STRATEGIES[method]
  cfg = ctxs[0].cfg
  info = setups[0].info
  engine, states = None, []
  for ctx in ctxs:
    # The same key split as `data_free.run_strategy`, so a sweep run equals its `launch.unlearn` run.
    key_init, _ = jax.random.split(ctx.key)
    engine, state = data_free.build(cfg, setups[0].model, info, strategy, ctx.forget_classes, key_init)
    states.append(state)
  epochs = int(cfg.warmup) + int(cfg.epochs)
  multi_seed = len({s for s, _ in runs}) > 1
  t0 = time.time()
  if sw.vmap:
    eng = sweep_engine(engine, bool(sw.matmul_convs))
    teacher = stack(teachers) if multi_seed else teachers[0]
    out = unstack(run_sweep(eng, teacher, stack(states), epochs, stacked_teacher=multi_seed, log=log,
                            shard=jax.local_device_count() > 1))
  else:
    out = []
    for st, tv in zip(states, teachers):
      for _ in range(epochs):
        st = distill.run_epoch(engine, tv, st)
      out.append(st)
  jax.block_until_ready(out)
  wall = time.time() - t0
  results = []
  for (seed, forget), c, setup, st in zip(runs, cfgs, setups, out):
    variables = jax.device_get(distill.student_variables(st))
    if not all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(variables)):
      raise NumericalError(f"sweep run seed={seed} forget={forget} produced NaN/inf parameters; lower "
                           "--config.ispf.lr or --config.ispf.lr_g")
    m = {"method": method, "dataset": setup.info.name, "model": c.model.name, "forget_mode": "class",
         "forget_classes": list(forget), "seed": int(seed),
         **api.forget_retain_accuracy(setup, variables), "wall_s": wall / len(runs),
         "info": {"sweep_runs": len(runs), "sweep_wall_s": wall, "vmap": bool(sw.vmap),
                  "student_steps": int(st.step)}}
    atomic_write_json(os.path.join(api.run_dir(c, workdir, method), "metrics.json"), m)
    log(f"[{method}] seed {seed} forget {list(forget)}: acc_forget {m['acc_forget']:.2f}%  "
        f"acc_retain {m['acc_retain']:.2f}%")
    results.append(m)
  atomic_write_json(os.path.join(os.path.abspath(workdir), "sweep_metrics.json"),
                    {"runs": results, "wall_s": wall})
  return results
