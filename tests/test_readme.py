"""The README's use-from-JAX example runs as written."""
import os
import re

import jax
import jax.numpy as jnp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_python_example_runs():
  with open(os.path.join(ROOT, "README.md")) as f:
    text = f.read()
  code = re.findall(r"```python\n(.*?)```", text.split("## Use from your own JAX code")[1], re.S)[0]
  ns: dict = {}
  exec(code, ns)  # noqa: S102
  assert jax.tree.structure(ns["params"]) == jax.tree.structure(ns["variables"]["params"])
  assert ns["z"].shape == (64, 10)
  assert ns["diag"]["epoch"] == 2 and ns["diag"]["student_steps"] == 4
  assert jax.tree.structure(ns["student"]) == jax.tree.structure(ns["variables"])
  assert jax.tree.structure(ns["mu"]) == jax.tree.structure(ns["params"])
  assert float(ns["kl"]) > 0 and bool(jnp.isfinite(ns["kl"]))  # one BGD step moved q away from p
