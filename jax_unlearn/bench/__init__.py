"""Benchmarks of the JAX hot paths against equivalent PyTorch code (`python -m launch.bench`).

`harness.run(size, reps)` times, on the same inputs, (a) the supervised AllCNN train step, (b) one ISPF
loop (1 generator + 10 student steps, DFQ losses, PostFilter) and (c) the LFSSD importance pass, in JAX
(`jax_side`) and in PyTorch (`torch_side`, the only module that imports torch), plus the vmapped
10-class digits ISPF sweep against the same runs done one by one. See BUILD_NOTES "Performance".
"""
