"""The contract every unlearning method follows, and the method registry.

A method is one file in `jax_unlearn/methods/` that holds its paper's equations as pure functions and
registers a `run(ctx) -> UnlearnResult` entry point by name, with its config contract::

    from jax_unlearn.methods import base

    def default_config() -> ml_collections.ConfigDict: ...       # config.<name> defaults
    def validate_config(cfg, problem: base.Problem) -> None: ... # raise ConfigError naming the fix

    @base.register("lfssd", default_config=default_config, validate_config=validate_config,
                   order=150, data="D_r, D_f (labels unused)")
    def run(ctx: base.UnlearnContext) -> base.UnlearnResult:
      ...

Nothing else is edited to add a method: modules are discovered (`discover`), the experiment table, the
default `config.methods`, `config.validate` (which calls every `validate_config` on the merged
sub-config *before* any model is trained) and the contract test read this registry.

`ctx.cfg` is the method's merged and validated sub-config (`config.<config_key>`); the original model
(the teacher) is `ctx.model` (a flax.linen module) with variables `ctx.original`
(`{'params': ..., 'batch_stats': ...}`). Data-free methods must not touch `ctx.data` images at all;
the data each method reads is declared in `data` and stated in its docstring.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import ml_collections

from jax_unlearn.configdict import merge
from jax_unlearn.errors import ConfigError
from jax_unlearn.registry import Registry
from jax_unlearn.train import supervised

__all__ = ["Variables", "Problem", "UnlearnContext", "UnlearnResult", "MethodSpec", "register", "get",
           "spec", "specs", "names", "default_table", "discover", "unregister", "context", "method_config"]

Variables = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Problem:
  """What a config describes, known before any work: enough to validate a method's settings.

  info: the dataset's `DataInfo` (classes, image shape, normalisation); forget_mode: 'class' |
  'subclass' | 'random'; forget_classes: the forgotten classes (fine classes in 'subclass' mode, empty
  in 'random' mode); num_forget_samples: the random-forgetting sample count (0 otherwise).
  """
  info: Any
  forget_mode: str = "class"
  forget_classes: tuple[int, ...] = ()
  num_forget_samples: int = 0

  @property
  def num_classes(self) -> int:
    return int(self.info.num_classes)


@dataclasses.dataclass
class UnlearnContext:
  """Everything a method may use. Built by `jax_unlearn.api.make_context` (or by hand)."""
  cfg: Any                         # the method's merged sub-config (ml_collections.ConfigDict)
  model: Any                       # flax.linen classifier module (see jax_unlearn.models)
  original: Variables              # variables of the trained original model (the teacher)
  data: Any                        # jax_unlearn.data.UnlearnData (forget/retain views), or None
  key: jax.Array                   # PRNG key reserved for this method; split it, never reuse it
  workdir: str                     # directory for this method's diagnostics and checkpoints
  log: Callable[[str], None] = print  # progress lines (method, step, elapsed)
  forget_classes: tuple[int, ...] = ()  # classifier labels forgotten; empty for random/sub-class
  num_classes: int = 10
  forget_mode: str = "class"       # 'class' | 'subclass' | 'random'
  seed: int = 0                    # the experiment seed (numpy shuffles of methods that use them)
  cache_dir: str = ""              # beside the original model: request-independent caches
  train_cfg: Any = None            # the original's training recipe (retrain trains with it)
  model_cfg: Any = None            # config.model (retrain's fingerprint)


@dataclasses.dataclass
class UnlearnResult:
  """The unlearned model and anything the method wants recorded."""
  variables: Variables             # {'params': ..., 'batch_stats': ...} of the unlearned model
  info: dict = dataclasses.field(default_factory=dict)  # JSON-able extras (diagnostic summaries)
  # Material for plots and reports (per-epoch records, sample images, curves): drawn by
  # `jax_unlearn.report.method_plots`, never written into metrics.json.
  artifacts: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """A registered method. `config_key` names its sub-config (several methods may share one, as the
  data-free strategies share `config.ispf`); `order` places it in the table; `in_default_table`
  puts it in the default `config.methods`; `data` says which data it reads (documentation)."""
  name: str
  run: Callable[[UnlearnContext], UnlearnResult]
  config_key: str | None = None
  default_config: Callable[[], ml_collections.ConfigDict] | None = None
  validate_config: Callable[[Any, Problem], None] | None = None
  order: float = 1000.0
  in_default_table: bool = True
  data: str = ""


_REGISTRY: Registry[MethodSpec] = Registry("method", __name__.rpartition(".")[0],
                                           "--config.method (or --config.methods)")


def _module(fn) -> str | None:
  return getattr(fn, "__module__", None) or getattr(getattr(fn, "func", None), "__module__", None)


def register(name: str, *, default_config: Callable | None = None, validate_config: Callable | None = None,
             config_key: str | None = None, order: float = 1000.0, in_default_table: bool = True,
             data: str = "") -> Callable[[Callable[[UnlearnContext], UnlearnResult]],
                                         Callable[[UnlearnContext], UnlearnResult]]:
  """Decorator registering `run(ctx) -> UnlearnResult` under `name` (see the module docstring).
  `config_key` defaults to `name` when the method has a `default_config`."""
  def deco(fn):
    key = config_key or (name if default_config is not None else None)
    old = _REGISTRY.peek(name)
    if old is not None and old.run is not fn and _module(old.run) != _module(fn):
      raise ValueError(f"method {name!r} registered twice ({_module(old.run)}, {_module(fn)})")
    _REGISTRY.add(MethodSpec(name=name, run=fn, config_key=key, default_config=default_config,
                             validate_config=validate_config, order=order,
                             in_default_table=in_default_table, data=data))
    return fn
  return deco


# The registry's own methods as this module's functions.
unregister = _REGISTRY.pop      # removes a method registered from outside the package (tests, notebooks)
discover = _REGISTRY.discover   # imports every module of this package once (each registers on import)
specs = _REGISTRY.all           # every registered method, in table order
names = _REGISTRY.names


def default_table() -> tuple[str, ...]:
  """The default `config.methods`: every registered method marked `in_default_table`, in order."""
  return tuple(s.name for s in specs() if s.in_default_table)


spec = _REGISTRY.get            # the MethodSpec of `name`; ConfigError naming the choices if unknown


def context(name: str, config: Any, **fields: Any) -> UnlearnContext:
  """An `UnlearnContext` for method `name` from a full (or partial) experiment config: `cfg` is
  `config.<config_key>` merged over the method's defaults (`configdict.merge`); `seed`, `forget_mode`
  and `train_cfg` come from `config.seed`, `config.forget.mode` (else: 'class' when `forget_classes`
  is given, 'random' otherwise) and `config.train`. `fields` are the other context fields (model,
  original, data, key, workdir, log, forget_classes, num_classes, ...)."""
  s = spec(name)
  get = config.get if hasattr(config, "get") else (lambda k, d=None: d)
  cfg = merge(s.default_config(), get(s.config_key, None), prefix=s.config_key) if s.config_key else None
  forget = get("forget", None)
  mode = forget.get("mode", None) if forget is not None else None
  fields.setdefault("forget_mode", mode or ("class" if fields.get("forget_classes") else "random"))
  fields.setdefault("seed", int(get("seed", 0) or 0))
  if get("train", None) is not None:
    fields.setdefault("train_cfg", supervised.recipe(get("train"), get("batch_size", None)))
  return UnlearnContext(cfg=cfg, **fields)


def get(name: str) -> Callable[[UnlearnContext], UnlearnResult]:
  """The `run` function of a registered method."""
  return spec(name).run


def method_config(name: str, config: Any = None, /, **overrides: Any) -> ml_collections.ConfigDict:
  """The hyper-parameters of method `name` for its functional API (`ssd.unlearn`, `lfssd.unlearn`,
  `distruction.unlearn`, `data_free.unlearn`): its `default_config()` updated with `config` (a dict, a
  ConfigDict, a dataclass instance or None) and then the keyword `overrides`, merged by
  `configdict.merge` (unknown fields and wrong types are a `ConfigError`) and checked by the method's
  `validate_config` — the same filling as `--config.<name>.<field>` flags get. Looks the method up
  without discovering the others (importing one method does not import the rest)."""
  s = _REGISTRY.peek(name) or spec(name)
  if s.default_config is None:
    raise ConfigError(f"method {name!r} has no hyper-parameters to merge")
  cfg = merge(s.default_config(), config, prefix=s.config_key or name, **overrides)
  if s.validate_config is not None:
    s.validate_config(cfg, None)
  return cfg
