"""The contract every unlearning method follows.

A method is one file in `jax_unlearn/methods/` that holds its paper's equations as pure functions and
registers a `run(ctx) -> UnlearnResult` entry point by name::

    from jax_unlearn.methods import base

    @base.register("lfssd")
    def run(ctx: base.UnlearnContext) -> base.UnlearnResult:
      ...

`ctx.config` is the full experiment config; a method reads its own sub-config (`ctx.config.lfssd`).
The original model (the teacher) is `ctx.model` (a flax.linen module) with variables `ctx.original`
(`{'params': ..., 'batch_stats': ...}`). Data-free methods must not touch `ctx.data` images at all;
the data they may use is stated in their docstring.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax

from jax_unlearn.errors import ConfigError

Variables = dict[str, Any]


@dataclasses.dataclass
class UnlearnContext:
  """Everything a method may use. Built by `jax_unlearn.api.unlearn`."""
  config: Any                      # ml_collections.ConfigDict, the full config
  model: Any                       # flax.linen classifier module (see jax_unlearn.models)
  original: Variables              # variables of the trained original model (the teacher)
  data: Any                        # jax_unlearn.data.UnlearnData (forget/retain views), or None
  key: jax.Array                   # PRNG key reserved for this method; split it, never reuse it
  workdir: str                     # directory for this method's diagnostics and checkpoints
  log: Callable[[str], None] = print  # progress lines (method, step, elapsed)
  forget_classes: tuple[int, ...] = ()  # empty for random-sample forgetting
  num_classes: int = 10

  @property
  def forget_mode(self) -> str:
    """'class' | 'subclass' | 'random': `config.forget.mode`, else inferred from `forget_classes`."""
    forget = self.config.get("forget", None) if hasattr(self.config, "get") else None
    mode = forget.get("mode", None) if forget is not None else None
    return mode or ("class" if self.forget_classes else "random")


@dataclasses.dataclass
class UnlearnResult:
  """The unlearned model and anything the method wants recorded."""
  variables: Variables             # {'params': ..., 'batch_stats': ...} of the unlearned model
  info: dict = dataclasses.field(default_factory=dict)  # JSON-able extras (diagnostic summaries)


_REGISTRY: dict[str, Callable[[UnlearnContext], UnlearnResult]] = {}


def register(name: str):
  """Decorator registering `run(ctx) -> UnlearnResult` under `name`."""
  def deco(fn):
    if name in _REGISTRY and _REGISTRY[name] is not fn:
      raise ValueError(f"method {name!r} registered twice")
    _REGISTRY[name] = fn
    return fn
  return deco


def get(name: str) -> Callable[[UnlearnContext], UnlearnResult]:
  from jax_unlearn import methods  # noqa: F401  (imports every method module, filling the registry)
  if name not in _REGISTRY:
    raise ConfigError(
        f"unknown method {name!r}; set --config.method to one of: {', '.join(sorted(_REGISTRY))}")
  return _REGISTRY[name]


def names() -> list[str]:
  from jax_unlearn import methods  # noqa: F401
  return sorted(_REGISTRY)
