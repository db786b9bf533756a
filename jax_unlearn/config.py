"""Building blocks for `configs/*.py` and config validation.

`base_config()` returns the full field set with the method sub-configs taken from each method
module's `default_config()`; a `configs/<name>.py` then sets the dataset/model/budget values.
`validate(config)` checks everything that can be checked before any work starts.
"""

from __future__ import annotations

import importlib
import os
import pkgutil

import ml_collections
from ml_collections import config_dict

from jax_unlearn.errors import ConfigError

# Every method name the experiment table knows, in table order.
ALL_METHODS = ("original", "retrain", "finetune", "bad_teacher", "amnesiac", "unsir", "dfkd", "blockf",
               "gkt", "is", "pf", "ispf", "pd", "ssd", "lfssd", "distruction")
DATASET_CLASSES = {"digits": 10, "svhn_cropped": 10, "cifar10": 10, "cifar100": 100, "cifar20": 20}
# Modules whose sub-config is not named after the module.
_CONFIG_KEYS = {"distill": "ispf"}


def method_default_configs() -> dict:
  """{sub-config name: default ConfigDict} from every method module that defines `default_config`."""
  from jax_unlearn import methods
  out = {}
  for info in pkgutil.iter_modules(methods.__path__):
    mod = importlib.import_module(f"jax_unlearn.methods.{info.name}")
    if hasattr(mod, "default_config"):
      out[getattr(mod, "CONFIG_KEY", _CONFIG_KEYS.get(info.name, info.name))] = mod.default_config()
  return out


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.seeds = ()                    # experiment: run every seed listed (empty = just `seed`)
  c.method = "ispf"
  c.methods = ALL_METHODS
  c.batch_size = 64               # supervised training batch (original, retrain, shadow models)
  c.eval_batch_size = 512
  # XLA flags set before JAX starts (jax_unlearn.xla_flags); CPU-only flags, e.g. xla_flags.FAST_CPU_CONVS.
  c.xla_cpu_flags = ""
  c.dataset = ml_collections.ConfigDict(dict(name="digits", data_dir="", download=False,
                                             split_seed=0, test_fraction=0.25, val_fraction=0.2))
  # fast_cpu_kernels: BN statistics as GEMVs and strided-conv input gradients by phase (models.AllCNN),
  # faster on XLA:CPU; it changes float rounding, so digits keeps it off (its numbers predate it).
  c.model = ml_collections.ConfigDict(dict(name="allcnn", width=1.0, patch=4, dim=192, depth=6,
                                           heads=3, mlp_dim=384, fast_cpu_kernels=False,
                                           bn_running_var="unbiased"))  # or 'biased' (layers.BatchNorm)
  c.forget = ml_collections.ConfigDict(dict(mode="class", classes=(3,), num_samples=100))
  c.train = ml_collections.ConfigDict(dict(epochs=30, lr=0.05, momentum=0.9, weight_decay=1e-4,
                                           milestones=(20,), gamma=0.1))
  for key, sub in method_default_configs().items():
    c[key] = sub
  from jax_unlearn import metrics, sweep  # noqa: PLC0415 (metrics and `launch.sweep` sub-configs)
  c.metrics = metrics.default_config()
  c.sweep = sweep.default_config()
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


def validate(config, workdir: str | None = None, methods: tuple[str, ...] = ()) -> None:
  """Raises ConfigError (one line: the problem and the fix) for anything wrong in `config`."""
  from jax_unlearn import data, methods as methods_lib, models
  ds = config.dataset.name
  _check(ds in DATASET_CLASSES, f"unknown dataset {ds!r}; set --config.dataset.name to one of: "
         f"{', '.join(sorted(DATASET_CLASSES))}")
  _check(config.model.name in models.CLASSIFIERS, f"unknown model {config.model.name!r}; set "
         f"--config.model.name to one of: {', '.join(sorted(models.CLASSIFIERS))}")
  _check(isinstance(config.batch_size, int) and config.batch_size > 0,
         f"batch size must be a positive integer, got {config.batch_size!r}; set --config.batch_size=64")
  _check(config.train.lr >= 0, f"learning rate must be >= 0, got {config.train.lr}; set --config.train.lr=0.05")
  _check(config.train.epochs >= 1, f"train epochs must be >= 1, got {config.train.epochs}; set "
         "--config.train.epochs=30")
  data.validate_forget(config.forget, data.dataset_info(ds))
  known = set(methods_lib.names())
  for m in methods:
    _check(m in known or m in ALL_METHODS,
           f"unknown method {m!r}; use one of: {', '.join(ALL_METHODS)}")
    _check(m in known, f"method {m!r} is not implemented in this version yet; remove it from "
           f"--config.methods (implemented: {', '.join(sorted(known))})")
  if "unsir" in methods and config.forget.mode == "random":
    raise ConfigError("unsir needs whole forget classes (it learns one noise tensor per class); remove "
                      "unsir from --config.methods for random forgetting (finetune, bad_teacher, "
                      "amnesiac and retrain work)")
  defaults = None
  for key in ("ispf", "lfssd", "ssd", "distruction", "finetune", "bad_teacher", "amnesiac", "unsir"):
    sub = config.get(key)
    if sub is None:
      continue
    for field in ("lr", "lr_g", "alpha", "lam", "tau", "batch_size"):
      if field in sub and sub[field] is not None:
        if (sub[field] > 0 if field == "batch_size" else sub[field] >= 0):
          continue
        defaults = method_default_configs() if defaults is None else defaults
        default = defaults.get(key, {}).get(field)
        raise ConfigError(
            f"--config.{key}.{field} must be {'positive' if field == 'batch_size' else '>= 0'}, got "
            f"{sub[field]}; set --config.{key}.{field}=<value>" +
            (f" (default {default})" if default is not None else ""))
  if workdir is not None:
    _check(bool(workdir), "--workdir is required: pass --workdir=/some/dir")
    _check_writable(workdir)


def _check_writable(workdir: str) -> None:
  """The nearest existing ancestor of `workdir` must be a directory we can create files in.

  A real probe file rather than `os.access`: root passes `os.access` on read-only mounts, and a
  regular file on the path only fails later inside `os.makedirs`."""
  import tempfile
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
  return config_dict.placeholder(type_)
