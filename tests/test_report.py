import json

from jax_unlearn.report import table


def _row(method, seed, acc_f, acc_r):
  return {"method": method, "forget_classes": [3], "seed": seed, "acc_forget": acc_f,
          "acc_retain": acc_r, "mia_i": 100.0, "mia_ii": 30.0, "mia_entropy": float("nan"),
          "ain": 1.0, "kl_to_retrain": 0.0, "wall_s": 1.5, "extra": "dropped"}


def test_results_schema_and_table(tmp_path):
  rows = [_row("retrain", 0, 0.0, 99.0), _row("ispf", 0, 1.0, 95.0), _row("ispf", 1, 3.0, 97.0)]
  table.write_results(str(tmp_path), {"seed": 0}, rows, title="digits")
  res = json.loads((tmp_path / "results.json").read_text())
  assert set(res) == {"config", "rows", "summary", "summary_info", "paired"}
  assert [r["method"] for r in res["rows"]] == ["retrain", "ispf", "ispf"]
  for r in res["rows"]:
    assert tuple(r) == table.row_keys()          # exactly the documented keys, in order
  assert res["rows"][0]["mia_entropy"] is None  # NaN is written as null, never as invalid JSON
  md = (tmp_path / "results.md").read_text()
  assert "| ispf | 3 | 2 | 2.00 ± 1.41 | 96.00 ± 1.41 |" in md  # mean ± std (ddof=1) over seeds
  assert "| retrain | 3 | 1 | 0.00 | 99.00 |" in md
  assert (tmp_path / "results.csv").read_text().splitlines()[0].split(",") == list(table.row_keys())
  assert (tmp_path / "results.png").stat().st_size > 1000


def test_capped_ain_missing_seeds_and_random_mode_are_visible(tmp_path):
  capped = {**_row("pd", 0, 0.0, 98.0), "ain": 4.444, "ain_reached": False}
  rows = [capped, {**_row("gkt", 0, 0.0, 97.0), "ain_reached": True},
          _row("ispf", 0, 1.0, 95.0), {**_row("ispf", 1, 3.0, 97.0), "mia_ii": float("nan")}]
  table.write_results(str(tmp_path), {"forget": {"mode": "class"}}, rows)
  res = json.loads((tmp_path / "results.json").read_text())
  assert [r["ain_reached"] for r in res["rows"]] == [False, True, None, None]
  md = (tmp_path / "results.md").read_text()
  assert "| pd | 3 | 1 | 0.00 | 98.00 | 100.00 | n/a | 30.00 | n/a | n/a | ≥ 4.444 |" in md  # a lower bound
  assert "| gkt | 3 | 1 | 0.00 | 97.00 | 100.00 | n/a | 30.00 | n/a | n/a | 1.000 |" in md
  assert "| 30.00 (1 of 2) |" in md                       # MIA-II known for one of two seeds
  assert "Acc D_f test (%)" in md and "forget-class test images" in md
  table.write_results(str(tmp_path), {"forget": {"mode": "random"}}, rows)
  md = (tmp_path / "results.md").read_text()
  assert "Acc D_f train (%)" in md and "Acc D_f test" not in md
  assert "KL(unlearned ‖ Retrain) on the forget training samples" in md
