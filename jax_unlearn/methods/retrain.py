"""Retrain: the gold standard. A model trained from scratch on the retain data only (SPEC §1.8).

No layer is kept from the original (the SSD repository's "retrain" resets only the head; we do not,
SPEC decision 6). Same recipe, budget and selection by (retain) validation accuracy as the original.
Cached in its run directory: a second call loads it (and reports the training time it measured).
"""

import json
import os

from jax_unlearn.io import atomic_write_json
from jax_unlearn.methods import base


@base.register("retrain")
def run(ctx: base.UnlearnContext) -> base.UnlearnResult:
  from jax_unlearn import api
  variables, hist = api.fit_or_load(ctx.config, ctx.model, ctx.data.info, ctx.workdir,
                                    ctx.data.retain_train, ctx.data.retain_val, ctx.key, "retrain",
                                    ctx.log)
  info_path = os.path.join(ctx.workdir, "train_info.json")
  if hist is not None:
    info = {"best_val_acc": hist["best_val_acc"],
            "train_s": hist["history"][-1]["elapsed_s"] if hist["history"] else 0.0}
    atomic_write_json(info_path, info)
  elif os.path.exists(info_path):
    with open(info_path) as f:
      info = json.load(f)
  else:
    info = {}
  return base.UnlearnResult(variables=variables, info=info)
