"""The metric contract and registry, and `MetricSuite`, which runs every configured metric.

A metric is one file in `jax_unlearn/metrics/` (as big_vision's evaluators): its maths as functions on
arrays of logits, plus an *evaluator* class registered by name with the result keys it writes, the table
columns it fills and its config contract (`default_config` fields of `config.metrics`, `resolve`
filling defaults derived from the training recipe, `validate_config(cfg, problem)`)::

    from jax_unlearn.metrics.base import Evaluator, register

    @register("kl", columns=(("kl_to_retrain", "KL to Retrain", "{:.4f}"),), order=70, needs_retrain=True)
    class KLToRetrain(Evaluator):
      def __call__(self, out):            # out: `Outputs`, the shared cache of one model's outputs
        return {"kl_to_retrain": mean_kl_from_logits(out.logits("forget_eval"), self.retrain_logits)}

`MetricSuite` builds one evaluator per name in `config.metrics.names`, once per (data set, forget set,
original, retrain); evaluating a model is one forward pass per data pool (`Outputs.logits`), shared by
all evaluators. Adding a metric is adding a file: the table's columns, `config.metrics` defaults and
validation all read this registry.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from jax_unlearn.configdict import as_dict, merge
from jax_unlearn.errors import ConfigError
from jax_unlearn.registry import Registry
from jax_unlearn.train import supervised
from jax_unlearn.train.evaluate import predict_logits

__all__ = ["Column", "MetricSpec", "Evaluator", "Outputs", "MetricSuite", "register", "register_population",
           "population_names", "specs", "spec",
           "names", "default_names", "columns", "result_keys", "default_config", "resolve_config",
           "discover", "unregister"]

Column = tuple[str, str, str]  # (result key, column title, format)


@dataclasses.dataclass(frozen=True)
class MetricSpec:
  """A registered metric: its name in `config.metrics.names`, the result keys it writes (`keys`, the
  columns' keys first), the table `columns`, its `config.metrics` fields (`default_config`) and check
  (`validate_config(cfg, problem)`), table `order`, whether it needs a Retrain model, and whether it is
  in the default `config.metrics.names`."""
  name: str
  evaluator: type
  columns: tuple[Column, ...]
  keys: tuple[str, ...]
  default_config: Callable[[], dict] | None = None
  validate_config: Callable[[Any, Any], None] | None = None
  resolve: Callable[[Any, Any], None] | None = None
  order: float = 1000.0
  needs_retrain: bool = False
  in_default: bool = True
  population: bool = False


_REGISTRY: Registry[MetricSpec] = Registry("metric", __name__.rpartition(".")[0],
                                           "--config.metrics.names (e.g. acc,mia_i)")


def register(name: str, *, columns: tuple[Column, ...], extra_keys: tuple[str, ...] = (),
             default_config: Callable[[], dict] | None = None,
             validate_config: Callable[[Any, Any], None] | None = None,
             resolve: Callable[[Any, Any], None] | None = None, order: float = 1000.0,
             needs_retrain: bool = False, in_default: bool = True) -> Callable[[type], type]:
  """Class decorator registering an `Evaluator` subclass under `name` (see the module docstring)."""
  def deco(cls):
    keys = tuple(c[0] for c in columns) + tuple(extra_keys)
    _REGISTRY.add(MetricSpec(name=name, evaluator=cls, columns=tuple(columns), keys=keys,
                             default_config=default_config, validate_config=validate_config,
                             resolve=resolve, order=order, needs_retrain=needs_retrain,
                             in_default=in_default))
    return cls
  return deco


def register_population(name: str, *, columns: tuple[Column, ...], extra_keys: tuple[str, ...] = (),
                        validate_config: Callable[[Any, Any], None] | None = None,
                        order: float = 1000.0) -> None:
  """Registers a *population* metric: it scores an unlearning method through a population of models
  (the per-example privacy audit, `launch.audit`), not one model, so `MetricSuite` has no evaluator
  for it; `launch.experiment` fills its columns from the method's audit when `config.metrics.names`
  asks for it. Never in the default names (an audit trains populations of models)."""
  keys = tuple(c[0] for c in columns) + tuple(extra_keys)
  _REGISTRY.add(MetricSpec(name=name, evaluator=None, columns=tuple(columns), keys=keys,
                           validate_config=validate_config, order=order, in_default=False,
                           population=True))


def population_names(metric_names: Any) -> tuple[str, ...]:
  """The population metrics among `metric_names` (see `register_population`)."""
  return tuple(n for n in parse_names(metric_names) if spec(n).population)


# The registry's own methods as this module's functions.
unregister = _REGISTRY.pop      # removes a metric registered from outside the package
discover = _REGISTRY.discover   # imports every module of this package once (each registers on import)
specs = _REGISTRY.all           # every registered metric, in table order
spec = _REGISTRY.get            # the MetricSpec of `name`; ConfigError naming the choices if unknown


def names() -> tuple[str, ...]:
  """Every registered metric name, in table order."""
  return tuple(_REGISTRY.names())


def default_names() -> tuple[str, ...]:
  """The default `config.metrics.names`: every registered metric marked `in_default`, in order."""
  return tuple(s.name for s in specs() if s.in_default)


def columns(metric_names: Any = None) -> tuple[Column, ...]:
  """The table columns of `metric_names` (default: every registered metric), in table order."""
  chosen = [s for s in specs() if metric_names is None or s.name in metric_names]
  return tuple(c for s in chosen for c in s.columns)


def result_keys() -> tuple[str, ...]:
  """Every column key of every registered metric, in table order (the rows' metric fields)."""
  return tuple(c[0] for c in columns())


# ----------------------------------------------------------------------------------------------------
# config.metrics

def _common_config() -> dict:
  return dict(
      seed_offset=1000,          # metric seed = config.seed + seed_offset (pools, shuffles, shadows)
      batch_size=512)            # inference batch (padded, never 1)


def default_config() -> ml_collections.ConfigDict:
  """`config.metrics`: `names` (which metrics to compute; the others are NaN), the common fields, and
  every registered metric's own fields (see each metric module's `default_config`)."""
  c = ml_collections.ConfigDict()
  c.names = default_names()
  for k, v in _common_config().items():
    c[k] = v
  for s in specs():
    for k, v in (s.default_config() if s.default_config else {}).items():
      c[k] = v
  return c


def parse_names(names: Any) -> tuple[str, ...]:
  """`names` as a tuple: accepts a tuple, or a comma-separated string ("acc,mia_i")."""
  names = (names,) if isinstance(names, str) else tuple(names)
  return tuple(n.strip() for part in names for n in str(part).split(",") if n.strip())


def resolve_config(config: Any, problem: Any = None) -> tuple[ml_collections.ConfigDict, int]:
  """(metrics config merged over `default_config()` and validated, metric seed).

  Accepts the full experiment config (then `config.seed`, `config.train` and `config.batch_size` are
  used: metrics such as MIA-II's shadows default to the original's recipe) or `config.metrics` alone
  (then the library's default recipe, `train.supervised.default_recipe()`)."""
  seed, recipe = 0, None
  if config is not None and "metrics" in config:
    seed = int(config.get("seed", 0))
    if "train" in config:
      recipe = supervised.recipe(config.train, config.get("batch_size", None))
    config = config.metrics
  recipe = recipe if recipe is not None else supervised.default_recipe()
  given = as_dict(config)
  if "names" in given:  # a string "acc,mia_i" or a tuple
    given["names"] = parse_names(given["names"])
  cfg = merge(default_config(), given, prefix="metrics")
  cfg.names = parse_names(cfg.names)
  for n in cfg.names:
    if spec(n).population and problem is not None and getattr(problem, "forget_mode", "random") != "random":
      raise ConfigError(f"config.metrics.names has {n!r}, a per-example audit metric, which needs random "
                        "forgetting (--config.forget.mode=random); leave it out of a class-forgetting table")
  for s in specs():
    if s.resolve is not None:
      s.resolve(cfg, recipe)
  for s in specs():
    if s.validate_config is not None:
      s.validate_config(cfg, problem)
  for field in ("batch_size",):
    if int(cfg[field]) < 1:
      raise ConfigError(f"config.metrics.{field} must be >= 1, got {cfg[field]}; see "
                        "jax_unlearn.metrics.default_config() for defaults")
  return cfg, seed + int(cfg.seed_offset)


# ----------------------------------------------------------------------------------------------------
# Evaluators and the shared output cache

class Outputs:
  """The outputs of one evaluated model, computed once per data pool and shared by the evaluators."""

  def __init__(self, suite: "MetricSuite", variables):
    self.suite, self.variables, self._logits = suite, variables, {}

  def logits(self, pool: str) -> np.ndarray:
    """Eval-mode logits on the images of `pool` ('test', 'forget_train', or one an evaluator added)."""
    if pool not in self._logits:
      self._logits[pool] = self.suite.logits_of(self.variables, self.suite.pool(pool))
    return self._logits[pool]


class Evaluator:
  """Base class of a registered metric: built once per suite (`__init__(suite)`, cheap; heavy parts
  lazily), called once per evaluated model with its `Outputs`; `info()` describes cached parts."""

  def __init__(self, suite: "MetricSuite"):
    self.suite = suite

  @property
  def cfg(self):
    return self.suite.cfg

  def __call__(self, out: Outputs) -> dict:
    raise NotImplementedError

  def info(self) -> dict:
    return {}


class MetricSuite:
  """All configured metrics for one (data set, forget set, original, retrain).

  `config` is the full experiment config (reads `config.metrics`, `config.seed`, the recipe) or the
  metrics sub-config alone. `key` seeds stochastic parts (default: PRNGKey(metric seed));
  `cache_dir`: where evaluators checkpoint expensive cached parts (MIA-II's shadow models), resumable
  and reused; it must be specific to the data, model and metric config (`jax_unlearn.experiment`
  names it so). Extra keyword arguments are handed to the evaluators (`shadow=`, `attack=` for
  MIA-II). Metrics not in `config.metrics.names`, or needing a Retrain model when none is given, are
  NaN."""

  def __init__(self, model, data, *, original_vars, retrain_vars=None, config=None, key=None,
               log: Callable[[str], None] = print, cache_dir: str | None = None, shadow_dir=None,
               **evaluator_kwargs):
    self.model, self.data, self.original, self.retrain = model, data, original_vars, retrain_vars
    self.cfg, self.seed = resolve_config(config)
    self.key = jax.random.PRNGKey(self.seed) if key is None else key
    self.log = log
    self.cache_dir = cache_dir or shadow_dir
    self.kwargs = evaluator_kwargs
    self.forget_idx = np.flatnonzero(np.asarray(data.forget_train_mask, bool))
    self._pools = {"test": np.asarray(data.test.images),
                   "forget_train": np.asarray(data.train.images)[self.forget_idx]}
    self.evaluators = {}
    for name in self.cfg.names:
      s = spec(name)
      if s.population or (s.needs_retrain and retrain_vars is None):
        continue
      self.evaluators[name] = s.evaluator(self)

  def add_pool(self, name: str, images) -> None:
    """Registers a data pool (raw [0,1] images) whose logits evaluators share."""
    images = np.asarray(images)
    if name in self._pools and not np.array_equal(self._pools[name], images):
      raise ValueError(f"metric pool {name!r} registered twice with different images")
    self._pools[name] = images

  def pool(self, name: str) -> np.ndarray:
    return self._pools[name]

  def logits_of(self, variables, images) -> np.ndarray:
    return predict_logits(self.model, variables, images, self.data.info, self.cfg.batch_size)

  def info(self) -> dict:
    """JSON-able description of the cached parts (for metrics.json / BUILD_NOTES)."""
    out = {"seed": self.seed, "forget_train": len(self.forget_idx)}
    for e in self.evaluators.values():
      out.update(e.info())
    return out

  def __call__(self, variables) -> dict:
    """All configured metrics of one model (`variables`): every registered result key (NaN when not
    computed) plus the evaluators' extra keys."""
    row = {k: float("nan") for k in result_keys()}
    out = Outputs(self, variables)
    for e in self.evaluators.values():
      row.update(e(out))
    return row

  evaluate = __call__
