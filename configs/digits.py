"""Embedded default: scikit-learn digits (8x8x1, 10 classes), a small AllCNN, CPU-sized budgets.

python -m launch.experiment --config=configs/digits.py --workdir=W
Variants: configs/digits.py:subclass is not available (digits has no super-classes);
configs/digits.py:random forgets 100 random training samples.
"""

from jax_unlearn.config import base_config


def get_config(arg: str = "class"):
  c = base_config()
  c.dataset.name = "digits"
  c.model.name = "allcnn"
  c.model.width = 0.25            # 24/48 channels instead of 96/192
  c.batch_size = 64
  c.train.update(epochs=30, lr=0.05, milestones=(20,), gamma=0.1, weight_decay=1e-4)
  c.forget.mode = "random" if arg == "random" else "class"
  c.forget.classes = (3,)
  c.forget.num_samples = 100
  _digits_methods(c)
  return c


def _digits_methods(c):
  # The repair recipes' epoch budgets were set for CIFAR-sized data; digits has ~1/40 of the samples,
  # so these give about the number of optimiser steps the recipes take on CIFAR-10 (BUILD_NOTES).
  c.bad_teacher.epochs = 36
  c.amnesiac.epochs = 30
  c.finetune.epochs = 30
  # AIN: at batch 256 the ~220-image relearn set is one step per epoch and every model hits the
  # cap; batch 32 x 40 epochs resolves relearn times (BUILD_NOTES). Shadows: XLA:CPU runs a vmapped
  # conv as a slow grouped conv, so on CPU the S shadows train one after another (same results up
  # to float rounding; the vmapped path is the default for accelerators and is tested).
  c.metrics.ain_batch_size = 32
  c.metrics.ain_max_epochs = 40
  c.metrics.shadow_vmap = False
  # alpha chosen on the validation split (never test) so that classes 1, 3 and 8 all pass; the paper's
  # alpha=10 is a no-op here (I_Df/I_D is capped near 1/p with p the forget share, ~10 %; BUILD_NOTES).
  c.lfssd.alpha = 6.0
  c.ssd.alpha = 8.5
  # The paper's generator (ngf 64) and 30 epochs (ngf 32 / 20 epochs was too small); the reference's
  # cosine T_max 200 is kept. ISPF vs GKT retain accuracy at this budget: BUILD_NOTES, issue 3.
  c.ispf.update(epochs=30, warmup=2, loops_per_epoch=5, kd_steps=10, batch_size=128, lr=0.05,
                tau=0.01, ngf=64)
