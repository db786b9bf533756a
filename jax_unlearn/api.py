"""Library entry points behind the launchers (and what tests and other code call directly).

Workdir layout:
  W/original/seed<s>/{ckpt/, final/, metrics.json}   the original model (trained once, reused)
  W/runs/<forget-tag>_seed<s>/<method>/        one method's run: metrics.json, diagnostics, plots
  W/metrics.json                                the last launch's metrics (written atomically)
"""

from __future__ import annotations

import dataclasses
import os
import time
import zlib
from typing import Callable

import jax
import numpy as np

from jax_unlearn import config as config_lib
from jax_unlearn import data as data_lib
from jax_unlearn import methods as methods_lib
from jax_unlearn import models
from jax_unlearn.io import atomic_write_json
from jax_unlearn.train import checkpoint, supervised
from jax_unlearn.train.evaluate import accuracy


@dataclasses.dataclass
class Setup:
  config: object
  dataset: data_lib.Dataset
  data: data_lib.UnlearnData
  model: object

  @property
  def info(self):
    return self.dataset.info


def root_key(config):
  return jax.random.key(int(config.seed))


def phase_key(config, name: str):
  """Independent key per phase/method, a function of (seed, name) only: adding a method to a run
  never changes another method's random numbers."""
  return jax.random.fold_in(root_key(config), zlib.crc32(name.encode()) & 0x7FFFFFFF)


def forget_tag(config) -> str:
  f = config.forget
  if f.mode == "random":
    return f"random-{f.num_samples}"
  return f"{f.mode}-" + "-".join(str(c) for c in f.classes)


def run_dir(config, workdir: str, method: str) -> str:
  return os.path.join(os.path.abspath(workdir), "runs", f"{forget_tag(config)}_seed{config.seed}", method)


def original_dir(config, workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "original", f"seed{int(config.seed)}")


def load_setup(config, workdir: str | None = None, methods: tuple[str, ...] = ()) -> Setup:
  """Validates `config`, loads the dataset, builds the forget/retain views and the classifier."""
  config_lib.validate(config, workdir, methods)
  dataset = data_lib.load_dataset(config.dataset, int(config.seed))
  udata = data_lib.make_unlearn_data(dataset, config.forget, int(config.seed))
  model = models.create_classifier(config.model, dataset.info.num_classes)
  return Setup(config=config, dataset=dataset, data=udata, model=model)


def model_meta(config, info) -> dict:
  model_config = config.model.to_dict()
  if model_config.get("bn_running_var") == "biased":  # the rule before the field: old checkpoints load
    model_config.pop("bn_running_var")
  return {"dataset": info.name, "num_classes": info.num_classes,
          "image_shape": list(info.image_shape), "model": config.model.name,
          "model_config": model_config}


def abstract_variables(model, info):
  return jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0),
                                                      (1,) + tuple(info.image_shape)))


def train_config(config):
  import ml_collections
  return ml_collections.ConfigDict({**config.train.to_dict(), "batch_size": int(config.batch_size)})


def fit_or_load(config, model, info, directory: str, train: data_lib.Split, val: data_lib.Split,
                key, name: str, log: Callable[[str], None] = print):
  """Trains `model` from scratch on (train, val) into `directory`, or loads it if already there.

  Returns (variables, history or None when loaded)."""
  final = os.path.join(directory, "final")
  meta = model_meta(config, info)
  if checkpoint.has_variables(final):
    return checkpoint.load_variables(final, abstract_variables(model, info), meta), None
  variables, hist = supervised.fit(model, train, val, info, train_config(config), key,
                                   os.path.join(directory, "ckpt"), log=log, name=name,
                                   seed=int(config.seed))
  checkpoint.save_variables(final, variables, meta)
  return variables, hist


def train_original(config, workdir: str, log: Callable[[str], None] = print, setup: Setup | None = None):
  """Trains (or loads) the original model on the full training split. Returns (setup, variables, metrics)."""
  setup = setup or load_setup(config, workdir)
  d = original_dir(config, workdir)
  t0 = time.time()
  variables, hist = fit_or_load(config, setup.model, setup.info, d, setup.dataset.train,
                                setup.dataset.val, phase_key(config, "original"), "original", log)
  metrics_path = os.path.join(d, "metrics.json")
  if hist is not None or not os.path.exists(metrics_path):
    m = {"acc_test": accuracy(setup.model, variables, setup.dataset.test, setup.info),
         "acc_val": accuracy(setup.model, variables, setup.dataset.val, setup.info),
         "train_s": time.time() - t0, "dataset": setup.info.name, "model": config.model.name,
         "history": (hist or {}).get("history", [])}
    atomic_write_json(metrics_path, m)
  else:
    import json
    with open(metrics_path) as f:
      m = json.load(f)
  return setup, variables, m


def make_context(setup: Setup, workdir: str, method: str, original, log=print):
  config = setup.config
  classes = () if config.forget.mode == "random" else tuple(int(c) for c in config.forget.classes)
  if config.forget.mode == "subclass":
    classes = ()  # the forgotten fine class is not a label of the classifier
  return methods_lib.UnlearnContext(
      config=config, model=setup.model, original=original, data=setup.data,
      key=phase_key(config, f"method/{method}"), workdir=run_dir(config, workdir, method), log=log,
      forget_classes=classes, num_classes=setup.info.num_classes)


def run_method(setup: Setup, workdir: str, method: str, original, log=print):
  """Runs one registered method; returns (UnlearnResult, wall seconds)."""
  fn = methods_lib.get(method)
  ctx = make_context(setup, workdir, method, original, log)
  os.makedirs(ctx.workdir, exist_ok=True)
  t0 = time.time()
  result = fn(ctx)
  return result, time.time() - t0


def forget_retain_accuracy(setup: Setup, variables) -> dict:
  """`acc_forget`/`acc_retain` (percent) on the test split; random forgetting has no forget test
  samples, so its `acc_forget` is measured on the forget training samples."""
  d = setup.data
  forget = d.forget_test if len(d.forget_test) else d.forget_train
  return {"acc_forget": accuracy(setup.model, variables, forget, setup.info),
          "acc_retain": accuracy(setup.model, variables, d.retain_test, setup.info)}


def unlearn(config, workdir: str, log: Callable[[str], None] = print) -> dict:
  """`launch.unlearn`: trains/loads the original, runs `config.method`, evaluates, writes metrics."""
  method = str(config.method)
  setup = load_setup(config, workdir, (method,))
  setup, original, _ = train_original(config, workdir, log, setup)
  result, wall = run_method(setup, workdir, method, original, log)
  m = {"method": method, "dataset": setup.info.name, "model": config.model.name,
       "forget_mode": config.forget.mode,
       "forget_classes": ([] if config.forget.mode == "random"
                          else [int(c) for c in config.forget.classes]),
       **({"forget_samples": int(config.forget.num_samples)} if config.forget.mode == "random" else {}),
       "seed": int(config.seed), **forget_retain_accuracy(setup, result.variables), "wall_s": wall,
       "info": result.info}
  if not all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(result.variables)):
    from jax_unlearn.errors import NumericalError
    raise NumericalError(f"method {method} produced NaN/inf parameters; lower its learning rate "
                         f"(--config.{method}.lr) and run again; nothing was written")
  atomic_write_json(os.path.join(run_dir(config, workdir, method), "metrics.json"), m)
  atomic_write_json(os.path.join(os.path.abspath(workdir), "metrics.json"), m)
  log(f"[{method}] acc_forget {m['acc_forget']:.2f}%  acc_retain {m['acc_retain']:.2f}%  "
      f"({wall:.1f}s)")
  return m
