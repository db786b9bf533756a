"""The layered core: no import cycle, small modules, registries as the one source of every list, and
the method/metric contracts checked over every registered entry."""

import ast
import os
import pathlib
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest

from jax_unlearn import api, data, metrics
from jax_unlearn import config as config_lib
from jax_unlearn.errors import ConfigError
from jax_unlearn.methods import base
from jax_unlearn.report import table

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "jax_unlearn"


def _modules():
  mods = {}
  for p in PKG.rglob("*.py"):
    n = ".".join(p.relative_to(ROOT).with_suffix("").parts)
    mods[n[:-9] if n.endswith(".__init__") else n] = p
  return mods


def import_graph() -> dict[str, set[str]]:
  """Module -> the jax_unlearn modules it imports, function-local imports included (`from a.b import c`
  counts as importing a.b, and a.b.c when that is a module)."""
  mods = _modules()
  graph = {m: set() for m in mods}
  for m, p in mods.items():
    pkg = m if p.name == "__init__.py" else m.rpartition(".")[0]
    for node in ast.walk(ast.parse(p.read_text())):
      names = []
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        b = node.module or ""
        if node.level:
          parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
          b = ".".join(parts + ([b] if b else []))
        names = [b] + [f"{b}.{a.name}" for a in node.names]
      graph[m].update(t for t in names if t in mods and t != m and not t.startswith(m + "."))
  return graph


def find_cycle(graph):
  color, stack = {}, []

  def visit(v):
    color[v] = 1
    stack.append(v)
    for w in sorted(graph[v]):
      if color.get(w) == 1:
        return stack[stack.index(w):] + [w]
      if w not in color:
        c = visit(w)
        if c:
          return c
    color[v] = 2
    stack.pop()
    return None

  for v in sorted(graph):
    if v not in color:
      c = visit(v)
      if c:
        return c
  return None


def test_no_import_cycle_counting_function_local_imports():
  graph = import_graph()
  assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
  # The check itself can fail: a planted back edge is found.
  planted = {k: set(v) for k, v in graph.items()}
  planted["jax_unlearn.train.loop"].add("jax_unlearn.api")
  assert find_cycle(planted) is not None


def test_layers_import_only_downwards():
  """data/models/optim never import train or above; train never imports methods/metrics or above;
  methods/metrics never import api, config, experiment, sweep, report."""
  graph = import_graph()
  above = {
      "jax_unlearn.data": ("jax_unlearn.train", "jax_unlearn.methods", "jax_unlearn.metrics",
                           "jax_unlearn.api", "jax_unlearn.config", "jax_unlearn.report"),
      "jax_unlearn.models": ("jax_unlearn.train", "jax_unlearn.methods", "jax_unlearn.metrics",
                             "jax_unlearn.api", "jax_unlearn.config"),
      "jax_unlearn.optim": ("jax_unlearn.train", "jax_unlearn.methods", "jax_unlearn.metrics"),
      "jax_unlearn.train": ("jax_unlearn.methods", "jax_unlearn.metrics", "jax_unlearn.api",
                            "jax_unlearn.config", "jax_unlearn.report", "jax_unlearn.experiment"),
      "jax_unlearn.methods": ("jax_unlearn.api", "jax_unlearn.config", "jax_unlearn.experiment",
                              "jax_unlearn.sweep", "jax_unlearn.report", "jax_unlearn.metrics"),
      "jax_unlearn.metrics": ("jax_unlearn.api", "jax_unlearn.config", "jax_unlearn.experiment",
                              "jax_unlearn.sweep", "jax_unlearn.report", "jax_unlearn.methods"),
  }
  def under(name, prefixes):
    return any(name == p or name.startswith(p + ".") for p in prefixes)
  bad = [(m, t) for m, ts in graph.items() for layer, banned in above.items() if under(m, (layer,))
         for t in ts if under(t, banned)]
  assert not bad, bad


def test_no_module_over_600_lines():
  sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in PKG.rglob("*.py")}
  long = {p: n for p, n in sizes.items() if n > 600}
  assert not long, long


def test_every_list_comes_from_the_registries():
  c = config_lib.base_config()
  specs = base.specs()
  assert c.methods == tuple(s.name for s in specs if s.in_default_table)
  assert {"pd_is"} <= set(base.names()) - set(c.methods)  # registered, on request only
  for s in specs:
    if s.config_key:
      assert s.config_key in c, s.name
  assert tuple(c.metrics.names) == metrics.default_names()
  assert table.metric_keys() == metrics.result_keys()
  assert [k for k, _, _ in table.table_columns()][:-1] == list(metrics.result_keys())
  # The data-free strategies are registered in one place, sharing config.ispf.
  from jax_unlearn.methods import distill
  assert {s.name for s in specs if s.config_key == "ispf"} == set(distill.STRATEGIES)
  alias_files = [n for n in distill.STRATEGIES if (PKG / "methods" / f"{n}.py").exists()]
  assert not alias_files


def test_extension_by_registration_reaches_the_table():
  """A method registered outside the package (here: 'head masking', the forget logits' bias set very
  low) is run, validated and tabulated like a built-in one, with no other edit."""
  @base.register("head_mask_test", order=999, in_default_table=False, data="none")
  def run(ctx):
    params = jax.tree.map(np.asarray, ctx.original["params"])
    head = max((k for k in params if k.startswith("Dense")), default=None)
    bias = np.array(params[head]["bias"])
    bias[list(ctx.forget_classes)] = -1e4
    params[head] = {**params[head], "bias": bias}
    return base.UnlearnResult(variables={**ctx.original, "params": params})

  try:
    assert "head_mask_test" in base.names()
    config = _tiny_config()
    config_lib.validate(config, None, ("head_mask_test",))
    with pytest.raises(ConfigError, match="unknown method 'head_mask_tst'.*did you mean"):
      config_lib.validate(config, None, ("head_mask_tst",))
  finally:
    base.unregister("head_mask_test")


def _tiny_config():
  from configs import digits
  c = digits.get_config()
  c.model.width = 0.125
  c.train.epochs = 1
  c.ispf.update(epochs=1, warmup=0, loops_per_epoch=1, kd_steps=2, batch_size=32, ngf=16, nz=32,
                plots=False)
  c.distruction.update(prep_epochs=1, forget_steps=2, lam_sweep=(0.1,), select_every=0, mc_iters=2,
                       checkpoint_every=0)
  c.finetune.epochs = 1
  c.bad_teacher.epochs = 1
  c.amnesiac.epochs = 1
  c.unsir.update(noise_steps=2, num_noise_batches=2, samples_per_class=20)
  c.metrics.update(shadow_epochs=1, num_shadow=2, ain_max_epochs=1, mia_max_samples=200)
  return c


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  config = _tiny_config()
  workdir = str(tmp_path_factory.mktemp("contract"))
  setup, original, _ = api.train_original(config, workdir, log=lambda s: None)
  return config, workdir, setup, original


@pytest.mark.parametrize("name", [s.name for s in base.specs()])
def test_method_contract(tiny, name):
  """Every registered method validates its defaults, runs on digits with tiny budgets and returns
  finite variables of the original's tree structure."""
  config, workdir, setup, original = tiny
  s = base.spec(name)
  if s.default_config is not None:
    assert isinstance(s.default_config(), ml_collections.ConfigDict)
  config_lib.validate(config, None, (name,))
  result, _ = api.run_method(setup, workdir, name, original, log=lambda m: None)
  assert jax.tree.structure(result.variables) == jax.tree.structure(original), name
  for a, b in zip(jax.tree.leaves(result.variables), jax.tree.leaves(original)):
    assert np.shape(a) == np.shape(b)
    assert np.all(np.isfinite(np.asarray(a))), name
  import json
  json.dumps(result.info, default=float)  # JSON-able (NaN allowed)


def test_metric_contract(tiny):
  """Every registered metric computes exactly its declared keys, and the columns are its keys."""
  config, workdir, setup, original = tiny
  retrain, _ = api.run_method(setup, workdir, "retrain", original, log=lambda m: None)
  for s in metrics.specs():
    assert set(c[0] for c in s.columns) <= set(s.keys)
    if s.population:  # scored from a method's audit by launch.experiment (tests/test_audit.py)
      assert s.evaluator is None and not s.in_default
      continue
    cfg = config.copy_and_resolve_references()
    cfg.metrics.names = (s.name,)
    suite = metrics.MetricSuite(setup.model, setup.data, original_vars=original,
                                retrain_vars=retrain.variables, config=cfg, log=lambda m: None)
    row = suite(original)
    computed = {k for k in s.keys if k in row and row[k] is not None}
    assert computed == set(s.keys), (s.name, computed)
    for k, _, _ in s.columns:
      assert np.isfinite(float(row[k])), (s.name, k, row[k])
    others = set(metrics.result_keys()) - set(s.keys)
    assert all(np.isnan(row[k]) for k in others), s.name


def test_invalid_method_option_fails_before_any_training(tmp_path):
  t0 = time.time()
  r = subprocess.run([sys.executable, "-m", "launch.experiment", "--config=configs/digits.py",
                      "--config.distruction.lam_sweep=-1", f"--workdir={tmp_path}/w"],
                     capture_output=True, text=True, cwd=ROOT, timeout=240)
  wall = time.time() - t0
  assert r.returncode == 2, r.stderr[-2000:]
  err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
  assert len(err) == 1 and "lam_sweep" in err[0], r.stderr
  assert "Traceback" not in r.stderr and "epoch" not in r.stdout
  assert not os.path.exists(tmp_path / "w" / "original")
  assert wall < 60, wall


def test_datasets_and_methods_listed_in_help():
  r = subprocess.run([sys.executable, "-m", "launch.unlearn", "--help"], capture_output=True, text=True,
                     cwd=ROOT, timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
  for name in base.names():
    assert f"  {name} " in r.stdout
  for name in data.DATASETS:
    assert name in r.stdout
  assert "--config.ispf.tau=" in r.stdout and "--config.metrics.num_shadow=" in r.stdout
