"""Fine-tuning on the retain set: the SSD repository's `finetune` baseline
(`if-loops/selective-synaptic-dampening src/forget_*_strategies.py: finetune`).

`fit_one_cycle(5, model, retain_train_dl, ..., lr=0.02)`: the original model trained on D_r alone with
SGD (momentum 0.9, weight decay 5e-4, no schedule) for 5 epochs, cross-entropy, BN in train mode, no
augmentation, batch 64 (the reference script's default `-b`). Forgetting comes only from catastrophic
forgetting of the classes D_r lacks.
"""

from __future__ import annotations

import ml_collections

from jax_unlearn.methods import _repair, base


def default_config() -> ml_collections.ConfigDict:
  """`config.finetune` defaults (the SSD repository's `src/utils.py: fit_one_cycle` called with lr 0.02).

  Fields:
    optimizer: 'sgd' (reference) or 'adam'.
    lr: learning rate, constant (the reference passes no milestones, so no schedule and no warm-up).
    momentum: SGD momentum.
    weight_decay: L2 weight decay added to the gradient (PyTorch SGD), on every parameter.
    epochs: passes over the retain set.
    batch_size: minibatch size; the last partial batch is kept (masked padding), as DataLoader does.
  """
  return ml_collections.ConfigDict(dict(optimizer="sgd", lr=0.02, momentum=0.9, weight_decay=5e-4,
                                        epochs=5, batch_size=64))


def validate_config(cfg, problem: base.Problem | None = None) -> None:
  del problem
  _repair.check_positive(cfg, "finetune", ints=("epochs", "batch_size"),
                         floats=("lr", "momentum", "weight_decay"))


@base.register("finetune", default_config=default_config, validate_config=validate_config, order=30,
               data="D_r")
def run(ctx: base.UnlearnContext) -> base.UnlearnResult:
  """Fine-tunes a copy of `ctx.original` on `ctx.data.retain_train` (uses D_r only)."""
  cfg = ctx.cfg
  retain = ctx.data.retain_train
  variables, history = _repair.fit(
      ctx.model, ctx.original, _repair.tx_from_config(cfg, "finetune"), retain.images, retain.labels,
      _repair.CrossEntropy(), batch_size=int(cfg.batch_size), epochs=int(cfg.epochs),
      key=ctx.key, info=ctx.data.info, log=ctx.log, name="finetune")
  return base.UnlearnResult(variables=variables, info={
      "n_train": len(retain), "steps": sum(h["steps"] for h in history), "history": history})

