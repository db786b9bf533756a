"""Retrain: the gold standard. A model trained from scratch on the retain data only (SPEC §1.8).

No layer is kept from the original (the SSD repository's "retrain" resets only the head; we do not,
SPEC decision 6). Same recipe, budget and selection by (retain) validation accuracy as the original.
Cached in its run directory: a second call loads it.
"""

from jax_unlearn.methods import base


@base.register("retrain")
def run(ctx: base.UnlearnContext) -> base.UnlearnResult:
  from jax_unlearn import api
  variables, hist = api.fit_or_load(ctx.config, ctx.model, ctx.data.info, ctx.workdir,
                                    ctx.data.retain_train, ctx.data.retain_val, ctx.key, "retrain",
                                    ctx.log)
  info = {} if hist is None else {"best_val_acc": hist["best_val_acc"]}
  if hist is not None:
    info["train_s"] = hist["history"][-1]["elapsed_s"] if hist["history"] else 0.0
  return base.UnlearnResult(variables=variables, info=info)

