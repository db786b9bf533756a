"""Paper config: svhn_cropped with allcnn (ISPF paper App. C). Forget class 0 by default
(the paper runs each of 0..9): --config.forget.classes=5."""

from configs.paper import paper_config


def get_config(arg: str = ""):
  del arg
  return paper_config("svhn_cropped", "allcnn", forget_classes=(0,))
