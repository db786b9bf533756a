"""JAX vs PyTorch on the hot paths, and the vmapped sweep vs sequential runs:
python -m launch.bench --size=paper --out=bench.json   (pip install -e ".[bench]" for the PyTorch side)
[--reps=2] [--workloads=train_step,ispf_loop,lfssd] [--nosweep] [--notorch] [--xla_cpu_flags=...]
[--[no]fast_cpu_kernels]"""

import importlib.util
import json
import os

from absl import app, flags

from jax_unlearn import compile_cache  # --compile_cache, --distributed flags (README)

_OUT = flags.DEFINE_string("out", "bench.json", "Where to write the results (JSON).")
_SIZE = flags.DEFINE_enum("size", "paper", ["paper", "digits"], "paper: AllCNN width 1, 32x32x3, batch "
                          "256; digits: configs/digits.py sizes.")
_REPS = flags.DEFINE_integer("reps", 3, "Timed repetitions (median) after one warm-up call.")
_TORCH = flags.DEFINE_bool("torch", True, "Time the PyTorch side (skipped if torch is not installed).")
_SWEEP = flags.DEFINE_bool("sweep", True, "Time the 10-class digits ISPF sweep vs sequential runs.")
_XLA = flags.DEFINE_string("xla_cpu_flags", None, "XLA flags set before JAX starts (default: "
                           "config.xla_cpu_flags of configs/cifar10_allcnn.py or configs/digits.py).")
_BN = flags.DEFINE_bool("fast_cpu_kernels", None, "The JAX AllCNN's model.fast_cpu_kernels (default: "
                        "config.model.fast_cpu_kernels of the configs of --size).")
_ONLY = flags.DEFINE_list("workloads", ["train_step", "ispf_loop", "lfssd"], "Which JAX-vs-PyTorch "
                          "workloads to time (train_step, ispf_loop, lfssd).")


def main(argv):
  del argv
  from configs import cifar10_allcnn, digits
  from jax_unlearn import cli, xla_flags
  size_config = {"paper": cifar10_allcnn, "digits": digits}[_SIZE.value].get_config()
  wanted = _XLA.value
  if wanted is None:  # the flags the configs of this size run with, read from those configs
    wanted = size_config.xla_cpu_flags
  fast_cpu_kernels = size_config.model.fast_cpu_kernels if _BN.value is None else _BN.value
  cli.run_main(lambda: xla_flags.apply(wanted))  # a malformed flag: one `error:` line, exit 2
  compile_cache.setup()
  from jax_unlearn.bench import harness
  use_torch = _TORCH.value and importlib.util.find_spec("torch") is not None
  if _TORCH.value and not use_torch:
    print('torch is not installed: timing JAX only (pip install -e ".[bench]")')
  unknown = set(_ONLY.value) - set(harness.WORKLOADS)
  if unknown:
    raise app.UsageError(f"unknown --workloads {sorted(unknown)}; choose from {', '.join(harness.WORKLOADS)}")
  res = harness.run(_SIZE.value, _REPS.value, torch_side=use_torch, sweep_bench=_SWEEP.value,
                    workloads=tuple(_ONLY.value), fast_cpu_kernels=fast_cpu_kernels)
  res["compile"] = compile_cache.stats()
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value, "w") as f:
    json.dump(res, f, indent=1)
  keys = [k for k in res if k.endswith("_speedup_vs_torch") or k == "sweep_speedup_vs_sequential"]
  print("  ".join(f"{k}={res[k]:.2f}" for k in keys), f"(written to {_OUT.value})")


if __name__ == "__main__":
  from jax_unlearn import cli
  cli.run_app(main)
