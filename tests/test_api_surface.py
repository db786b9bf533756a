"""The public surface: no SPEC citations, callable metric modules, documented and type-hinted names."""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import types

import jax
import ml_collections
import numpy as np
import optax
import pytest

import jax_unlearn
from jax_unlearn import metrics
from jax_unlearn.data import DataInfo, Split, UnlearnData
from jax_unlearn.metrics import _callable
from jax_unlearn.models import init_variables
from tests.test_metrics import K, TinyNet  # the shared Dense-BN-ReLU-Dense

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- citations

def test_no_file_cites_the_spec_the_user_does_not_have():
  hits = []
  for top in ("jax_unlearn", "launch", "configs"):
    for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
      for name in files:
        if not name.endswith((".py", ".md", ".txt", ".toml", ".json")):
          continue
        path = os.path.join(dirpath, name)
        with open(path, encoding="utf-8") as f:
          for i, line in enumerate(f, 1):
            if "SPEC §" in line or "SPEC.md" in line:
              hits.append(f"{os.path.relpath(path, ROOT)}:{i}: {line.strip()}")
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    hits += [f"README.md:{i}" for i, line in enumerate(f, 1) if "SPEC §" in line or "SPEC.md" in line]
  assert not hits, "\n".join(hits)


# ----------------------------------------------------------------------------- callable metric modules

def test_every_metric_module_is_its_namesake_function():
  assert set(metrics.MODULES) <= set(metrics.__all__)
  for name in metrics.MODULES:
    module = importlib.import_module(f"jax_unlearn.metrics.{name}")
    fn = module.__dict__[name]
    assert inspect.isfunction(fn) and fn.__module__ == module.__name__, name
    assert isinstance(module, types.ModuleType) and isinstance(module, _callable.CallableModule), name
    assert getattr(metrics, name) is module and callable(module), name
    assert module.__wrapped__ is fn, name
    assert inspect.signature(module) == inspect.signature(fn), name
    assert f"calls its function `{name}(...)`" in module.__doc__, name
    assert "(the module) calls this function" in " ".join(fn.__doc__.split()), name
  # The three import forms give the same object; the module's other functions stay attributes.
  import jax_unlearn.metrics.kl
  from jax_unlearn.metrics import mia_i
  assert mia_i is metrics.mia_i and jax_unlearn.metrics.kl is metrics.kl
  assert callable(metrics.mia_i.mia_i_from_logits) and metrics.kl.kl_to_retrain is metrics.kl_to_retrain


def test_make_callable_refuses_a_module_without_its_function():
  import sys
  mod = types.ModuleType("jax_unlearn_test_fake.nothing")
  sys.modules[mod.__name__] = mod
  try:
    with pytest.raises(TypeError, match="no function 'nothing'"):
      _callable.make_callable(mod.__name__)
    mod.nothing = lambda x: 2 * x
    _callable.make_callable(mod.__name__)
    assert mod(21) == 42 and inspect.signature(mod) == inspect.signature(mod.nothing)
  finally:
    del sys.modules[mod.__name__]


def _tiny_data() -> UnlearnData:
  rng = np.random.default_rng(0)
  templates = rng.uniform(0, 1, (K, 8, 8, 1))

  def split(n):
    y = rng.integers(0, K, n).astype(np.int32)
    x = np.clip(templates[y] + 0.15 * rng.standard_normal((n, 8, 8, 1)), 0, 1).astype(np.float32)
    return Split(images=x, labels=y, fine_labels=None)

  train, val, test = split(120), split(48), split(64)
  info = DataInfo(name="toy", num_classes=K, image_shape=(8, 8, 1), mean=(0.5,), std=(0.25,),
                  augment=False)
  return UnlearnData(info=info, train=train, val=val, test=test, forget_train_mask=train.labels == 0,
                     forget_val_mask=val.labels == 0, forget_test_mask=test.labels == 0)


def _fit(model, variables, split, steps: int = 150):
  """Full-batch Adam on `split` (BN in train mode): an original model that knows every class."""
  tx = optax.adam(1e-2)
  x = (split.images - 0.5) / 0.25

  @jax.jit
  def step(v, opt):
    def loss(p):
      logits, upd = model.apply({**v, "params": p}, x, train=True, mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, split.labels).mean(), upd
    (_, upd), g = jax.value_and_grad(loss, has_aux=True)(v["params"])
    u, opt = tx.update(g, opt, v["params"])
    return {**v, **upd, "params": optax.apply_updates(v["params"], u)}, opt

  opt = tx.init(variables["params"])
  for _ in range(steps):
    variables, opt = step(variables, opt)
  return variables


def test_calling_a_metric_module_equals_its_function_and_the_suite():
  data, model = _tiny_data(), TinyNet()
  v, original, retrain = (init_variables(model, jax.random.PRNGKey(s), (1, 8, 8, 1)) for s in (0, 1, 2))
  original = _fit(model, original, data.train)
  cfg = metrics.default_config()
  cfg.update(names=("acc", "mia_i", "mia_entropy", "kl", "ain"), ain_batch_size=32, ain_max_epochs=2)
  suite = metrics.MetricSuite(model, data, original_vars=original, retrain_vars=retrain,
                              config=ml_collections.ConfigDict({"seed": 3, "metrics": cfg}),
                              log=lambda s: None)
  row, seed = suite(v), suite.seed

  acc = metrics.accuracy(model, v, data)
  assert acc == metrics.accuracy.accuracy(model, v, data) == metrics.forget_retain_accuracy(model, v, data)
  assert acc == {"acc_forget": row["acc_forget"], "acc_retain": row["acc_retain"]}
  kl = metrics.kl(model, v, data, retrain_vars=retrain)
  assert kl == metrics.kl.kl(model, v, data, retrain_vars=retrain) == metrics.kl_to_retrain(
      model, v, retrain, data.forget_test.images, data.info)
  assert kl == pytest.approx(row["kl_to_retrain"], rel=1e-5) and kl > 1e-4
  assert metrics.kl(model, retrain, data, retrain_vars=retrain) == pytest.approx(0.0, abs=1e-6)
  assert metrics.mia_i(model, v, data, seed=seed) == metrics.mia_i.mia_i(model, v, data, seed=seed) == \
      row["mia_i"]
  assert metrics.mia_entropy(model, v, data, seed=seed) == row["mia_entropy"]
  ain = metrics.ain(model, v, data, original_vars=original, retrain_vars=retrain, batch_size=32,
                    max_epochs=2, seed=seed)
  assert ain == metrics.ain.ain(model, v, data, original_vars=original, retrain_vars=retrain,
                                batch_size=32, max_epochs=2, seed=seed) == row["ain"]
  # The original relearns in 0 steps (it is at its own target), Retrain in > 0: AIN = 0.
  assert metrics.ain(model, original, data, original_vars=original, retrain_vars=retrain, batch_size=32,
                     max_epochs=2, seed=seed) == 0.0 < row["relearn_steps_retrain"]

  shadow = metrics.train_shadow_models(model, data, jax.random.PRNGKey(4), num_shadow=2, epochs=1,
                                       batch_size=16, seed=seed)
  attack = metrics.fit_attack(model, shadow, data, seed=seed, heldout=False)
  f1 = metrics.mia_ii(model, v, data, attack=attack)
  assert f1 == metrics.mia_ii_f1(attack, model, v, data) and 0.0 <= f1 <= 100.0


def test_calling_the_audit_modules_equals_their_functions():
  rng = np.random.default_rng(0)
  keep = metrics.lira.membership_masks(16, 50, rng)
  scores = rng.standard_normal((16, 50)) + 3.0 * keep     # a planted membership signal
  got = metrics.lira(scores, keep)
  ref = metrics.lira.roc_metrics(*metrics.lira.leave_one_out_lira(scores, keep))
  assert got["auc"] == ref["auc"] > 0.9 and np.array_equal(got["tpr"], ref["tpr"])
  assert abs(metrics.lira(rng.standard_normal((16, 50)), keep)["auc"] - 0.5) < 0.1  # noise: chance
  u, r = rng.uniform(0, 1, (20, 6)), rng.uniform(0, 1, (20, 6))
  assert metrics.forget_quality(u, r) == metrics.forget_quality.forget_quality(u, r)


# ----------------------------------------------------------------------------- documented, hinted names

def _public_modules() -> list[types.ModuleType]:
  """jax_unlearn and every public module under it (bench, which needs torch, excluded)."""
  mods = [jax_unlearn]
  for info in pkgutil.walk_packages(jax_unlearn.__path__, "jax_unlearn."):
    parts = info.name.split(".")
    if any(p.startswith("_") for p in parts) or parts[1] == "bench":
      continue
    mods.append(importlib.import_module(info.name))
  return mods


# The packages that re-export their public names (train and report are imported by submodule).
PACKAGES = ("jax_unlearn", "jax_unlearn.api", "jax_unlearn.data", "jax_unlearn.methods",
            "jax_unlearn.metrics", "jax_unlearn.models", "jax_unlearn.optim")
# Every library layer: its public functions are fully hinted (bench, which needs torch, aside).
HINTED = ("jax_unlearn.api", "jax_unlearn.methods", "jax_unlearn.metrics", "jax_unlearn.optim",
          "jax_unlearn.models", "jax_unlearn.data", "jax_unlearn.train", "jax_unlearn.report")


def _function(obj):
  """The Python function behind `obj` (jit/vmap/functools wrappers unwrapped), or None."""
  if isinstance(obj, (type, types.ModuleType)) or not callable(obj):
    return None
  fn = inspect.unwrap(obj)
  fn = fn.__func__ if inspect.ismethod(fn) else fn   # registry methods exported as functions
  return fn if inspect.isfunction(fn) else None


def test_every_public_name_exists_and_has_a_docstring():
  missing, undocumented = [], []
  for mod in _public_modules():
    if mod.__name__ in PACKAGES:
      assert hasattr(mod, "__all__"), f"{mod.__name__} has no __all__"
    assert (mod.__doc__ or "").strip(), f"module {mod.__name__} has no docstring"
    for name in getattr(mod, "__all__", ()):
      if not hasattr(mod, name):
        missing.append(f"{mod.__name__}.{name}")
        continue
      obj = getattr(mod, name)
      if isinstance(obj, (type, types.ModuleType)) or _function(obj) is not None:
        doc = obj.__doc__ if isinstance(obj, (type, types.ModuleType)) else _function(obj).__doc__
        if not (doc or "").strip():
          undocumented.append(f"{mod.__name__}.{name}")
  assert not missing, missing
  assert not undocumented, undocumented


def _missing_hints(fn) -> list[str]:
  sig = inspect.signature(fn)
  out = [p.name for p in sig.parameters.values()
         if p.annotation is inspect.Parameter.empty and p.name not in ("self", "cls")]
  if sig.return_annotation is inspect.Signature.empty:
    out.append("return")
  return out


def test_public_functions_have_full_type_hints():
  seen, bad = set(), []
  for mod in _public_modules():
    if not any(mod.__name__ == m or mod.__name__.startswith(m + ".") for m in HINTED):
      continue
    for name in getattr(mod, "__all__", ()):
      fn = _function(getattr(mod, name))
      if fn is None or id(fn) in seen:
        continue
      seen.add(id(fn))
      if missing := _missing_hints(fn):
        bad.append(f"{mod.__name__}.{name}: {', '.join(missing)}")
  assert len(seen) > 150  # the scope really covers the documented modules (201 functions)
  assert not bad, "\n".join(bad)
