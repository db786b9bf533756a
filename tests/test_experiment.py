"""The main job (`launch.experiment`) at toy size: results table, cached rows, and the MIA-II shadow
checkpoint that a second launch reuses (issue 8: shadow models resume instead of retraining)."""

from __future__ import annotations

import glob
import json
import os

from jax_unlearn import experiment


def _config():
  from configs import digits
  c = digits.get_config()
  c.train.epochs = 1
  c.model.width = 0.125
  c.methods = ("original", "finetune")
  c.finetune.epochs = 1
  c.metrics.num_shadow = 2
  c.metrics.shadow_epochs = 2
  c.metrics.ain_max_epochs = 1
  return c


def test_experiment_writes_table_and_reuses_rows_and_shadows(tmp_path):
  wd = str(tmp_path)
  logs = []
  res = experiment.run(_config(), wd, log=logs.append)
  rows = res["rows"] if isinstance(res, dict) and "rows" in res else None
  with open(os.path.join(wd, "results.json")) as f:
    table = json.load(f)
  methods = [r["method"] for r in (rows or table["rows"])]
  assert methods == ["original", "finetune"], methods
  for r in rows or table["rows"]:
    assert 0.0 <= r["acc_forget"] <= 100.0 and 0.0 <= r["acc_retain"] <= 100.0
  (sdir,) = glob.glob(os.path.join(wd, "shadows", "class-*_seed0_*"))
  assert sorted(int(p) for p in os.listdir(sdir) if p.isdigit())[-1] == 2  # per-epoch checkpoint
  # Second launch: every row is cached and the finished shadows are not trained again.
  os.remove(os.path.join(wd, "runs", "class-3_seed0", "finetune", "row.json"))
  logs2 = []
  experiment.run(_config(), wd, log=logs2.append)
  assert any("1/2 original: cached" in m for m in logs2), logs2
  assert any("reused the finished run at epoch 2/2" in m for m in logs2), logs2
  with open(os.path.join(wd, "results.json")) as f:
    again = json.load(f)
  strip = lambda rows: [{k: v for k, v in r.items() if k not in ("wall_s", "info")} for r in rows]  # noqa
  assert strip(again["rows"]) == strip(table["rows"])
  # A cached row from before a metric column existed: its saved model is evaluated again (no rerun of
  # the method), and the other fields and the wall time are kept.
  path = os.path.join(wd, "runs", "class-3_seed0", "finetune", "row.json")
  with open(path) as f:
    row = json.load(f)
  old = dict(row)
  del row["kl_to_retrain"], row["mia_i"]
  with open(path, "w") as f:
    json.dump(row, f)
  logs3 = []
  experiment.run(_config(), wd, log=logs3.append)
  assert any("finetune: cached row lacks mia_i, kl_to_retrain" in m for m in logs3), logs3
  assert not any("finetune: running" in m for m in logs3), logs3
  with open(path) as f:
    new = json.load(f)
  assert new == old


def test_row_fingerprint_and_shadow_dir_follow_the_config():
  """Which methods/seeds run does not change the rows' fingerprint; a model setting does, and it
  moves the shadows too; an AIN setting leaves the shadows where they are."""
  from configs import digits
  c = digits.get_config()
  other = digits.get_config()
  other.methods = ("original",)
  other.seed = 0
  assert experiment.fingerprint_of(c) == experiment.fingerprint_of(other)
  fast = digits.get_config()
  fast.model.fast_cpu_kernels = True
  assert experiment.fingerprint_of(fast) != experiment.fingerprint_of(c)
  assert experiment.shadow_dir(fast, "/w") != experiment.shadow_dir(c, "/w")
  ain = digits.get_config()
  ain.metrics.ain_lr = 0.01
  assert experiment.shadow_dir(ain, "/w") == experiment.shadow_dir(c, "/w")
  assert experiment.fingerprint_of(ain) != experiment.fingerprint_of(c)
