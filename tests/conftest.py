import os
import sys
import tempfile

# Tests import `configs.*` and `launch.*` from the project root.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _enable_session_compile_cache():
  """One persistent XLA cache per pytest session, shared by its xdist workers.

  Many tests compile the same digits programs (the supervised step, evaluation, BN statistics); the
  cache turns each repeat into a load. A fresh directory per session (`PYTEST_XDIST_TESTRUNUID` is the
  same in every worker of one run), so no test ever reads an executable from an earlier checkout.
  `JAX_UNLEARN_TEST_COMPILE_CACHE=0` turns it off.
  """
  if os.environ.get("JAX_UNLEARN_TEST_COMPILE_CACHE", "1") == "0":
    return
  run = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getpid()}"
  from jax_unlearn import compile_cache
  compile_cache.enable(os.path.join(tempfile.gettempdir(), f"jax_unlearn_tests_xla_{run}"))


_enable_session_compile_cache()
