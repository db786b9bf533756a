"""Fashion-MNIST (28x28x1, 10 classes) from Debian's dataset-fashion-mnist, sized for a 2-core CPU.

python -m launch.experiment --config=configs/fashion_mnist.py --workdir=W
Variants: configs/fashion_mnist.py:random forgets 1 % of the training set (480 random samples).
Needs `apt-get install dataset-fashion-mnist` (or --config.dataset.data_dir=DIR with the four IDX
files). Every budget below was measured on the project's 2-core CPU (BUILD_NOTES, issue 19).
"""

from jax_unlearn.config import base_config


def get_config(arg: str = "class"):
  c = base_config()
  c.dataset.name = "fashion_mnist"
  c.model.name = "allcnn"
  c.model.width = 0.25            # 24/48 channels
  c.model.stem_stride = 2         # the first conv halves 28x28 to 14x14: ~7x cheaper than stride 1
  c.batch_size = 128
  c.train.update(epochs=6, lr=0.05, milestones=(4,), gamma=0.1, weight_decay=5e-4)
  c.forget.mode = "random" if arg == "random" else "class"
  # Shirt: the class Fashion-MNIST classifiers confuse most with retained ones (T-shirt, pullover,
  # coat), so what the forget class's knowledge does for the retained classes -- ISPF's argument for
  # synthesising it and filtering the teacher's output instead of blocking it -- matters most here.
  c.forget.classes = (6,)
  c.forget.num_samples = 480      # random variant: 1 % of the 48,000 training images
  return c
