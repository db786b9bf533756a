"""Library entry points behind the launchers (and what tests and other code call directly).

Workdir layout (every cached artefact is named by the fingerprint of what it was computed from,
`train.fingerprint`, so a changed config never reuses a stale one and never overwrites it):
  W/original/seed<s>-<fp>/{ckpt/, final/, metrics.json}  the original model (trained once, reused);
                                                          request-independent caches sit beside it
  W/runs/<forget-tag>_seed<s>/<method>/                  one method's run: metrics.json, diagnostics,
                                                          plots, ckpt-<fp>/ (resumable state)
  W/shadows/<forget-tag>_seed<s>_<fp>/                   MIA-II shadow models (launch.experiment)
  W/metrics.json                                         the last launch's metrics (written atomically)
  W/.lock                                                held by the process working in W
"""

from __future__ import annotations

import dataclasses
import os
import time
import zlib
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from jax_unlearn import config as config_lib
from jax_unlearn import data as data_lib
from jax_unlearn import methods as methods_lib
from jax_unlearn import models
from jax_unlearn.errors import NumericalError
from jax_unlearn.io import atomic_write_json, read_json, workdir_lock
from jax_unlearn.methods import distruction
from jax_unlearn.report import method_plots
from jax_unlearn.train import supervised
from jax_unlearn.train.evaluate import accuracy

__all__ = ["Setup", "root_key", "phase_key", "forget_tag", "run_dir", "load_setup", "train_original", "train",
           "make_context", "run_method", "forget_retain_accuracy", "unlearn", "prepare", "model_config"]


@dataclasses.dataclass
class Setup:
  """What `load_setup` builds from a config: the data set, its forget/retain views and the classifier."""
  config: object
  dataset: data_lib.Dataset
  data: data_lib.UnlearnData
  model: object
  problem: object = None
  original_dir: str = ""           # set by `train_original`

  @property
  def info(self) -> data_lib.DataInfo:
    """The data set's `DataInfo`."""
    return self.dataset.info


def root_key(config: ml_collections.ConfigDict) -> jax.Array:
  """The run's root PRNG key, from `config.seed`."""
  return jax.random.key(int(config.seed))


def phase_key(config: ml_collections.ConfigDict, name: str) -> jax.Array:
  """Independent key per phase/method, a function of (seed, name) only: adding a method to a run
  never changes another method's random numbers."""
  return jax.random.fold_in(root_key(config), zlib.crc32(name.encode()) & 0x7FFFFFFF)


def forget_tag(config: ml_collections.ConfigDict) -> str:
  """A directory-safe name of the forget request (`class-3`, `subclass-69`, `random-100`)."""
  f = config.forget
  if f.mode == "random":
    return f"random-{f.num_samples}"
  return f"{f.mode}-" + "-".join(str(c) for c in f.classes)


def run_dir(config: ml_collections.ConfigDict, workdir: str, method: str) -> str:
  """W/runs/<forget-tag>_seed<s>/<method>: where one method's run writes."""
  return os.path.join(os.path.abspath(workdir), "runs", f"{forget_tag(config)}_seed{config.seed}", method)


def model_config(config: ml_collections.ConfigDict) -> dict:
  """`config.model` as a plain dict (what the model fingerprint covers)."""
  return config.model.to_dict()


def load_setup(config: ml_collections.ConfigDict, workdir: str | None = None, methods: tuple[str, ...] = (),
               with_metrics: bool = False) -> Setup:
  """Validates `config` (every method in `methods`, and the metrics `with_metrics`), loads the dataset,
  builds the forget/retain views and the classifier."""
  prob = config_lib.validate(config, workdir, methods, with_metrics=with_metrics)
  dataset = data_lib.load_dataset(config.dataset, int(config.seed))
  udata = data_lib.make_unlearn_data(dataset, config.forget, int(config.seed))
  model = models.create_classifier(config.model, dataset.info.num_classes)
  return Setup(config=config, dataset=dataset, data=udata, model=model, problem=prob)


def train_original(config: ml_collections.ConfigDict, workdir: str, log: Callable[[str], None] = print,
                   setup: Setup | None = None) -> tuple[Setup, dict, dict]:
  """Trains (or loads) the original model on the full training split. Returns (setup, variables,
  metrics); `setup.original_dir` is its directory."""
  setup = setup or load_setup(config, workdir)
  variables, info = supervised.fit_or_load(
      setup.model, model_config(config), setup.dataset.train, setup.dataset.val, setup.info,
      supervised.recipe(config.train, config.batch_size), phase_key(config, "original"),
      os.path.join(os.path.abspath(workdir), "original"), f"seed{int(config.seed)}", name="original",
      seed=int(config.seed), log=log)
  setup.original_dir = info["directory"]
  metrics_path = os.path.join(setup.original_dir, "metrics.json")
  m = read_json(metrics_path) if info["cached"] else None
  if not isinstance(m, dict):  # first training, or a missing/truncated file: measured again
    m = {"acc_test": accuracy(setup.model, variables, setup.dataset.test, setup.info),
         "acc_val": accuracy(setup.model, variables, setup.dataset.val, setup.info),
         "train_s": info.get("train_s"), "dataset": setup.info.name, "model": config.model.name,
         "fingerprint": info["fingerprint"], "history": info.get("history", [])}
    atomic_write_json(metrics_path, m)
  return setup, variables, m


def train(config: ml_collections.ConfigDict, workdir: str, log: Callable[[str], None] = print) -> dict:
  """`launch.train`: trains (or loads) the original model; writes W/metrics.json; returns its metrics."""
  setup = load_setup(config, workdir)
  with workdir_lock(workdir):
    setup, _, m = train_original(config, workdir, log, setup)
    atomic_write_json(os.path.join(os.path.abspath(workdir), "metrics.json"),
                      {**m, "directory": setup.original_dir})
  return m


def make_context(setup: Setup, workdir: str, method: str, original: Any,
                 log: Callable[[str], None] = print) -> methods_lib.UnlearnContext:
  """The `UnlearnContext` of `method` for this setup: its merged sub-config, key, workdir, data."""
  config = setup.config
  mode = str(config.forget.mode)
  # Classifier labels forgotten: none for random forgetting, and none in sub-class mode (the
  # forgotten fine class is not a label of the classifier).
  classes = tuple(int(c) for c in config.forget.classes) if mode == "class" else ()
  return methods_lib.UnlearnContext(
      cfg=config_lib.method_config(config, method), model=setup.model, original=original,
      data=setup.data, key=phase_key(config, f"method/{method}"), workdir=run_dir(config, workdir, method),
      log=log, forget_classes=classes, num_classes=setup.info.num_classes, forget_mode=mode,
      seed=int(config.seed), cache_dir=setup.original_dir,
      train_cfg=supervised.recipe(config.train, config.batch_size), model_cfg=model_config(config))


def run_method(setup: Setup, workdir: str, method: str, original: Any, log: Callable[[str], None] = print
               ) -> tuple[methods_lib.UnlearnResult, float]:
  """Runs one registered method and writes its plots (`report.method_plots`); returns
  (UnlearnResult, wall seconds)."""
  fn = methods_lib.get(method)
  ctx = make_context(setup, workdir, method, original, log)
  os.makedirs(ctx.workdir, exist_ok=True)
  t0 = time.time()
  result = fn(ctx)
  wall = time.time() - t0
  files = method_plots.write(ctx.workdir, result, method)
  result.info.update({k: v for k, v in files.items() if k.endswith(("_png", "_json"))})
  return result, wall


def forget_retain_accuracy(setup: Setup, variables: Any) -> dict[str, float]:
  """`acc_forget`/`acc_retain` (percent) on the test split; random forgetting has no forget test
  samples, so its `acc_forget` is measured on the forget training samples."""
  d = setup.data
  forget = d.forget_test if len(d.forget_test) else d.forget_train
  return {"acc_forget": accuracy(setup.model, variables, forget, setup.info),
          "acc_retain": accuracy(setup.model, variables, d.retain_test, setup.info)}


def unlearn(config: ml_collections.ConfigDict, workdir: str, log: Callable[[str], None] = print) -> dict:
  """`launch.unlearn`: trains/loads the original, runs `config.method`, evaluates, writes metrics."""
  method = str(config.method)
  setup = load_setup(config, workdir, (method,))  # every check before the original is trained
  with workdir_lock(workdir):
    setup, original, _ = train_original(config, workdir, log, setup)
    result, wall = run_method(setup, workdir, method, original, log)
    if not all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(result.variables)):
      raise NumericalError(f"method {method} produced NaN/inf parameters; lower its learning rate "
                           f"(--config.{method}.lr) and run again; nothing was written")
    m = {"method": method, "dataset": setup.info.name, "model": config.model.name,
         "forget_mode": config.forget.mode,
         "forget_classes": ([] if config.forget.mode == "random"
                            else [int(c) for c in config.forget.classes]),
         **({"forget_samples": int(config.forget.num_samples)} if config.forget.mode == "random"
            else {}),
         "seed": int(config.seed), **forget_retain_accuracy(setup, result.variables), "wall_s": wall,
         "info": result.info}
    atomic_write_json(os.path.join(run_dir(config, workdir, method), "metrics.json"), m)
    atomic_write_json(os.path.join(os.path.abspath(workdir), "metrics.json"), m)
  log(f"[{method}] acc_forget {m['acc_forget']:.2f}%  acc_retain {m['acc_retain']:.2f}%  "
      f"({wall:.1f}s)")
  return m


def prepare(config: ml_collections.ConfigDict, workdir: str, log: Callable[[str], None] = print) -> dict:
  """`launch.prepare`: trains/loads the original model of `workdir` (as `launch.train` does), then
  learns DiStruction's σ_p on the training data with the mean frozen and stores the posterior beside
  the original model, where `launch.unlearn --config.method=distruction` finds it.

  Returns {'posterior_path', 'mean_equals_original', 'std_mean', 'std_min', 'std_max', 'prepare_s'}."""
  setup = load_setup(config, workdir, ("distruction",))
  with workdir_lock(workdir):
    setup, original, _ = train_original(config, workdir, log, setup)
    ctx = make_context(setup, workdir, "distruction", original, log)
    t0 = time.time()
    post = distruction.ensure_prepared(ctx)
  path = distruction.posterior_dir(ctx)
  same = all(bool(np.array_equal(np.asarray(a), np.asarray(b)))
             for a, b in zip(jax.tree.leaves(post.mean), jax.tree.leaves(original["params"])))
  if float(ctx.cfg.prep_mean_eta) == 0 and not same:
    raise NumericalError(f"the prepared posterior mean in {path} differs from the original weights; "
                         "delete it and run launch.prepare again")
  sig = np.concatenate([np.ravel(np.asarray(s)) for s in jax.tree.leaves(post.std)])
  out = {"posterior_path": path, "mean_equals_original": same, "std_mean": float(sig.mean()),
         "std_min": float(sig.min()), "std_max": float(sig.max()), "prepare_s": time.time() - t0}
  log(f"[distruction] posterior {path}: mean == original weights: {same}; sigma mean "
      f"{out['std_mean']:.4g} (min {out['std_min']:.3g}, max {out['std_max']:.3g})")
  return out
