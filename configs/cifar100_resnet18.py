"""Paper config: CIFAR-100 with ResNet18 (ISPF paper App. C; the SSD code's full-class α=10 for ResNet18).

The ISPF class IDs were lost from the paper text; we use the SSD repository's CIFAR-100 classes
(rocket 69, mushroom 51, baby 2, lamp 40, sea 71). `get_config("rocket")` etc. picks one; the default
is rocket (69). `get_config("ten")` forgets ten classes from ten different super-classes.
"""

from configs.paper import paper_config

CLASSES = {"rocket": 69, "mushroom": 51, "baby": 2, "lamp": 40, "sea": 71}
# One fine class from each of ten different CIFAR-100 super-classes.
TEN = (69, 51, 2, 40, 71, 3, 30, 47, 8, 12)


def get_config(arg: str = "rocket"):
  classes = TEN if arg == "ten" else (CLASSES.get(arg or "rocket", 69),)
  c = paper_config("cifar100", "resnet18", forget_classes=classes)
  for key in ("ssd", "lfssd"):
    c[key].alpha = 10.0
    c[key].lam = 1.0
  return c
