"""Retrain: the gold standard. A model trained from scratch on the retain data only.

No layer is kept from the original (the SSD repository's "retrain" resets only the head; we do not:
our choice, BUILD_NOTES.md "Decisions"). Same recipe, budget and selection by (retain) validation
accuracy as the original (`ctx.train_cfg`). Cached in its run directory under the fingerprint of
everything it depends on (`train.supervised.fit_or_load`): a second call loads it and reports the
training time it measured.
"""

from jax_unlearn.methods import base
from jax_unlearn.train import supervised


@base.register("retrain", order=20, data="D_r (train and validation)")
def run(ctx: base.UnlearnContext) -> base.UnlearnResult:
  variables, info = supervised.fit_or_load(
      ctx.model, ctx.model_cfg, ctx.data.retain_train, ctx.data.retain_val, ctx.data.info,
      ctx.train_cfg, ctx.key, ctx.workdir, "model", name="retrain", seed=ctx.seed, log=ctx.log)
  return base.UnlearnResult(variables=variables, info={
      "best_val_acc": info.get("best_val_acc"), "train_s": info.get("train_s", 0.0),
      "cached": info["cached"]})
