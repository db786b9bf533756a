"""Paired comparison of two methods over runs that differ only in the method (same data set, model,
forget set, seed): per-pair differences, mean with a 95 % t interval, paired t-test, sign test.

python -m launch.compare --a=ispf --b=gkt --runs=W1,W2 [--key=acc_retain] [--out=compare.json]
(W1, W2: workdirs of launch.unlearn / launch.sweep / launch.experiment runs, searched recursively.)"""

from absl import flags

_A = flags.DEFINE_string("a", None, "Method A (the difference is A − B).")
_B = flags.DEFINE_string("b", None, "Method B.")
_RUNS = flags.DEFINE_list("runs", None, "Workdirs or metrics.json/results.json files.")
_KEY = flags.DEFINE_string("key", "acc_retain", "Metric to compare (a field of metrics.json).")
_OUT = flags.DEFINE_string("out", None, "Also write the comparison as JSON (and .md beside it).")


def main(argv):
  del argv
  from jax_unlearn import cli

  def go():
    from jax_unlearn.io import atomic_write_json, atomic_write_text
    from jax_unlearn.report import compare
    result = compare.paired(compare.load_runs(_RUNS.value), _A.value, _B.value, _KEY.value)
    text = compare.markdown(result)
    print(text, end="")
    if _OUT.value:
      atomic_write_json(_OUT.value, result)
      atomic_write_text(_OUT.value.removesuffix(".json") + ".md", text)
  cli.run_main(go)


if __name__ == "__main__":
  for name in ("a", "b", "runs"):
    flags.mark_flag_as_required(name)
  from jax_unlearn import cli
  cli.run_app(main)
