"""The privacy audit on digits: random forgetting of 100 samples (configs/digits.py:random), N = 16
members per population, the original recipe (30 epochs, AllCNN 0.25), one member at a time on CPU.

python -m launch.audit --config=configs/digits_audit.py --config.method=ssd --workdir=W
"""

from configs import digits


def get_config(arg: str = "random"):
  del arg
  c = digits.get_config("random")
  c.method = "ssd"
  c.audit.num_models = 16
  return c
