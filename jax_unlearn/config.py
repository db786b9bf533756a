"""Building blocks for `configs/*.py` and config validation, derived from the registries.

`base_config()` returns the full field set: the method sub-configs come from each registered method's
`default_config()` (`methods.base`), `config.metrics` from the metric registry (`metrics.base`),
`config.train` from `train.supervised`; a `configs/<name>.py` then sets the dataset/model/budget values.
`validate(config, methods=...)` checks everything that can be checked before any work starts, calling
every named method's and metric's `validate_config`; `method_config(config, name)` is a method's merged
and validated sub-config.
"""

from __future__ import annotations

import os
import tempfile

import ml_collections
from ml_collections import config_dict

from jax_unlearn import data, metrics, models
from jax_unlearn import methods as methods_lib
from jax_unlearn.configdict import merge
from jax_unlearn.errors import ConfigError
from jax_unlearn.methods.base import Problem
from jax_unlearn.train import population, supervised

__all__ = ["base_config", "validate", "method_config", "problem", "parse_methods", "placeholder",
           "sweep_config", "merge_sweep"]


def sweep_config() -> ml_collections.ConfigDict:
  """`config.sweep`: which runs of `config.method` one vmapped program holds (`launch.sweep`).

  classes: forget classes, one run per class (empty: the single run `config.forget.classes`).
  seeds: seeds, one run per seed and class (empty: `config.seed`). Each seed uses its own original model.
  vmap: True runs all runs as one vmapped program; False runs them one after another (same results).
  matmul_convs: route convs through `models.conv.matmul_conv_general_dilated` (fast vmapped convs on
    XLA:CPU).
  """
  return ml_collections.ConfigDict(dict(classes=(), seeds=(), vmap=True, matmul_convs=True))


def merge_sweep(config) -> ml_collections.ConfigDict:
  """`config.sweep` merged over `sweep_config()`."""
  return merge(sweep_config(), config.get("sweep", None), prefix="sweep")


def base_config() -> ml_collections.ConfigDict:
  """Every field of an experiment config with its default; `configs/*.py` start from it."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.seeds = ()                    # experiment: run every seed listed (empty = just `seed`)
  c.method = "ispf"
  c.methods = methods_lib.default_table()  # every registered method marked for the default table
  c.batch_size = supervised.DEFAULT_BATCH_SIZE  # supervised training batch (original, retrain, shadows)
  c.eval_batch_size = 512
  # XLA flags set before JAX starts (jax_unlearn.xla_flags); CPU-only flags, e.g. xla_flags.FAST_CPU_CONVS.
  c.xla_cpu_flags = ""
  c.dataset = data.default_config()  # the fields the registered data sources read
  # fast_cpu_kernels: BN statistics as GEMVs and strided-conv input gradients by phase (models.AllCNN),
  # faster on XLA:CPU; it changes float rounding, so digits keeps it off (its numbers predate it).
  c.model = ml_collections.ConfigDict(dict(name="allcnn", width=1.0, patch=4, dim=192, depth=6,
                                           heads=3, mlp_dim=384, fast_cpu_kernels=False,
                                           bn_running_var="unbiased",  # or 'biased' (layers.BatchNorm)
                                           stem_stride=1))  # AllCNN's first-conv stride
  c.forget = ml_collections.ConfigDict(dict(mode="class", classes=(3,), num_samples=100))
  c.train = supervised.default_train_config()
  for s in methods_lib.specs():
    if s.config_key and s.config_key not in c:
      c[s.config_key] = s.default_config()
  c.metrics = metrics.default_config()
  c.sweep = sweep_config()
  c.audit = population.default_config()  # launch.audit's populations (jax_unlearn.audit)
  return c


def parse_methods(methods) -> tuple[str, ...]:
  """`--config.methods=ispf,pf` arrives as ('ispf,pf',); accept that, a tuple, or a string."""
  if isinstance(methods, str):
    methods = (methods,)
  out = []
  for m in methods:
    out.extend(x.strip() for x in str(m).split(",") if x.strip())
  return tuple(out)


def _check(cond, msg):
  if not cond:
    raise ConfigError(msg)


def problem(config, info=None) -> Problem:
  """The `methods.base.Problem` a config describes (validates `config.forget` against the data)."""
  info = info if info is not None else data.dataset_info(config.dataset)
  classes = data.validate_forget(config.forget, info)
  mode = str(config.forget.mode)
  return Problem(info=info, forget_mode=mode, forget_classes=tuple(classes),
                 num_forget_samples=int(config.forget.num_samples) if mode == "random" else 0)


def method_config(config, name: str) -> ml_collections.ConfigDict | None:
  """The merged (`configdict.merge`) sub-config of method `name`, or None if it has none."""
  s = methods_lib.spec(name)
  if not s.config_key:
    return None
  return merge(s.default_config(), config.get(s.config_key), prefix=s.config_key)


def _check_train(config) -> None:
  t = config.train
  _check(isinstance(config.batch_size, int) and not isinstance(config.batch_size, bool)
         and config.batch_size > 0,
         f"batch size must be a positive integer, got {config.batch_size!r}; set --config.batch_size=64")
  _check(t.lr >= 0, f"learning rate must be >= 0, got {t.lr}; set --config.train.lr=0.05")
  _check(isinstance(t.epochs, int) and t.epochs >= 1, f"train epochs must be an integer >= 1, got "
         f"{t.epochs!r}; set --config.train.epochs=30")
  ms = t.milestones if isinstance(t.milestones, (tuple, list)) else (t.milestones,)
  bad = [m for m in ms if isinstance(m, bool) or not isinstance(m, int) or m < 0]
  _check(not bad, f"--config.train.milestones must be non-negative integer epochs, got {tuple(ms)!r}; "
         "set e.g. --config.train.milestones=20 (or '(20,25)')")
  for f in ("momentum", "weight_decay", "gamma"):
    _check(float(t[f]) >= 0, f"--config.train.{f} must be >= 0, got {t[f]}")


def validate(config, workdir: str | None = None, methods: tuple[str, ...] = (),
             with_metrics: bool = False) -> Problem:
  """Raises ConfigError (one line: the problem and the fix) for anything wrong in `config`: the
  data set, model, training recipe, forget request, every method in `methods` (its merged sub-config
  through its `validate_config`) and, `with_metrics`, `config.metrics`; then whether `workdir` is
  writable. Returns the `Problem`."""
  data.check_name(config.dataset.name)  # "unknown dataset ...; set --config.dataset.name to one of"
  _check(config.model.name in models.CLASSIFIERS, f"unknown model {config.model.name!r}; set "
         f"--config.model.name to one of: {', '.join(sorted(models.CLASSIFIERS))}")
  rv = config.model.get("bn_running_var", "unbiased")
  _check(rv in models.RUNNING_VAR_MODES, f"unknown BN running-variance rule {rv!r}; set "
         "--config.model.bn_running_var=unbiased (PyTorch's) or =biased (Flax's)")
  _check_train(config)
  prob = problem(config)
  for m in methods:
    s = methods_lib.spec(m)  # unknown names: one line naming the registered ones
    cfg = method_config(config, m)
    if s.validate_config is not None:
      s.validate_config(cfg, prob)
  if with_metrics:
    metrics.resolve_config(config, prob)
  if workdir is not None:
    _check(bool(workdir), "--workdir is required: pass --workdir=/some/dir")
    _check_writable(workdir)
  return prob


def _check_writable(workdir: str) -> None:
  """The nearest existing ancestor of `workdir` must be a directory we can create files in.

  A real probe file rather than `os.access`: root passes `os.access` on read-only mounts, and a
  regular file on the path only fails later inside `os.makedirs`."""
  parent = os.path.abspath(workdir)
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  _check(os.path.isdir(parent), f"workdir {workdir} cannot be created: {parent} is a file, not a "
         "directory; pass another --workdir")
  try:
    with tempfile.TemporaryFile(dir=parent):
      pass
  except OSError as e:
    raise ConfigError(f"workdir {workdir} is not writable ({parent}: {e.strerror}); pass a --workdir "
                      "you can write to") from None


def placeholder(type_):
  """`ml_collections.config_dict.placeholder(type_)`: a None default that flags can still set."""
  return config_dict.placeholder(type_)
