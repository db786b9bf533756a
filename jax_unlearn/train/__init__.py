"""Training: the one supervised step (`steps`), the one resumable loop (`loop`), checkpoints
(`checkpoint`), fingerprints of cached artefacts (`fingerprint`), supervised training of the original
and Retrain models (`supervised`), batched evaluation (`evaluate`), device meshes (`sharding`) and
model populations (`population`). Import the submodule you need: `from jax_unlearn.train import loop`.
"""
