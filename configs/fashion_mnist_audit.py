"""The privacy audit on Fashion-MNIST: random forgetting, N = 16 members per population, each trained
on a 3,000-image retained subset R plus its half of 200 candidates (LiRA-style populations on part of
the training set: all 48,000 images would cost ~250 s per member, ~3.3 h for the three populations of
one audit on the project's 2-core CPU). The model and recipe are configs/fashion_mnist.py's (AllCNN
0.25 with a stride-2 stem, 5 epochs), so are the methods' settings (SSD/LFSSD alpha chosen on the
validation split per member).

python -m launch.audit --config=configs/fashion_mnist_audit.py --config.method=lfssd --workdir=W
"""

from configs import fashion_mnist


def get_config(arg: str = "random"):
  del arg
  c = fashion_mnist.get_config("random")
  c.forget.num_samples = 100      # |C| = 200 candidates; each member forgets its ~100
  c.method = "lfssd"
  c.audit.num_models = 16
  c.audit.retain_size = 3000
  return c
