"""Reports: the results table (`table`), per-method and data-free diagnostics plots (`method_plots`,
`distill_plots`), privacy-audit plots (`privacy_plots`), paired statistics over seeds (`stats`) and
the two-method comparison (`compare`). Import the submodule you need:
`from jax_unlearn.report import table`.
"""
