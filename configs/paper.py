"""Shared paper-scale settings (ISPF paper App. C; the SSD code's α), used by configs/<data>_<model>.py."""

from jax_unlearn import xla_flags
from jax_unlearn.config import base_config

# (lr, epochs, milestones) of the original/retrain models, ISPF paper App. C.
TRAIN = {
    ("svhn_cropped", "allcnn"): (0.01, 10, ()),
    ("svhn_cropped", "resnet18"): (0.01, 10, ()),
    ("cifar10", "allcnn"): (0.1, 50, (30,)),
    ("cifar10", "resnet18"): (0.1, 100, (60, 80)),
    ("cifar100", "resnet18"): (0.1, 100, (60, 80)),
}
# Data-free distillation budgets (ISPF paper App. C): epochs, loops per epoch, student lr, tau.
ISPF = {
    ("svhn_cropped", "allcnn"): (100, 1, 0.1, 0.01),
    ("svhn_cropped", "resnet18"): (100, 1, 0.05, 0.01),
    ("cifar10", "allcnn"): (200, 5, 0.05, 0.01),
    ("cifar10", "resnet18"): (200, 5, 0.05, 0.01),
    ("cifar100", "resnet18"): (200, 10, 0.05, 0.001),
}


def paper_config(dataset: str, model: str, forget_classes=(0,)):
  c = base_config()
  c.dataset.name = dataset
  # tfds default (~/tensorflow_datasets); override with --config.dataset.data_dir
  c.dataset.data_dir = ""
  c.dataset.download = False       # prepare once with launch.prepare_data (needs the `prepare` extra)
  c.model.name = model
  c.model.width = 1.0
  c.batch_size = 256
  # On CPU, convolutions and their gradients on XLA's own kernels (~1.5x per AllCNN step here; BUILD_NOTES
  # "Performance"). Ignored on GPU/TPU.
  c.xla_cpu_flags = xla_flags.FAST_CPU_CONVS
  # BN statistics and backward sums as GEMVs, strided convs' dx by phase: faster on XLA:CPU, float32
  # (HIGHEST precision) everywhere.
  c.model.fast_cpu_kernels = True
  if (dataset, model) in TRAIN:
    lr, epochs, milestones = TRAIN[(dataset, model)]
    c.train.update(lr=lr, epochs=epochs, milestones=milestones, gamma=0.1, weight_decay=1e-4)
  c.forget.mode = "class"
  c.forget.classes = tuple(forget_classes)
  # The SSD code's ResNet18 value in every scenario (`if-loops/selective-synaptic-dampening`); the other
  # configs choose alpha on the validation split ('auto').
  for key in ("ssd", "lfssd"):
    c[key].alpha = 10.0
  if "ispf" in c and (dataset, model) in ISPF:
    epochs, loops, lr, tau = ISPF[(dataset, model)]
    c.ispf.update(epochs=epochs, warmup=2, loops_per_epoch=loops, kd_steps=10, batch_size=256,
                  lr=lr, tau=tau)
  return c
