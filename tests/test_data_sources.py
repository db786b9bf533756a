"""Tests of the dataset-source registry and its sources: tfds:<name>, IDX/Fashion-MNIST, arrays."""

import gzip
import hashlib
import json
import os
import re
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jax_unlearn import config as config_lib
from jax_unlearn import data
from jax_unlearn.data import idx, registry, tfds_data
from jax_unlearn.errors import ConfigError, DataError, UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION_FILES = [os.path.join(idx.FASHION_MNIST_DIR, stem + ".gz") for stem in idx.FILES.values()]
HAVE_FASHION = all(os.path.isfile(p) for p in FASHION_FILES)
needs_fashion = pytest.mark.skipif(
    not HAVE_FASHION, reason=f"Fashion-MNIST IDX files not in {idx.FASHION_MNIST_DIR}; install "
    "them with apt-get install dataset-fashion-mnist (.ci/run does when it can)")


def cfg(name, **kw):
  c = data.default_config()
  c.name = name
  c.update(kw)
  return c


def one_line_error(exc_type, fn, *args, **kwargs) -> str:
  with pytest.raises(exc_type) as e:
    fn(*args, **kwargs)
  msg = str(e.value)
  assert "\n" not in msg and msg, msg
  return msg


# ------------------------------------------------------------------------------------- registry

BUILTIN = ("digits", "svhn_cropped", "cifar10", "cifar100", "cifar20", "fashion_mnist", "idx",
           "arrays")


def test_registry_lists_every_source():
  assert data.names() == BUILTIN                      # registration order = message order
  assert data.names(include_patterns=True) == BUILTIN + ("tfds:<name>",)
  assert data.DATASETS == data.names()
  kinds = {s.name: s.kind for s in registry.sources()}
  assert kinds == {"digits": "sklearn", "svhn_cropped": "tfds", "cifar10": "tfds", "cifar100": "tfds",
                   "cifar20": "tfds", "fashion_mnist": "idx", "idx": "idx", "arrays": "arrays",
                   "tfds:": "tfds"}
  full = data.default_config()
  base = config_lib.base_config().dataset
  assert set(base.keys()) == set(full.keys())
  for source in registry.sources():
    assert source.summary and "\n" not in source.summary
    assert set(source.default_config()) <= set(full.keys())     # every field reaches the config
  assert registry.lookup("tfds:mnist").name == "tfds:" and registry.lookup("tfds:") is None
  # The fixed names answer `dataset_info(name)` without reading data.
  for name in ("digits", "svhn_cropped", "cifar10", "cifar100", "cifar20", "fashion_mnist"):
    assert registry.lookup(name).fixed_info and data.dataset_info(name).name == name


def test_importing_data_loads_no_tfds_or_sklearn():
  code = ("import sys; import jax_unlearn.data as d; import jax_unlearn.data.arrays, "
          "jax_unlearn.data.idx, jax_unlearn.data.tfds_data, jax_unlearn.data.digits; "
          "print(len(d.names()), 'tensorflow_datasets' in sys.modules, 'sklearn' in sys.modules)")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                     timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.split() == [str(len(BUILTIN)), "False", "False"]


def test_config_validation_derives_from_registry(tmp_path):
  from configs import digits as digits_config
  c = digits_config.get_config()
  c.dataset.name = "nope"
  msg = one_line_error(ConfigError, config_lib.validate, c)
  assert msg.startswith("unknown dataset 'nope'; set --config.dataset.name to one of: ")
  assert msg.endswith(", ".join(data.names(include_patterns=True)))
  c.dataset.name = "mnist"                             # a TFDS builder: point at the prefix
  assert "did you mean 'tfds:mnist'?" in one_line_error(ConfigError, config_lib.validate, c)
  # A name registered at run time is valid at once, and listed.
  rng = np.random.default_rng(0)
  x, y = rng.integers(0, 256, (40, 8, 8), np.uint8), np.arange(40) % 10
  data.register_arrays("toy_registered", x, y, x[:20], y[:20])
  try:
    c.dataset.name = "toy_registered"
    config_lib.validate(c)
    c.forget.classes = (10,)                           # checked against the registered info
    assert "--config.forget.classes" in one_line_error(ConfigError, config_lib.validate, c)
    c.dataset.name = "nope"
    assert "toy_registered" in one_line_error(ConfigError, config_lib.validate, c)
  finally:
    data.unregister_arrays("toy_registered")
  assert "toy_registered" not in data.names()
  with pytest.raises(ConfigError, match="built-in"):
    data.register_arrays("digits", x, y, x, y)


# ------------------------------------------------------------------------------------ IDX format

def write_idx(path, array, gz=None, dtype_code=None):
  """Write `array` as an IDX file (big-endian), gzipped when the name ends in .gz."""
  array = np.asarray(array)
  code = dtype_code or {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09,
                        np.dtype(np.int16): 0x0B, np.dtype(np.int32): 0x0C,
                        np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}[array.dtype]
  raw = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
  raw += array.astype(array.dtype.newbyteorder(">")).tobytes()
  gz = str(path).endswith(".gz") if gz is None else gz
  with open(path, "wb") as f:
    f.write(gzip.compress(raw) if gz else raw)
  return raw


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, gz, dtype):
  rng = np.random.default_rng(1)
  array = (rng.normal(size=(5, 3, 4)) * 50).astype(dtype)
  path = tmp_path / ("x.idx.gz" if gz else "x.idx")
  write_idx(path, array)
  back = idx.read(str(path))
  assert back.dtype.isnative and back.dtype.kind == np.dtype(dtype).kind
  np.testing.assert_array_equal(back, array)
  # Gzip is detected by content, not by name.
  os.rename(path, tmp_path / "renamed")
  np.testing.assert_array_equal(idx.read(str(tmp_path / "renamed")), array)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_truncated_names_file_and_sizes(tmp_path, gz):
  array = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
  path = tmp_path / ("t.gz" if gz else "t")
  raw = write_idx(path, array, gz=False)
  cut = raw[:len(raw) - 100]
  with open(path, "wb") as f:
    f.write(gzip.compress(cut)[:-8] if gz else cut)   # gz: its trailer lost as well
  msg = one_line_error(DataError, idx.read, str(path), fix="get it again")
  assert f"file {path} is truncated (expected {len(raw)} bytes, got {len(cut)}); get it again" == msg
  # Extra bytes are as wrong as missing ones.
  with open(path, "wb") as f:
    f.write(raw + b"\0\0")
  assert "2 bytes more than its header declares" in one_line_error(DataError, idx.read, str(path))
  # A header cut inside the dimensions.
  with open(path, "wb") as f:
    f.write(raw[:6])
  assert "is truncated" in one_line_error(DataError, idx.read, str(path))


@pytest.mark.parametrize("head", [b"\x01\x02\x08\x03", b"\x00\x00\x07\x01", b"\x00\x00\x08\x00",
                                  b"\x00", b""])
def test_idx_wrong_magic(tmp_path, head):
  path = tmp_path / "bad"
  path.write_bytes(head + b"\0" * 16)
  msg = one_line_error(DataError, idx.read, str(path))
  assert f"{path} is not an IDX file" in msg


def make_idx_dir(path, n_train=60, n_test=20, shape=(6, 5), gz=True, classes=4, seed=0):
  rng = np.random.default_rng(seed)
  path.mkdir(parents=True, exist_ok=True)
  arrays = {"train_images": rng.integers(0, 256, (n_train,) + shape, np.uint8),
            "train_labels": (np.arange(n_train) % classes).astype(np.uint8),
            "test_images": rng.integers(0, 256, (n_test,) + shape, np.uint8),
            "test_labels": (np.arange(n_test) % classes).astype(np.uint8)}
  for role, stem in idx.FILES.items():
    write_idx(path / (stem + (".gz" if gz else "")), arrays[role])
  return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_source_loads_a_folder(tmp_path, gz):
  arrays = make_idx_dir(tmp_path, gz=gz)
  c = cfg("idx", data_dir=str(tmp_path))
  info = data.dataset_info(c)
  ds = data.load_dataset(c, seed=0)
  assert ds.info == info
  assert (info.num_classes, info.image_shape, info.augment) == (4, (6, 5, 1), False)
  x = arrays["train_images"].astype(np.float64) / 255
  np.testing.assert_allclose(info.mean, [x.mean()], rtol=1e-6)
  np.testing.assert_allclose(info.std, [x.std()], rtol=1e-6)
  assert (len(ds.train), len(ds.val), len(ds.test)) == (48, 12, 20)
  np.testing.assert_array_equal(ds.test.images[..., 0] * 255, arrays["test_images"])
  np.testing.assert_array_equal(ds.test.labels, arrays["test_labels"])
  assert ds.test.images.dtype == np.float32 and ds.test.labels.dtype == np.int32
  assert data.dataset_info(cfg("idx", data_dir=str(tmp_path), augment=True)).augment


def test_idx_source_errors(tmp_path):
  assert "--config.dataset.data_dir=DIR" in one_line_error(ConfigError, data.dataset_info, "idx")
  make_idx_dir(tmp_path)
  os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
  msg = one_line_error(DataError, data.load_dataset, cfg("idx", data_dir=str(tmp_path)), 0)
  assert "t10k-labels-idx1-ubyte[.gz] not found in" in msg and str(tmp_path) in msg
  write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(19, np.uint8))   # 19 labels, 20 images
  msg = one_line_error(DataError, data.load_dataset, cfg("idx", data_dir=str(tmp_path)), 0)
  assert "has 20 images but" in msg and "19 labels" in msg
  make_idx_dir(tmp_path / "b", shape=(6, 5))
  write_idx(tmp_path / "b" / "t10k-images-idx3-ubyte.gz", np.zeros((20, 5, 6), np.uint8))
  msg = one_line_error(DataError, data.load_dataset, cfg("idx", data_dir=str(tmp_path / "b")), 0)
  assert "train images are (6, 5, 1) but test images (5, 6, 1)" in msg


# ---------------------------------------------------------------------------- fashion_mnist (no data)

def test_fashion_mnist_missing_files(tmp_path, monkeypatch):
  msg = one_line_error(DataError, data.dataset_info, cfg("fashion_mnist", data_dir=str(tmp_path)))
  assert "train-images-idx3-ubyte[.gz]" in msg and str(tmp_path) in msg
  assert "apt-get install dataset-fashion-mnist" in msg and "tfds:fashion_mnist" in msg
  monkeypatch.setattr(idx, "FASHION_MNIST_DIR", str(tmp_path / "none"))
  msg = one_line_error(DataError, data.load_dataset, "fashion_mnist", 0)
  assert "install them with apt-get install dataset-fashion-mnist" in msg


def test_fashion_mnist_truncated_and_wrong_files(tmp_path, monkeypatch):
  """Synthetic files in the (patched) Debian folder: truncation names the reinstall command, and
  valid IDX files that are not the official data fail the checksum."""
  make_idx_dir(tmp_path, shape=(28, 28), classes=10)
  monkeypatch.setattr(idx, "FASHION_MNIST_DIR", str(tmp_path))
  msg = one_line_error(DataError, data.load_dataset, "fashion_mnist", 0)
  assert "is not the official Fashion-MNIST train-images-idx3-ubyte (sha256" in msg
  assert "--config.dataset.name=idx" in msg
  path = tmp_path / "train-images-idx3-ubyte.gz"
  raw = gzip.decompress(path.read_bytes())
  path.write_bytes(gzip.compress(raw[:1000]))
  msg = one_line_error(DataError, data.load_dataset, "fashion_mnist", 0)
  assert msg == (f"file {path} is truncated (expected {len(raw)} bytes, got 1000); reinstall with "
                 "apt-get install --reinstall dataset-fashion-mnist")


# ------------------------------------------------------------------------- fashion_mnist (real)

@pytest.fixture(scope="module")
def fashion():
  t0 = time.time()
  out = data.load_dataset("fashion_mnist", seed=0)
  return out, time.time() - t0     # about 1.5 s unloaded: gunzip, sha256, /255, the 80/20 split


@needs_fashion
def test_fashion_mnist_real_files(fashion):
  ds, _ = fashion
  info = ds.info
  assert info == data.dataset_info("fashion_mnist")
  assert (info.num_classes, info.image_shape, info.augment) == (10, (28, 28, 1), False)
  assert info.class_names[0] == "T-shirt/top" and len(info.class_names) == 10
  assert (len(ds.train) + len(ds.val), len(ds.test)) == (60000, 10000)
  train_labels = np.concatenate([ds.train.labels, ds.val.labels])
  np.testing.assert_array_equal(np.bincount(train_labels), [6000] * 10)
  np.testing.assert_array_equal(np.bincount(ds.test.labels), [1000] * 10)
  for split in (ds.train, ds.val, ds.test):
    assert split.images.dtype == np.float32 and split.images.shape[1:] == (28, 28, 1)
    assert split.labels.dtype == np.int32
    assert split.images.min() == 0.0 and split.images.max() == 1.0
    # Exactly k/255: the pixels are whole bytes.
    sample = split.images[:50] * 255
    np.testing.assert_allclose(sample, np.round(sample), atol=1e-4)
  # The constants are the training images' (train + val = the official training split).
  mean, std = data.channel_stats(np.concatenate([ds.train.images, ds.val.images]))
  np.testing.assert_allclose(mean, idx.FASHION_MNIST_MEAN, rtol=1e-5)
  np.testing.assert_allclose(std, idx.FASHION_MNIST_STD, rtol=1e-5)


@needs_fashion
def test_fashion_mnist_checksums():
  """The installed files hold the official bytes: the sha256 of each decompressed file."""
  for role, stem in idx.FILES.items():
    raw = gzip.decompress(open(os.path.join(idx.FASHION_MNIST_DIR, stem + ".gz"), "rb").read())
    assert hashlib.sha256(raw).hexdigest() == idx.FASHION_MNIST_SHA256[role], stem


@needs_fashion
def test_fashion_mnist_plain_files_in_another_folder(tmp_path):
  """Un-gzipped copies load the same (the checksum is of the IDX bytes, not of the .gz)."""
  for stem in idx.FILES.values():
    raw = gzip.decompress(open(os.path.join(idx.FASHION_MNIST_DIR, stem + ".gz"), "rb").read())
    (tmp_path / stem).write_bytes(raw)
  info, train, test = idx.load_fashion_mnist({"data_dir": str(tmp_path)})
  assert info == idx.FASHION_MNIST_INFO and (len(train), len(test)) == (60000, 10000)


@needs_fashion
def test_fashion_mnist_supervised_steps(fashion):
  """16 SGD steps on 256 images learn something (about 15 s on one free CPU core, mostly compile)."""
  import jax
  import jax.numpy as jnp
  import optax

  from jax_unlearn import models
  from jax_unlearn.train import supervised
  ds, _ = fashion
  sub = ds.train.subset(np.arange(256))
  model = models.AllCNN(num_classes=10, width=0.125)
  tx = optax.sgd(0.05, momentum=0.9)
  state = supervised.create_train_state(model, jax.random.key(0), ds.info.image_shape, tx)
  mean, std = jnp.asarray(ds.info.mean), jnp.asarray(ds.info.std)
  losses = []
  for step in range(16):
    i = (step % 4) * 64
    batch = {"image": jnp.asarray(sub.images[i:i + 64]), "label": jnp.asarray(sub.labels[i:i + 64])}
    state, m = supervised.train_step(state, batch, jax.random.key(step), mean, std)
    losses.append(float(m["loss"]))
  assert np.isfinite(losses).all()
  assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.25, losses


# ------------------------------------------------------------------------------ tfds:<name>

def test_tfds_generic_mnist_from_builder_info():
  assert "mnist" not in tfds_data._SOURCES            # not from our table: from the builder
  builder = tfds.builder("mnist")
  with tfds.testing.mock_data(num_examples=40):
    info = data.dataset_info("tfds:mnist")
    ds = data.load_dataset(cfg("tfds:mnist"), seed=0)
    raw = tfds.data_source("mnist", split="test")
    raw = [raw[i] for i in range(len(raw))]
  assert info.num_classes == builder.info.features["label"].num_classes == 10
  assert info.image_shape == tuple(builder.info.features["image"].shape) == (28, 28, 1)
  assert info.class_names == tuple(builder.info.features["label"].names)
  assert ds.info == info and info.name == "tfds:mnist" and not info.augment
  assert (len(ds.train), len(ds.val), len(ds.test)) == (32, 8, 40)
  np.testing.assert_array_equal(ds.test.images, np.stack([r["image"] for r in raw]) / np.float32(255))
  np.testing.assert_array_equal(ds.test.labels, [r["label"] for r in raw])
  mean, std = data.channel_stats(np.concatenate([ds.train.images, ds.val.images]))
  np.testing.assert_allclose(info.mean, mean, rtol=1e-5)
  np.testing.assert_allclose(info.std, std, rtol=1e-5)


def test_tfds_generic_feature_choice():
  with tfds.testing.mock_data(num_examples=20):
    msg = one_line_error(ConfigError, data.dataset_info, "tfds:cifar100")
    assert "several ClassLabel features" in msg and "--config.dataset.label_key=" in msg
    info = data.dataset_info(cfg("tfds:cifar100", label_key="coarse_label"))
    assert (info.num_classes, info.image_shape) == (20, (32, 32, 3))
    msg = one_line_error(ConfigError, data.dataset_info, cfg("tfds:mnist", image_key="img"))
    assert "--config.dataset.image_key" in msg
    assert "no Image feature" in one_line_error(ConfigError, data.dataset_info, "tfds:imdb_reviews")
    assert "no fixed shape" in one_line_error(ConfigError, data.dataset_info, "tfds:tf_flowers")
  assert "not a TFDS dataset" in one_line_error(ConfigError, data.dataset_info, "tfds:no_such_ds")


def test_tfds_generic_unprepared(tmp_path):
  msg = one_line_error(DataError, data.load_dataset, cfg("tfds:mnist", data_dir=str(tmp_path)), 0)
  assert f"python -m launch.prepare_data --dataset=tfds:mnist --data_dir={tmp_path}" in msg
  assert list(tmp_path.iterdir()) == []


def test_prepare_data_names_come_from_registry(capsys):
  from launch import prepare_data
  assert prepare_data.prepare("fashion_mnist") == 0
  assert "nothing to prepare" in capsys.readouterr().out
  assert prepare_data.prepare("mnist") == 2
  err = capsys.readouterr().err
  tfds_backed = [s.name for s in registry.sources() if s.kind == "tfds" and not s.prefix]
  assert err.strip().endswith(", ".join(tfds_backed) + ", tfds:<name>")


# ------------------------------------------------------------------------------------- arrays

def digits_arrays():
  """sklearn digits as uint8 8x8 images: learnable, and shaped for configs/digits.py's model."""
  from sklearn.datasets import load_digits
  d = load_digits()
  x = np.round(d.images * (255 / 16)).astype(np.uint8)
  return dict(x_train=x[:1400], y_train=d.target[:1400], x_test=x[1400:], y_test=d.target[1400:])


def test_arrays_npz_round_trip(tmp_path):
  arrays = digits_arrays()
  path = tmp_path / "d.npz"
  np.savez(path, **arrays)
  c = cfg("arrays", path=str(path))
  info = data.dataset_info(c)
  ds = data.load_dataset(c, seed=0)
  assert ds.info == info and info.name == "arrays"
  assert (info.num_classes, info.image_shape, info.augment) == (10, (8, 8, 1), False)
  assert (len(ds.train), len(ds.val), len(ds.test)) == (1120, 280, 397)
  np.testing.assert_array_equal(ds.test.images[..., 0], arrays["x_test"] / np.float32(255))
  np.testing.assert_array_equal(ds.test.labels, arrays["y_test"])
  x = arrays["x_train"].astype(np.float64) / 255
  np.testing.assert_allclose(info.mean, [x.mean()], rtol=1e-6)
  np.testing.assert_allclose(info.std, [x.std()], rtol=1e-6)
  # Float HWC images in [0,1] and an explicit class count.
  rng = np.random.default_rng(0)
  np.savez(path, x_train=rng.random((30, 4, 4, 3), np.float32), y_train=np.arange(30) % 3,
           x_test=rng.random((10, 4, 4, 3)), y_test=np.arange(10.0) % 3, num_classes=5)
  info = data.load_dataset(cfg("arrays", path=str(path)), seed=0).info
  assert (info.num_classes, info.image_shape, len(info.mean)) == (5, (4, 4, 3), 3)


def test_from_arrays_and_register_arrays():
  rng = np.random.default_rng(0)
  x, y = rng.integers(0, 256, (50, 6, 6, 1), np.uint8), np.arange(50) % 5
  info, train, test = data.from_arrays(x, y, x[:10], y[:10], name="mine",
                                       class_names=tuple("abcde"))
  assert (info.name, info.num_classes, info.class_names) == ("mine", 5, tuple("abcde"))
  assert train.images.dtype == np.float32 and train.labels.dtype == np.int32
  data.register_arrays("mine", x, y, x[:10], y[:10])
  try:
    ds = data.load_dataset("mine", seed=0)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (40, 10, 10)
    assert data.dataset_info("mine").num_classes == 5
    data.register_arrays("mine", x[:20], y[:20] % 2, x[:4], y[:4] % 2)   # replaced
    assert data.dataset_info("mine").num_classes == 2
  finally:
    data.unregister_arrays("mine")


def _good(**over):
  rng = np.random.default_rng(0)
  a = dict(x_train=rng.integers(0, 256, (20, 5, 5), np.uint8), y_train=np.arange(20) % 4,
           x_test=rng.integers(0, 256, (8, 5, 5), np.uint8), y_test=np.arange(8) % 4)
  a.update(over)
  return {k: v for k, v in a.items() if v is not None}


BAD_NPZ = [
    ("missing key", _good(y_test=None), "no key 'y_test'"),
    ("lengths", _good(y_train=np.arange(19) % 4), "x_train has 20 images but y_train has 19"),
    ("label range", _good(y_test=np.full(8, 7), num_classes=4),
     "y_test has label 7 but num_classes is 4"),
    ("negative", _good(y_train=np.arange(20) - 1), "y_train has negative labels"),
    ("not integers", _good(y_train=np.linspace(0, 3, 20)), "y_train holds non-integer labels"),
    ("string labels", _good(y_test=np.array(list("abcdefgh"))), "y_test has dtype <U1"),
    ("nan", _good(x_test=np.full((8, 5, 5), np.nan, np.float32)), "x_test has 200 NaN or inf"),
    ("inf", _good(x_train=np.full((20, 5, 5), np.inf)), "NaN or inf pixels"),
    ("rank", _good(x_train=np.zeros((20, 25), np.uint8)), "x_train has shape (20, 25) (rank 2)"),
    ("rank5", _good(x_test=np.zeros((8, 5, 5, 1, 1), np.uint8)), "(rank 5)"),
    ("float 0..255", _good(x_train=np.full((20, 5, 5), 200.0, np.float32)), "divide by 255"),
    ("int > 255", _good(x_train=np.full((20, 5, 5), 300, np.int64)), "in [300, 300]"),
    ("empty", _good(x_test=np.zeros((0, 5, 5), np.uint8), y_test=np.zeros(0, int)),
     "x_test is empty"),
    ("shapes", _good(x_test=np.zeros((8, 6, 5), np.uint8)),
     "x_train images are (5, 5, 1) but x_test images are (6, 5, 1)"),
    ("one class", _good(y_train=np.zeros(20, int), y_test=np.zeros(8, int)), "a single class"),
    ("bad num_classes", _good(num_classes=np.array([4, 4])), "num_classes must be a positive"),
]


@pytest.mark.parametrize("case,arrays,needle", BAD_NPZ, ids=[c[0] for c in BAD_NPZ])
def test_arrays_bad_npz_is_one_line(tmp_path, case, arrays, needle):
  path = tmp_path / "bad.npz"
  np.savez(path, **arrays)
  msg = one_line_error(DataError, data.load_dataset, cfg("arrays", path=str(path)), 0)
  assert needle in msg and str(path) in msg, msg
  if case not in ("missing key",):   # the same checks from Python, without the file name
    kw = {k: arrays.get(k) for k in ("x_train", "y_train", "x_test", "y_test")}
    with pytest.raises(DataError, match=re.escape(needle)):
      data.from_arrays(**kw, num_classes=arrays.get("num_classes"))


def test_arrays_file_errors(tmp_path):
  assert "--config.dataset.path=FILE.npz" in one_line_error(ConfigError, data.dataset_info, "arrays")
  msg = one_line_error(DataError, data.dataset_info, cfg("arrays", path=str(tmp_path / "no.npz")))
  assert "does not exist" in msg and "x_train, y_train, x_test, y_test" in msg
  (tmp_path / "junk.npz").write_bytes(b"not a zip")
  assert "cannot read" in one_line_error(DataError, data.load_dataset,
                                         cfg("arrays", path=str(tmp_path / "junk.npz")), 0)
  np.savez(tmp_path / "obj.npz", **_good(y_test=np.array([1, "a", None] * 3, dtype=object)[:8]))
  assert "cannot read" in one_line_error(DataError, data.load_dataset,
                                         cfg("arrays", path=str(tmp_path / "obj.npz")), 0)


# ---------------------------------------------------------------- contract over every source

def _contract_cfg(name, tmp_path):
  if name in ("digits", "svhn_cropped", "cifar10", "cifar100", "cifar20"):
    return cfg(name)
  if name == "fashion_mnist":  # needs the Debian files: the parametrization marks it (needs_fashion)
    return cfg(name)
  if name == "idx":
    make_idx_dir(tmp_path / "idx")
    return cfg(name, data_dir=str(tmp_path / "idx"))
  if name == "arrays":
    np.savez(tmp_path / "a.npz", **_good())
    return cfg(name, path=str(tmp_path / "a.npz"))
  if name == "tfds:<name>":
    return cfg("tfds:mnist")
  raise AssertionError(f"no contract case for the registered dataset {name!r}: add one here")


@pytest.mark.parametrize("name", [pytest.param(n, marks=needs_fashion) if n == "fashion_mnist" else n
                                  for n in data.names(include_patterns=True)])
def test_every_source_keeps_the_contract(name, tmp_path):
  c = _contract_cfg(name, tmp_path)
  source = data.get_source(c.name)
  assert set(source.default_config()) <= set(c.keys())
  with tfds.testing.mock_data(num_examples=30):
    info = data.dataset_info(c)
    ds = data.load_dataset(c, seed=0)
  assert ds.info == info
  assert len(info.mean) == len(info.std) == info.image_shape[-1]
  assert all(s > 0 for s in info.std)
  for split in (ds.train, ds.val, ds.test):
    assert split.images.shape[1:] == info.image_shape and split.images.dtype == np.float32
    assert split.labels.dtype == np.int32 and 0 <= split.labels.min()
    assert split.labels.max() < info.num_classes
    assert 0.0 <= split.images.min() and split.images.max() <= 1.0


def test_every_error_is_a_user_error():
  """Unknown names and bad fields all raise UserError subclasses (launchers print one line)."""
  for bad in ("", "tfds:", "TFDS:mnist", "arrays:x"):
    with pytest.raises(UserError):
      data.dataset_info(bad)


# -------------------------------------------------------------------------------- launchers

def _launch(module, *args, timeout=300):
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                        cwd=ROOT, timeout=timeout)


@pytest.mark.slow  # about 60 s on a shared 2-core CPU: a full train + lfssd run in a subprocess
def test_arrays_through_the_unlearn_launcher(tmp_path):
  path = tmp_path / "digits.npz"
  np.savez(path, **digits_arrays())
  work = tmp_path / "w"
  r = _launch("launch.unlearn", "--config=configs/digits.py", "--config.dataset.name=arrays",
              f"--config.dataset.path={path}", "--config.method=lfssd", "--config.train.epochs=2",
              f"--workdir={work}")
  assert r.returncode == 0, r.stderr[-3000:]
  m = json.loads((work / "metrics.json").read_text())
  assert m["dataset"] == "arrays" and m["method"] == "lfssd"
  assert 0 <= m["acc_forget"] <= 100 and m["acc_retain"] > 50     # 2 epochs learn the digits


@pytest.mark.parametrize("arrays,needle", [
    (_good(x_train=np.full((20, 5, 5), 200.0, np.float32)), "divide by 255"),
    (None, "does not exist"),
])
def test_bad_npz_through_the_launcher(tmp_path, arrays, needle):
  path = tmp_path / "bad.npz"
  if arrays is not None:
    np.savez(path, **arrays)
  r = _launch("launch.train", "--config=configs/digits.py", "--config.dataset.name=arrays",
              f"--config.dataset.path={path}", f"--workdir={tmp_path}/w")
  assert r.returncode == 2, (r.stdout, r.stderr)
  assert "Traceback" not in r.stderr
  err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
  assert len(err) == 1 and needle in err[0], r.stderr
