"""Anyone's JAX classifier as the one functional model the unlearning methods call.

The methods are written against the call of our own linen classifiers,

    apply(variables, x, train=False, mask=None, features=False, *, mutable=())

which returns the logits z = f(x; θ) (or `(logits, penultimate features)` when `features`), or
`(that, updates)` when `mutable` names collections. `as_model` turns four kinds of model into a
`Model` whose `apply` has exactly this call:

  (a) `apply_fn(params, x) -> logits` with a bare params pytree (no BatchNorm);
  (b) `apply_fn(params, state, x, train) -> (logits, new_state)` for models with BN or other state;
  (c) a flax.linen module with its variables: ours (AllCNN, ResNet18, ViT: passed through with the
      very same `module.apply` call, so every number is bit-identical) or anyone's, with or without a
      `train` argument, with flax's own `nn.BatchNorm`;
  (d) a Flax NNX module: split once into (graphdef, params, rest); every call is a pure function
      `nnx.merge(graphdef, fresh copies of the states)` → call → `nnx.split`, so it works under
      `jax.jit`, `jax.grad`, `jax.vmap` and `lax.scan` (copying the states first gives the merged
      module Variables of the current trace; merging the caller's Variables raises TraceContextError).

Variables are always `{'params': P}` plus `{'batch_stats': S}` when the model has state: 'batch_stats'
is the canonical slot of the non-trainable state whatever it holds (flax BN statistics, an NNX
module's non-`nnx.Param` state, the `state` of kind (b)), because the methods read
`updates['batch_stats']`. For NNX, P and S are `nnx.State` pytrees (`.to_pure_dict()` for dicts).

Capabilities (flags on `Model`; `require` raises `ConfigError` with the fix when one is missing):

* `supports_train`: a train mode that differs from eval (BN batch statistics). Models without state
  and without a train argument run `train=True` as eval (there is nothing to differ).
* `supports_mask`: a `[N]` bool row mask restricts train-mode BN batch statistics (and the running
  average update) to kept rows, as a PyTorch BN sees after PreFilter/BlockF shrink the batch. Linen:
  passed as `mask=` when `__call__` takes it, otherwise injected into every flax `nn.BatchNorm` with
  `nn.intercept_methods` (broadcast along the layer input's leading axis, which must be the batch
  axis). NNX: injected into every `nnx.BatchNorm`. Vacuously true for BN-free models (a); false for
  (b), whose layers the adapter cannot reach.
* `supports_features`: penultimate features for the DAFL activation loss (weight 0 in ISPF): linen
  models whose `__call__` takes `features`, or any model given `features_fn`, a function called like
  the model but returning `(logits, features)`: (a) `features_fn(params, x)`, (b)
  `features_fn(params, state, x, train) -> ((logits, features), new_state)`, linen
  `features_fn(module, x, **call_kwargs)` (run as `module.apply(..., method=features_fn)`), NNX
  `features_fn(module, x)` on the merged module.
* `supports_bn_stats`: `apply(..., mutable=['bn_stats'])` returns, under 'bn_stats', statistics that
  `models.bn_input_stats` flattens to one (μ_l, σ²_l, m_l, v_l) per BatchNorm l: the per-channel mean
  and *biased* variance of the layer's input over all axes but the feature axis (kept rows only under
  a mask) and the layer's running mean/var after the call, in call order. Our `layers.BatchNorm` sows
  them; flax `nn.BatchNorm` inputs are captured with `nn.intercept_methods`, `nnx.BatchNorm` inputs by
  wrapping `nnx.BatchNorm.__call__` while the model runs (only the model's own layers are recorded).
  A model that ran no BatchNorm raises instead of giving a silent zero L_BN.

Limits: BN layers inside linen lifted transforms (`nn.scan`, `nn.vmap`, `nn.remat`) or inside
`nnx.vmap`/`nnx.scan` of the user's model cannot be captured or masked (their traced values would
leak out of the inner trace); a BN subclass whose `__call__` never calls the flax one is invisible
(then `bn_stats` raises, masks raise on linen, are ignored on NNX); under an outer `jax.vmap` over
examples each call sees its own batch, so train-mode BN statistics are per example.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from jax_unlearn.errors import ConfigError
from jax_unlearn.models.layers import BN_STATS, bn_input_stats
from jax_unlearn.models.layers import BatchNorm as OurBatchNorm

__all__ = ["CAPABILITIES", "BNStat", "Model", "as_model", "as_classifier", "supports", "require",
           "follows_our_convention"]

PyTree = Any
BNStat = tuple[jax.Array, jax.Array, jax.Array, jax.Array]  # (mean, var, running_mean, running_var)

CAPABILITIES = ("train", "mask", "features", "bn_stats")

# What each capability is, and the model-side fix; `require` adds the method-side fix.
_NEEDS = {
    "train": ("a BatchNorm train mode",
              ("give the linen __call__ a `train` (or `deterministic`) argument or pass train_kwarg=, "
               "or pass apply_fn(params, state, x, train) with state=")),
    "mask": ("row masks for BatchNorm batch statistics",
             "use flax nn.BatchNorm/nnx.BatchNorm layers or a linen __call__ that takes mask="),
    "features": ("penultimate features",
                 "pass features_fn= to as_model (called like the model, returning (logits, features))"),
    "bn_stats": ("BatchNorm input statistics",
                 "use flax nn.BatchNorm/nnx.BatchNorm layers (a linen or NNX module, not a bare apply_fn)"),
}
_TRAIN_ARGS = ("train", "training", "is_training")
_NEGATED_TRAIN_ARGS = ("deterministic", "use_running_average")


@dataclasses.dataclass(frozen=True)
class Model:
  """One functional classifier (see the module docstring). Hashable: `model.apply` can be a static
  argument of `jax.jit`, as the methods' `apply_fn` is.

  Attributes:
    kind: 'linen' | 'nnx' | 'apply_fn' | 'stateful_apply_fn'.
    impl: the linen module, the NNX `GraphDef`, or the user's apply function.
    name: what the model is, for error messages.
    supports_*: the capabilities.
    features_fn: see `supports_features`.
    call_kwargs: linen only, which of ('mask', 'features') `__call__` takes.
    train_kwarg, train_negated: linen only, the argument that selects train mode (`deterministic`
      and `use_running_average` are passed `not train`).
  """
  kind: str
  impl: Any
  name: str
  supports_train: bool = False
  supports_mask: bool = False
  supports_features: bool = False
  supports_bn_stats: bool = False
  features_fn: Callable[..., Any] | None = None
  call_kwargs: tuple[str, ...] = ()
  train_kwarg: str | None = None
  train_negated: bool = False

  def apply(self, variables: dict[str, PyTree], x: jax.Array, train: bool = False,
            mask: jax.Array | None = None, features: bool = False, *,
            mutable: Sequence[str] | str = ()) -> Any:
    """Logits `[N, K]` (or `(logits, features)`), or `(that, updates)` when `mutable` is non-empty;
    `updates` has every requested collection ('batch_stats': new state, {} for stateless models;
    'bn_stats': BN input statistics). Raises `ConfigError` for a capability the model lacks."""
    mutable = (mutable,) if isinstance(mutable, str) else tuple(mutable or ())
    if features:
      require(self, "features", "apply(features=True)")
    if BN_STATS in mutable:
      require(self, "bn_stats", "apply(mutable=['bn_stats'])")
    if train and _has_state(variables):
      require(self, "train", "apply(train=True) on a model with state")
    if train and mask is not None:
      require(self, "mask", "apply(train=True, mask=...)")
    out, updates = _APPLY[self.kind](self, variables, x, bool(train), mask, bool(features), mutable)
    return (out, updates) if mutable else out


def _has_state(variables) -> bool:
  # An empty 'batch_stats' (a BN-free model's `{}`) is no state: train mode is then eval mode.
  return "batch_stats" in variables and bool(jax.tree.leaves(variables["batch_stats"]))


def follows_our_convention(obj: Any) -> bool:
  """Whether `obj` is a linen module whose `__call__` takes `train`, `mask` and `features` (our
  classifiers, `models.CLASSIFIERS`): the methods call it directly, `module.apply(variables, x,
  train=..., mask=..., features=..., mutable=...)`, with no adapter in between."""
  if not isinstance(obj, nn.Module) or isinstance(obj, nnx.Module):
    return False
  names = {p.name for p in _call_args(type(obj).__call__)}
  return {"train", "mask", "features"} <= names


def supports(model: Any, capability: str) -> bool:
  """Whether `model` has `capability`: a `Model`'s flag; True for a module that
  `follows_our_convention` (its BatchNorm layers sow `bn_stats`; a model without BN sows none, which
  the methods that need them detect)."""
  if capability not in _NEEDS:
    raise ValueError(f"unknown capability {capability!r}; one of {CAPABILITIES}")
  if isinstance(model, Model):
    return bool(getattr(model, f"supports_{capability}"))
  return follows_our_convention(model)


def as_classifier(obj: Any, variables: PyTree | None = None, **kwargs: Any) -> tuple[Any, PyTree]:
  """The model a method calls, and its variables: `(obj, variables)` unchanged for a `Model` or a
  module that `follows_our_convention` (so the library's own models run exactly the program they
  always ran), otherwise `as_model(obj, variables, **kwargs)`. Every public function of
  `jax_unlearn.methods` and `jax_unlearn.metrics` that takes a model goes through this."""
  if isinstance(obj, Model) or follows_our_convention(obj):
    if variables is None:
      raise ConfigError(f"{type(obj).__name__} needs its variables; pass variables=")
    return obj, variables
  return as_model(obj, variables, **kwargs)


def require(model: Any, capability: str, why: str, fix: str | None = None) -> None:
  """Raises `ConfigError` unless `model` (a `Model`, or a module that `follows_our_convention`) has
  `capability` (one of `CAPABILITIES`).

  `why` names what needs it and `fix` the method-side way out, e.g.
  `require(m, 'bn_stats', 'the DFQ BN-statistics loss (config.ispf.bn weight 1.0)',
  'set --config.ispf.bn=0')`.
  """
  if supports(model, capability):
    return
  what, how = _NEEDS[capability]
  raise ConfigError(f"{why} needs {what}, but this model ({model.name}) has none; "
                    f"{fix + ' or ' if fix else ''}{how}")


# ----------------------------------------------------------------------------------------------------
# Recognising a model.

def as_model(obj: Any, variables: PyTree | None = None, *, state: PyTree | None = None,
             features_fn: Callable[..., Any] | None = None, train_kwarg: str | None = None
             ) -> tuple[Model, dict[str, PyTree]]:
  """`(Model, variables)` for a linen module + variables, an NNX module, `apply_fn(params, x)` +
  params, or `apply_fn(params, state, x, train)` + params with `state=`; a `Model` passes through.

  Args:
    obj: the model (see the module docstring, kinds (a)-(d)).
    variables: linen variables (`{'params': ..., 'batch_stats': ...}`), or the bare params of an
      apply function; None for NNX modules, which hold their state.
    state: the state of kind (b); its presence selects (b).
    features_fn: see `supports_features`.
    train_kwarg: linen only, the `__call__` argument that selects train mode, when it is not one of
      'train', 'training', 'is_training' (passed `train`) or 'deterministic', 'use_running_average'
      (passed `not train`).
  """
  if isinstance(obj, Model):
    if variables is None:
      raise ConfigError("as_model(Model) needs its variables; pass variables=")
    return obj, variables
  if isinstance(obj, nnx.Module):
    return _as_nnx(obj, variables, features_fn)
  if isinstance(obj, nn.Module):
    return _as_linen(obj, variables, features_fn, train_kwarg)
  if callable(obj):
    return _as_apply_fn(obj, variables, state, features_fn)
  raise ConfigError(f"as_model cannot use a {type(obj).__name__}; pass a flax linen or NNX module, "
                    "apply_fn(params, x) or apply_fn(params, state, x, train)")


def _call_args(fn: Callable[..., Any]) -> list[inspect.Parameter]:
  try:
    return list(inspect.signature(fn).parameters.values())
  except (TypeError, ValueError):  # builtins, some C callables: nothing to check
    return []


def _as_linen(module: nn.Module, variables, features_fn, train_kwarg):
  if variables is None or "params" not in variables:
    raise ConfigError(f"as_model({type(module).__name__}) needs its linen variables "
                      "{'params': ..., ...}; pass variables=module.init(key, x)")
  names = [p.name for p in _call_args(type(module).__call__)]
  if train_kwarg is None:
    train_kwarg = next((n for n in _TRAIN_ARGS + _NEGATED_TRAIN_ARGS if n in names), None)
  elif train_kwarg not in names and not any(p.kind == p.VAR_KEYWORD
                                            for p in _call_args(type(module).__call__)):
    raise ConfigError(f"train_kwarg={train_kwarg!r} is not an argument of "
                      f"{type(module).__name__}.__call__ ({', '.join(names[1:])})")
  call_kwargs = tuple(n for n in ("mask", "features") if n in names)
  model = Model(kind="linen", impl=module, name=f"linen {type(module).__name__}",
                supports_train=train_kwarg is not None, supports_mask=True,
                supports_features="features" in call_kwargs or features_fn is not None,
                supports_bn_stats="batch_stats" in variables, features_fn=features_fn,
                call_kwargs=call_kwargs, train_kwarg=train_kwarg,
                train_negated=train_kwarg in _NEGATED_TRAIN_ARGS)
  return model, variables


def _as_nnx(module: nnx.Module, variables, features_fn):
  if variables is not None:
    raise ConfigError("an NNX module holds its own state; call as_model(module) without variables")
  graphdef, params, rest = nnx.split(module, nnx.Param, ...)
  # New Variable objects around the same arrays: the States of `nnx.split` alias the module's
  # Variables, so later eager use of the module would silently change these variables.
  params, rest = jax.tree.map(lambda a: a, (params, rest))
  has_bn = any(isinstance(m, nnx.BatchNorm) for _, m in nnx.iter_modules(module))
  model = Model(kind="nnx", impl=graphdef, name=f"NNX {type(module).__name__}", supports_train=True,
                supports_mask=True, supports_features=features_fn is not None,
                supports_bn_stats=has_bn, features_fn=features_fn)
  return model, ({"params": params, "batch_stats": rest} if len(rest) else {"params": params})


def _as_apply_fn(fn: Callable[..., Any], params, state, features_fn):
  if params is None:
    raise ConfigError("as_model(apply_fn) needs the params pytree; pass as_model(apply_fn, params)")
  name = getattr(fn, "__name__", type(fn).__name__)
  if state is None:
    required = [p for p in _call_args(fn) if p.default is p.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(required) == 4:
      raise ConfigError(f"{name} takes (params, state, x, train); pass its state with "
                        "as_model(apply_fn, params, state=state)")
    return (Model(kind="apply_fn", impl=fn, name=f"apply_fn {name}(params, x)", supports_mask=True,
                  supports_features=features_fn is not None, features_fn=features_fn),
            {"params": params})
  model = Model(kind="stateful_apply_fn", impl=fn, name=f"apply_fn {name}(params, state, x, train)",
                supports_train=True, supports_features=features_fn is not None,
                features_fn=features_fn)
  return model, {"params": params, "batch_stats": state}


# ----------------------------------------------------------------------------------------------------
# BatchNorm input statistics and row masks for layers the adapter does not own.

def _feature_axes(ndim: int, axis: int | Sequence[int]) -> tuple[int, ...]:
  axes = (axis,) if isinstance(axis, int) else tuple(axis)
  return tuple(sorted(a % ndim for a in axes))


def _input_moments(x: jax.Array, feature_axes: tuple[int, ...], mask: jax.Array | None):
  """Mean and biased variance of `x` over all axes but `feature_axes`, over rows kept by `mask`
  ([N] bool on axis 0): the same quantities as `layers.masked_moments` for feature axis -1."""
  red = tuple(i for i in range(x.ndim) if i not in feature_axes)
  if mask is None:
    mean = x.mean(red, keepdims=True)
    return mean.squeeze(red), jnp.square(x - mean).mean(red)
  w = _broadcast_rows(mask, x).astype(x.dtype)
  n = jnp.maximum(w.sum(red, keepdims=True), 1.0)
  mean = (x * w).sum(red, keepdims=True) / n
  return mean.squeeze(red), (jnp.square(x - mean) * w).sum(red, keepdims=True).squeeze(red) / n.squeeze(red)


def _broadcast_rows(mask: jax.Array, x: jax.Array) -> jax.Array:
  if x.ndim == 0 or x.shape[0] != mask.shape[0]:
    raise ConfigError(f"a BatchNorm input of shape {x.shape} does not lead with the batch axis of the "
                      f"row mask ({mask.shape[0]} rows); masks need [N, ...] BatchNorm inputs")
  return jnp.broadcast_to(mask.reshape((-1,) + (1,) * (x.ndim - 1)), x.shape)


def _and_mask(given: jax.Array | None, rows: jax.Array) -> jax.Array:
  return rows if given is None else jnp.logical_and(given, rows)


def _linen_bn_interceptor(records: list[BNStat] | None, mask: jax.Array | None, inject: bool):
  """`nn.intercept_methods` interceptor for flax `nn.BatchNorm` calls: records their input statistics
  (not for our `layers.BatchNorm`, which sows its own) and, with `inject`, passes each the row mask.
  Returns `(interceptor, calls)`; `calls` gets one entry per BN layer call, to detect "no BN ran"."""
  active: set[int] = set()  # a subclass calling super().__call__ is one layer, not two
  calls: list[None] = []

  def interceptor(next_fun, args, kwargs, context):
    bn = context.module
    if (context.method_name != "__call__" or not isinstance(bn, nn.BatchNorm) or id(bn) in active
        or bn.is_initializing()):
      return next_fun(*args, **kwargs)
    x = args[0] if args else kwargs["x"]
    if inject and mask is not None:
      rows = mask if isinstance(bn, OurBatchNorm) else _broadcast_rows(mask, x)
      kwargs = {**kwargs, "mask": _and_mask(kwargs.get("mask"), rows)}
    active.add(id(bn))
    try:
      y = next_fun(*args, **kwargs)
    finally:
      active.discard(id(bn))
    if records is not None and not isinstance(bn, OurBatchNorm):
      mean, var = _input_moments(x, _feature_axes(x.ndim, bn.axis), mask)
      records.append((mean, var, bn.get_variable("batch_stats", "mean"),
                      bn.get_variable("batch_stats", "var")))
    calls.append(None)
    return y

  return interceptor, calls


# `nnx.BatchNorm.__call__` is wrapped while an adapted NNX model runs. Hooks are kept on a stack and
# each acts only on its own model's layers (by object id), so nested or concurrent models and BNs
# outside any adapted model see the unwrapped call.
_NNX_BN_CALL = nnx.BatchNorm.__call__
_NNX_HOOKS: list[Callable[..., Any]] = []
_NNX_LOCK = threading.Lock()


def _wrapped_nnx_bn_call(self, x, use_running_average=None, *, mask=None):
  for hook in reversed(list(_NNX_HOOKS)):
    if id(self) in hook.layer_ids:
      return hook(self, x, use_running_average, mask)
  return _NNX_BN_CALL(self, x, use_running_average, mask=mask)


@contextlib.contextmanager
def _nnx_bn_hook(module: nnx.Module, records: list[BNStat] | None, mask: jax.Array | None
                 ) -> Iterator[list[None]]:
  calls: list[None] = []

  def hook(bn, x, use_running_average, given_mask):
    m = given_mask if mask is None else _and_mask(given_mask, _broadcast_rows(mask, x))
    y = _NNX_BN_CALL(bn, x, use_running_average, mask=m)
    if records is not None:
      mean, var = _input_moments(x, _feature_axes(x.ndim, bn.axis), mask)
      records.append((mean, var, bn.mean[...], bn.var[...]))
    calls.append(None)
    return y

  hook.layer_ids = {id(m) for _, m in nnx.iter_modules(module) if isinstance(m, nnx.BatchNorm)}
  with _NNX_LOCK:
    _NNX_HOOKS.append(hook)
    nnx.BatchNorm.__call__ = _wrapped_nnx_bn_call
  try:
    yield calls
  finally:
    with _NNX_LOCK:
      _NNX_HOOKS.remove(hook)
      if not _NNX_HOOKS:
        nnx.BatchNorm.__call__ = _NNX_BN_CALL


def _no_bn_ran(model: Model) -> ConfigError:
  return ConfigError(f"{model.name} ran no flax nn.BatchNorm/nnx.BatchNorm layer, so it has no "
                     "BatchNorm input statistics or masks; set the BN-statistics loss weight to 0 or "
                     "use flax BatchNorm layers (not inside nn.scan/nn.vmap or a custom BN)")


# ----------------------------------------------------------------------------------------------------
# One apply per kind: (model, variables, x, train, mask, features, mutable) -> (out, updates).

def _unknown(model: Model, names) -> None:
  extra = [c for c in names if c not in ("batch_stats", BN_STATS)]
  if extra:
    raise ConfigError(f"{model.name} has no mutable collection {extra[0]!r}; "
                      "ask for 'batch_stats' or 'bn_stats'")


def _apply_linen(model: Model, variables, x, train, mask, features, mutable):
  kw: dict[str, Any] = {}
  if model.train_kwarg is not None:
    kw[model.train_kwarg] = (not train) if model.train_negated else train
  if mask is not None and "mask" in model.call_kwargs:
    kw["mask"] = mask
  if features and "features" in model.call_kwargs:
    kw["features"] = True
  elif features:
    kw["method"] = model.features_fn
  if mutable:
    kw["mutable"] = list(mutable)
  want_bn = BN_STATS in mutable
  # Injected masks matter in train mode only (eval-mode BN ignores batch statistics).
  inject = train and mask is not None and "mask" not in model.call_kwargs
  if not (want_bn or inject):
    res = model.impl.apply(variables, x, **kw)  # ours: exactly the direct call, bit for bit
    return (res[0], _complete(res[1], mutable)) if mutable else (res, {})
  records: list[BNStat] = []
  interceptor, calls = _linen_bn_interceptor(records if want_bn else None, mask, inject)
  with nn.intercept_methods(interceptor):
    res = model.impl.apply(variables, x, **kw)
  out, updates = res if mutable else (res, {})
  updates = dict(updates)
  if want_bn:
    sown = bn_input_stats(updates.get(BN_STATS, {}))
    if records:  # foreign flax BNs (after any of our sowing layers)
      updates[BN_STATS] = sown + records
    elif not sown:
      raise _no_bn_ran(model)
  if inject and not calls and "batch_stats" in variables:
    raise _no_bn_ran(model)
  return out, _complete(updates, mutable)


def _complete(updates, mutable) -> dict[str, Any]:
  """Every requested collection is present (an empty dict for collections the model lacks)."""
  updates = dict(updates)
  for c in mutable:
    updates.setdefault(c, {})
  return updates


def _apply_nnx(model: Model, variables, x, train, mask, features, mutable):
  _unknown(model, mutable)
  # Fresh Variables of the current trace (tree.map rebuilds every node): the merged module may
  # update them (BN running averages) under jit/grad/vmap/scan, and the caller's stay untouched.
  params = jax.tree.map(lambda a: a, variables["params"])
  rest = jax.tree.map(lambda a: a, variables.get("batch_stats", nnx.State({})))
  module = nnx.merge(model.impl, params, rest)
  if train:
    module.train()
  else:
    module.eval()
  want_bn = BN_STATS in mutable
  records: list[BNStat] = []
  with _nnx_bn_hook(module, records if want_bn else None, mask) as calls:
    out = model.features_fn(module, x) if features else module(x)
  if (want_bn or (train and mask is not None and model.supports_bn_stats)) and not calls:
    raise _no_bn_ran(model)
  updates: dict[str, Any] = {}
  if "batch_stats" in mutable:
    new_rest = nnx.split(module, nnx.Param, ...)[2]
    # A stateless module's empty state comes back as the caller gave it ({} or an empty State), so
    # scan carries keep their type.
    updates["batch_stats"] = new_rest if len(new_rest) else variables.get("batch_stats", new_rest)
  if want_bn:
    updates[BN_STATS] = records
  return out, updates


def _apply_fn(model: Model, variables, x, train, mask, features, mutable):
  del train, mask  # no state: train mode is eval mode, and there are no batch statistics to mask
  _unknown(model, mutable)
  fn = model.features_fn if features else model.impl
  return fn(variables["params"], x), {"batch_stats": {}} if "batch_stats" in mutable else {}


def _apply_stateful_fn(model: Model, variables, x, train, mask, features, mutable):
  del mask  # `Model.apply` refuses masks for this kind (supports_mask is False)
  _unknown(model, mutable)
  fn = model.features_fn if features else model.impl
  out, new_state = fn(variables["params"], variables["batch_stats"], x, train)
  return out, {"batch_stats": new_state} if "batch_stats" in mutable else {}


_APPLY: dict[str, Callable[..., tuple[Any, dict[str, Any]]]] = {
    "linen": _apply_linen, "nnx": _apply_nnx, "apply_fn": _apply_fn,
    "stateful_apply_fn": _apply_stateful_fn}
