"""The README's use-from-JAX examples run as written."""
import math
import os
import re

import jax
import jax.numpy as jnp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OWN_MODELS = "### Your own model, end to end"
BUDGETS = "EPOCHS, ISPF_EPOCHS, PREP_EPOCHS, FORGET = 30, 10, 2, 3"


def _readme() -> str:
  with open(os.path.join(ROOT, "README.md")) as f:
    return f.read()


def test_readme_python_example_runs():
  code = re.findall(r"```python\n(.*?)```", _readme().split("## Use from your own JAX code")[1], re.S)[0]
  ns: dict = {}
  exec(code, ns)  # noqa: S102
  assert jax.tree.structure(ns["params"]) == jax.tree.structure(ns["variables"]["params"])
  assert ns["z"].shape == (64, 10)
  assert ns["diag"]["epoch"] == 2 and ns["diag"]["student_steps"] == 4
  assert jax.tree.structure(ns["student"]) == jax.tree.structure(ns["variables"])
  assert jax.tree.structure(ns["mu"]) == jax.tree.structure(ns["params"])
  assert float(ns["kl"]) > 0 and bool(jnp.isfinite(ns["kl"]))  # one BGD step moved q away from p


def _own_models_example() -> str:
  """The plain-apply MLP / NNX CNN example of README.md."""
  text = _readme()
  assert OWN_MODELS in text, f"no {OWN_MODELS!r} section in README.md"
  return re.findall(r"```python\n(.*?)```", text.split(OWN_MODELS)[1], re.S)[0]


def _run_own_models(budgets: str | None = None, cnn: bool = True) -> dict:
  code = _own_models_example()
  assert BUDGETS in code, "the example's budget line changed: update tests/test_readme.py"
  if budgets is not None:
    code = code.replace(BUDGETS, budgets)
  if not cnn:  # the MLP alone: what follows the CNN's as_model line is the CNN's run and the print
    code = code.split("model, variables = models.as_model(CNN(")[0]
  ns: dict = {"__name__": "readme_example"}
  exec(code.replace('print(mlp_results, cnn_results, sep="\\n")', ""), ns)  # noqa: S102
  return ns


METHODS = ("ssd", "lfssd", "ispf", "distruction")


def _check_structure(ns, cnn: bool = True):
  runs = [(ns["mlp_results"], ns["mlp_importance"], ns["mlp_params"])]
  if cnn:
    runs.append((ns["cnn_results"], ns["cnn_importance"], None))
  for res, imp, params in runs:
    assert set(res) == {"original", *METHODS, "kl_to_original_forget", "mia_entropy"}
    assert all(math.isfinite(res[m][k]) for m in ("original", *METHODS) for k in ("forget", "retain"))
    assert math.isfinite(res["kl_to_original_forget"]) and 0 <= res["mia_entropy"] <= 100
    assert all(leaf.shape[0] == 16 for leaf in jax.tree.leaves(imp))  # one importance per batch
    if params is not None:
      assert jax.tree.structure(imp) == jax.tree.structure(params)


def test_own_models_example_runs_for_the_mlp():
  """The default suite's variant: every call of the example on the MLP, 1-epoch budgets and no
  distillation epoch (compiling the ISPF epoch and the NNX CNN's programs takes minutes on CPU)."""
  ns = _run_own_models("EPOCHS, ISPF_EPOCHS, PREP_EPOCHS, FORGET = 1, 0, 1, 3", cnn=False)
  _check_structure(ns, cnn=False)


@pytest.mark.slow
def test_own_models_example_runs_with_tiny_budgets():
  """Every call of the example, on both models, with 1-epoch budgets (~6 min on the shared CPU)."""
  ns = _run_own_models("EPOCHS, ISPF_EPOCHS, PREP_EPOCHS, FORGET = 1, 1, 1, 3")
  _check_structure(ns)


@pytest.mark.slow
def test_own_models_example_forgets_the_class():
  """As written: both models forget class 3 with every method (test accuracy <= 10 %)."""
  ns = _run_own_models()
  _check_structure(ns)
  for name in ("mlp_results", "cnn_results"):
    res = ns[name]
    print(name, res)
    assert res["original"]["forget"] > 80 and res["original"]["retain"] > 90
    for m in METHODS:
      assert res[m]["forget"] <= 10.0, (name, m, res[m])
    for m in ("ssd", "lfssd", "distruction"):  # the dampened / posterior models keep the rest
      assert res[m]["retain"] > 80.0, (name, m, res[m])
