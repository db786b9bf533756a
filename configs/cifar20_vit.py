"""Paper config: CIFAR-20 (CIFAR-100 super-classes) with a ViT (SSD / LFSSD / DiStruction settings).

`get_config("class")` (default): forget super-class vehicle2 (19), α=5 (the SSD code's ViT full-class value).
`get_config("subclass")`: forget fine class rocket (69) inside its super-class, α=25 (SSD) / 10 (LFSSD).
Deviation: the papers fine-tune a pretrained ViT-B/16 at 224 px; no weights can be downloaded here,
so this trains a ViT (patch 4, dim 192, depth 6) from scratch at 32 px (see BUILD_NOTES.md).
"""

from configs.paper import paper_config


def get_config(arg: str = "class"):
  sub = arg == "subclass"
  c = paper_config("cifar20", "vit", forget_classes=(69,) if sub else (19,))
  c.forget.mode = "subclass" if sub else "class"
  c.model.update(name="vit", patch=4, dim=192, depth=6, heads=3, mlp_dim=384)
  c.batch_size = 128
  c.train.update(lr=0.01, epochs=100, milestones=(60, 80), gamma=0.1, weight_decay=5e-4)
  c.ssd.update(alpha=25.0 if sub else 5.0, lam=1.0)
  c.lfssd.update(alpha=10.0 if sub else 5.0, lam=1.0)
  c.bad_teacher.batch_size = 128  # the SSD repository's ViT runs
  c.unsir.noise_steps = 250 if sub else 25  # its sub-class UNSIR trains the noise 250 steps, class 25
  return c
