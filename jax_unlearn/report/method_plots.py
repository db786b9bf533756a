"""Plots and side files of a method run, drawn from its `UnlearnResult.artifacts` (methods compute;
the report layer writes). `write(workdir, result)` handles every artifact a registered method returns:

* 'diagnostics' (data-free methods): `diagnostics.jsonl` (one record per epoch) and the Figure-2-style
  `distill_curves.png` (`report.distill_plots`);
* 'samples': `synthetic_samples.png`, a grid of generator samples;
* 'kl_curve' (DiStruction): `distruction_kl.json` and `distruction_kl.png`, KL(q‖p) per forgetting
  iteration and λ, the DiStruction paper's Figure 1.

Returns {artifact name: written path(s)}, which the caller may record in metrics.json.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from numpy.typing import ArrayLike

from jax_unlearn.io import atomic_write_json, atomic_write_text

if TYPE_CHECKING:  # annotations only: the report layer does not import the methods at run time
  from jax_unlearn.methods.base import UnlearnResult

__all__ = ["write", "write_kl_curve"]


def write_kl_curve(workdir: str, lams: Sequence[float], kl_history: ArrayLike, name: str = "distruction_kl",
                   chosen: tuple[int, int] | None = None) -> tuple[str, str]:
  """KL(q‖p) vs forgetting iteration, one line per λ (the paper's Figure 1): PNG + JSON in workdir.

  `chosen` = (λ index, iteration) of the returned model marks it on the curve (and in the JSON)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  os.makedirs(workdir, exist_ok=True)
  kl = np.asarray(kl_history, np.float64)
  lams = [float(x) for x in lams]
  js = os.path.join(workdir, f"{name}.json")
  out = {"iteration": list(range(kl.shape[0])), "lam": lams,
         "kl": {f"{lam:g}": kl[:, i].tolist() for i, lam in enumerate(lams)}}
  if chosen is not None:
    out["chosen"] = {"lam": lams[chosen[0]], "iteration": int(chosen[1])}
  atomic_write_json(js, out)
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for i, lam in enumerate(lams):
    ax.plot(np.arange(kl.shape[0]), kl[:, i], label=f"λ = {lam:g}")
  if chosen is not None:
    i, t = chosen
    ax.plot([t], [kl[t, i]], "k*", markersize=10, label=f"returned (λ = {lams[i]:g}, it. {t})")
  ax.set_xlabel("forgetting iteration")
  ax.set_ylabel("KL(q ‖ p)")
  ax.set_title("DiStruction: KL penalty during forgetting")
  ax.legend(fontsize=8)
  fig.tight_layout()
  png = os.path.join(workdir, f"{name}.png")
  tmp = png + ".tmp.png"
  fig.savefig(tmp, dpi=120)
  plt.close(fig)
  os.replace(tmp, png)
  return png, js


def write(workdir: str, result: UnlearnResult, name: str = "") -> dict[str, Any]:
  """Writes every known artifact of `result` (an `UnlearnResult`) into `workdir`; see the module
  docstring. `name` is the method (plot titles)."""
  art = getattr(result, "artifacts", None) or {}
  out = {}
  records = art.get("diagnostics")
  if records is not None:
    path = os.path.join(workdir, "diagnostics.jsonl")
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
    out["diagnostics"] = path
    if records:
      from jax_unlearn.report import distill_plots  # matplotlib only when plotting
      out["distill_curves"] = distill_plots.plot_diagnostics(
          {name or "run": records}, os.path.join(workdir, "distill_curves.png"),
          forget_classes=art.get("forget_classes", ()))
  if art.get("samples") is not None:
    from jax_unlearn.report import distill_plots
    out["samples"] = distill_plots.save_sample_grid(
        art["samples"], os.path.join(workdir, "synthetic_samples.png"),
        title=f"{name} generator samples (eval mode)" if name else "generator samples (eval mode)")
  if art.get("kl_curve") is not None:
    kc = art["kl_curve"]
    png, js = write_kl_curve(workdir, kc["lams"], kc["kl"], chosen=kc.get("chosen"))
    out.update(kl_curve_png=png, kl_curve_json=js)
  return out
