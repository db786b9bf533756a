"""Tests of jax_unlearn.data: datasets, splits, partitions, minibatches, augmentation, errors."""

import socket

import chex
import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jax_unlearn import data
from jax_unlearn.data import digits, tfds_data
from jax_unlearn.errors import ConfigError, DataError


def dataset_cfg(name="digits", **kw):
  return ml_collections.ConfigDict({"name": name, "data_dir": "", "download": False, **kw})


def forget_cfg(mode="class", classes=(3,), num_samples=0):
  return ml_collections.ConfigDict(dict(mode=mode, classes=classes, num_samples=num_samples))


def row_keys(split):
  """One bytes key per sample (image + label), to compare splits as multisets."""
  return sorted(x.tobytes() + np.int32(y).tobytes() for x, y in zip(split.images, split.labels))


@pytest.fixture(scope="module")
def digits_ds():
  return data.load_dataset(dataset_cfg(), seed=0)


# ----------------------------------------------------------------------------------------- digits

def test_digits_shapes_ranges(digits_ds):
  ds = digits_ds
  assert ds.info.name == "digits" and ds.info.num_classes == 10 and not ds.info.augment
  assert ds.info.image_shape == (8, 8, 1)
  assert (len(ds.train), len(ds.val), len(ds.test)) == (1078, 269, 450)  # 1797 = 1347 + 450
  for s in (ds.train, ds.val, ds.test):
    chex.assert_shape(s.images, (len(s), 8, 8, 1))
    assert s.images.dtype == np.float32 and s.labels.dtype == np.int32 and s.fine_labels is None
    assert s.images.min() == 0.0 and s.images.max() == 1.0  # 0..16 scaled by 1/16
    assert set(np.unique(s.labels)) == set(range(10))


def test_digits_splits_partition_the_data(digits_ds):
  """train + val + test is exactly the bundled dataset (as a multiset), no sample lost or doubled."""
  ds = digits_ds
  merged = data.Split(np.concatenate([ds.train.images, ds.val.images, ds.test.images]),
                      np.concatenate([ds.train.labels, ds.val.labels, ds.test.labels]))
  assert row_keys(merged) == row_keys(digits.load_all())


def test_digits_determinism(digits_ds):
  same = data.load_dataset(dataset_cfg(), seed=0)
  other = data.load_dataset(dataset_cfg(), seed=1)
  for a, b in ((digits_ds.train, same.train), (digits_ds.val, same.val), (digits_ds.test, same.test)):
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
  # The seed moves the train/val split but never the test split (fixed split_seed).
  np.testing.assert_array_equal(digits_ds.test.images, other.test.images)
  assert row_keys(digits_ds.val) != row_keys(other.val)
  assert row_keys(digits_ds.train) != row_keys(other.train)
  assert (row_keys(data.Split(np.concatenate([digits_ds.train.images, digits_ds.val.images]),
                              np.concatenate([digits_ds.train.labels, digits_ds.val.labels])))
          == row_keys(data.Split(np.concatenate([other.train.images, other.val.images]),
                                 np.concatenate([other.train.labels, other.val.labels]))))
  # A different split_seed moves the test split.
  moved = data.load_dataset(dataset_cfg(split_seed=1), seed=0)
  assert row_keys(moved.test) != row_keys(digits_ds.test)


def test_digits_stratified(digits_ds):
  full = np.bincount(digits.load_all().labels, minlength=10)
  test = np.bincount(digits_ds.test.labels, minlength=10)
  assert np.all(np.abs(test - 0.25 * full) <= 1)
  trainval = full - test
  val = np.bincount(digits_ds.val.labels, minlength=10)
  assert np.all(np.abs(val - 0.2 * trainval) <= 1)


def test_digits_normalisation_constants_match_data(digits_ds):
  images = np.concatenate([digits_ds.train.images, digits_ds.val.images])
  np.testing.assert_allclose(images.mean(axis=(0, 1, 2)), digits.DIGITS_MEAN, atol=1e-3)
  np.testing.assert_allclose(images.std(axis=(0, 1, 2)), digits.DIGITS_STD, atol=1e-3)
  assert data.dataset_info("digits") == digits_ds.info


def test_normalize_reexport():
  x = np.full((2, 3, 3, 1), 0.5, np.float32)
  np.testing.assert_allclose(data.normalize(x, (0.25,), (0.5,)), 0.5)


def test_dataset_config_errors():
  with pytest.raises(ConfigError, match="cifar10, cifar100, cifar20") as e:
    data.load_dataset(dataset_cfg("cifar"), seed=0)
  assert "--config.dataset.name" in str(e.value)
  with pytest.raises(ConfigError, match="svhn_cropped"):
    data.load_dataset(dataset_cfg("svhn"), seed=0)
  with pytest.raises(ConfigError, match="--config.dataset.val_fraction"):
    data.load_dataset(dataset_cfg(val_fraction=1.0), seed=0)
  with pytest.raises(ConfigError, match="--config.dataset.test_fraction"):
    data.load_dataset(dataset_cfg(test_fraction=0.0), seed=0)
  with pytest.raises(ConfigError, match="--config.seed"):
    data.load_dataset(dataset_cfg(), seed=-1)


# ------------------------------------------------------------------------------------ partitions

def _check_partition(ud, key, classes):
  for split, fmask in ((ud.train, ud.forget_train_mask), (ud.val, ud.forget_val_mask),
                       (ud.test, ud.forget_test_mask)):
    assert fmask.dtype == bool and fmask.shape == (len(split),)
  for name in ("train", "val", "test"):
    full, forget, retain = (getattr(ud, name), getattr(ud, f"forget_{name}"),
                            getattr(ud, f"retain_{name}"))
    keys_f, keys_r = getattr(forget, key), getattr(retain, key)
    assert len(forget) + len(retain) == len(full)
    assert len(forget) > 0
    assert set(np.unique(keys_f)) == set(classes)                  # exactly the forget classes
    assert not np.isin(keys_r, classes).any()                        # none of them retained
    assert np.isin(getattr(full, key), classes).sum() == len(forget)


def test_class_partition_several_classes(digits_ds):
  ud = data.make_unlearn_data(digits_ds, forget_cfg("class", (1, 3)), seed=0)
  _check_partition(ud, "labels", (1, 3))
  assert ud.mode == "class" and ud.classes == (1, 3)
  ud1 = data.make_unlearn_data(digits_ds, forget_cfg("class", 7), seed=0)  # a bare int
  _check_partition(ud1, "labels", (7,))


def test_random_partition(digits_ds):
  ud = data.make_unlearn_data(digits_ds, forget_cfg("random", (), 50), seed=0)
  assert len(ud.forget_train) == 50 and len(ud.retain_train) == len(digits_ds.train) - 50
  assert len(ud.forget_val) == 0 and len(ud.forget_test) == 0
  assert len(ud.retain_val) == len(digits_ds.val) and len(ud.retain_test) == len(digits_ds.test)
  assert ud.classes == ()
  again = data.make_unlearn_data(digits_ds, forget_cfg("random", (), 50), seed=0)
  other = data.make_unlearn_data(digits_ds, forget_cfg("random", (), 50), seed=1)
  np.testing.assert_array_equal(ud.forget_train_mask, again.forget_train_mask)
  assert not np.array_equal(ud.forget_train_mask, other.forget_train_mask)


def _common_fine_classes(ds, k):
  """Up to k fine classes present in train, val and test (so every forget view is non-empty)."""
  common = np.intersect1d(np.intersect1d(ds.train.fine_labels, ds.val.fine_labels),
                          ds.test.fine_labels)
  return tuple(int(c) for c in common[:k])


def _synthetic_cifar20(n=400, seed=0):
  rng = np.random.default_rng(seed)
  fine = rng.integers(0, 100, n).astype(np.int32)
  coarse = (fine // 5).astype(np.int32)
  imgs = rng.random((n, 4, 4, 3), dtype=np.float32)
  def split(s):
    return data.Split(imgs[s], coarse[s], fine[s])
  return data.Dataset(tfds_data.info("cifar20"), split(slice(0, 200)), split(slice(200, 300)),
                      split(slice(300, 400)))


def test_subclass_partition_synthetic():
  ds = _synthetic_cifar20()
  classes = _common_fine_classes(ds, 3)
  assert len(classes) == 3
  ud = data.make_unlearn_data(ds, forget_cfg("subclass", classes), seed=0)
  _check_partition(ud, "fine_labels", classes)
  # The classifier's labels stay the super-classes; the super-class itself is still retained.
  assert ud.forget_train.labels.max() < 20
  assert set(ud.forget_train.labels) <= set(ud.retain_train.labels)


# ---------------------------------------------------------------------------------- validation

@pytest.mark.parametrize("name,cfg,fix", [
    ("unknown mode", forget_cfg("forget_all"), "--config.forget.mode=class"),
    ("empty", forget_cfg("class", ()), "--config.forget.classes=3 (0..9 for digits)"),
    ("negative", forget_cfg("class", (-1,)), "--config.forget.classes=3 (0..9 for digits)"),
    ("too large", forget_cfg("class", (10,)), "--config.forget.classes=3 (0..9 for digits)"),
    ("not int", forget_cfg("class", ("a",)), "--config.forget.classes=3"),
    ("duplicates", forget_cfg("class", (2, 2, 5)), "--config.forget.classes=2,5"),
    ("all", forget_cfg("class", tuple(range(10))), "nothing to retain"),
    ("subclass no fine", forget_cfg("subclass", (3,)), "--config.dataset.name=cifar20"),
    ("random zero", forget_cfg("random", (), 0), "--config.forget.num_samples=100"),
    ("random too many", forget_cfg("random", (), 1078), "--config.forget.num_samples below 1078"),
])
def test_validate_forget_digits(name, cfg, fix):
  with pytest.raises(ConfigError) as e:
    data.validate_forget(cfg, data.dataset_info("digits"), num_train=1078)
  assert fix in str(e.value), (name, str(e.value))


@pytest.mark.parametrize("cfg,fix", [
    (forget_cfg("subclass", (100,)), "--config.forget.classes=69 (a fine class 0..99)"),
    (forget_cfg("subclass", ()), "--config.forget.classes=69"),
    (forget_cfg("subclass", tuple(range(100))), "nothing to retain"),
    (forget_cfg("class", (20,)), "--config.forget.classes=3 (0..19 for cifar20)"),
])
def test_validate_forget_cifar20(cfg, fix):
  with pytest.raises(ConfigError) as e:
    data.validate_forget(cfg, data.dataset_info("cifar20"))
  assert fix in str(e.value)


def test_validate_forget_accepts_valid():
  info20 = data.dataset_info("cifar20")
  assert data.validate_forget(forget_cfg("subclass", (69, 51)), info20) == (69, 51)
  assert data.validate_forget(forget_cfg("class", (19,)), info20) == (19,)
  assert data.validate_forget(forget_cfg("class", np.int64(4)), data.dataset_info("digits")) == (4,)
  assert data.validate_forget(forget_cfg("random", (), 10), info20) == ()


def test_make_unlearn_data_validates(digits_ds):
  with pytest.raises(ConfigError, match="num_samples below"):
    data.make_unlearn_data(digits_ds, forget_cfg("random", (), 5000), seed=0)


# ------------------------------------------------------------------------------------ pipeline

def _indexed_split(n=103):
  return data.Split(np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1) * np.ones((1, 2, 2, 1),
                    np.float32), np.arange(n, dtype=np.int32))


def test_batches_deterministic_and_cover_epoch():
  s = _indexed_split()
  a = [b["label"] for b in data.batches(s, 10, seed=3, epoch=2)]
  b = [b["label"] for b in data.batches(s, 10, seed=3, epoch=2)]
  c = [b["label"] for b in data.batches(s, 10, seed=3, epoch=3)]
  d = [b["label"] for b in data.batches(s, 10, seed=4, epoch=2)]
  assert len(a) == 10 == data.num_batches(103, 10, True)
  assert all(len(x) == 10 for x in a)
  np.testing.assert_array_equal(np.concatenate(a), np.concatenate(b))
  assert not np.array_equal(np.concatenate(a), np.concatenate(c))
  assert not np.array_equal(np.concatenate(a), np.concatenate(d))
  assert len(np.unique(np.concatenate(a))) == 100                     # no repeats within an epoch
  full = list(data.batches(s, 10, seed=3, epoch=2, drop_remainder=False))
  assert len(full) == 11 == data.num_batches(103, 10, False) and len(full[-1]["label"]) == 3
  np.testing.assert_array_equal(np.sort(np.concatenate([x["label"] for x in full])), np.arange(103))
  for x in full:  # images travel with their labels
    chex.assert_shape(x["image"], (len(x["label"]), 2, 2, 1))
    np.testing.assert_array_equal(x["image"][:, 0, 0, 0], x["label"])
    assert x["image"].dtype == np.float32 and x["label"].dtype == np.int32
  seq = [x["label"] for x in data.batches(s, 10, seed=3, shuffle=False)]
  np.testing.assert_array_equal(np.concatenate(seq), np.arange(100))


def test_batches_errors():
  s = _indexed_split(20)
  for bad in (0, -4):
    with pytest.raises(ConfigError, match="--config.batch_size"):
      data.batches(s, bad, seed=0)  # raised at the call, not at the first next()
  with pytest.raises(ConfigError, match="lower --config.batch_size"):
    data.batches(s, 32, seed=0)
  with pytest.raises(ConfigError, match="lower --config.batch_size"):
    data.num_batches(20, 32, True)
  (only,) = list(data.batches(s, 32, seed=0, drop_remainder=False))
  assert len(only["label"]) == 20


# ------------------------------------------------------------------------------------- augment

def _candidates(x, pad=4):
  """Every image RandomCrop(padding=pad) + flip can produce from x, keyed by (dy, dx, flip)."""
  h, w, _ = x.shape
  p = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
  out = {}
  for dy in range(2 * pad + 1):
    for dx in range(2 * pad + 1):
      crop = p[dy:dy + h, dx:dx + w]
      out[(dy, dx, False)], out[(dy, dx, True)] = crop, crop[:, ::-1]
  return out


def test_augment_is_crop_and_flip():
  x = np.random.default_rng(0).random((24, 12, 10, 2), dtype=np.float32)  # non-square H x W
  augment = jax.jit(data.augment)
  y = np.asarray(augment(jax.random.key(0), x))
  chex.assert_shape(y, x.shape)
  assert y.dtype == np.float32 and y.min() >= 0.0 and y.max() <= 1.0
  used = []
  for xi, yi in zip(x, y):
    hits = [k for k, c in _candidates(xi).items() if np.array_equal(c, yi)]
    assert hits, "output is not a padded crop (optionally flipped) of its input"
    used.append(hits[0])
  assert {k[2] for k in used} == {False, True}                       # both flips occur
  assert len({k[:2] for k in used}) > 5                              # many crop offsets occur
  assert any(k[:2] != (4, 4) for k in used)                          # and images do change
  np.testing.assert_array_equal(y, np.asarray(augment(jax.random.key(0), x)))  # deterministic
  assert not np.array_equal(y, np.asarray(augment(jax.random.key(1), x)))


def test_augment_cifar_shape_jit():
  x = np.random.default_rng(1).random((4, 32, 32, 3), dtype=np.float32)
  y = jax.jit(data.augment)(jax.random.key(2), x)
  chex.assert_shape(y, (4, 32, 32, 3))
  chex.assert_type(y, np.float32)


# ------------------------------------------------------------------------------------- tfds path

SPEC_NORM = {  # SPEC §1.8
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "cifar20": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "svhn_cropped": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


@pytest.fixture
def batched_mock(monkeypatch):
  """Makes mock_data's `__getitems__` callable, so the batched read path runs; counts its calls.

  tfds 4.9.10's mock sets `__getitems__` as a plain MagicMock attribute (no `self`), so calling it
  raises TypeError; the real array_record source has a working one.
  """
  from tensorflow_datasets.testing import mocking
  calls = []

  def getitems(record_keys, generator, serialized=False):
    assert not serialized
    calls.append(len(record_keys))
    return [generator[k] for k in record_keys]

  monkeypatch.setattr(mocking, "_getitems", getitems)
  monkeypatch.setattr(tfds_data, "_CHUNK", 8)  # several chunks and a partial last one
  return calls


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "cifar20", "svhn_cropped"])
def test_tfds_mock(name, batched_mock):
  n = 30
  with tfds.testing.mock_data(num_examples=n):
    ds = data.load_dataset(dataset_cfg(name), seed=0)
    raw = tfds.data_source(tfds_data.tfds_name(name), split="test")
    raw = [raw[i] for i in range(len(raw))]
  assert batched_mock and max(batched_mock) == 8 and sum(batched_mock) == 2 * n
  info = ds.info
  k = {"cifar10": 10, "cifar100": 100, "cifar20": 20, "svhn_cropped": 10}[name]
  assert info.num_classes == k and info.image_shape == (32, 32, 3)
  assert (info.mean, info.std) == SPEC_NORM[name]
  assert info.augment == name.startswith("cifar")
  assert (len(ds.train), len(ds.val), len(ds.test)) == (24, 6, n)
  for s in (ds.train, ds.val, ds.test):
    chex.assert_shape(s.images, (len(s), 32, 32, 3))
    assert s.images.dtype == np.float32 and 0.0 <= s.images.min() and s.images.max() <= 1.0
    assert s.labels.dtype == np.int32 and 0 <= s.labels.min() and s.labels.max() < k
    assert (s.fine_labels is not None) == (name == "cifar20")
  # The test split is read in order: compare with the raw records.
  label_key = "coarse_label" if name == "cifar20" else "label"
  np.testing.assert_array_equal(ds.test.labels, [r[label_key] for r in raw])
  np.testing.assert_array_equal(ds.test.images, np.stack([r["image"] for r in raw]) / np.float32(255))
  if name == "cifar20":
    np.testing.assert_array_equal(ds.test.fine_labels, [r["label"] for r in raw])
    assert info.num_fine_classes == 100


def test_tfds_mock_unbatched_fallback_matches():
  """Without the fixture, mock_data's broken `__getitems__` makes us read record by record."""
  with tfds.testing.mock_data(num_examples=20):
    ds = data.load_dataset(dataset_cfg("cifar10"), seed=0)
    raw = tfds.data_source("cifar10", split="test")
    raw_images = np.stack([raw[i]["image"] for i in range(len(raw))])
  np.testing.assert_array_equal(ds.test.images, raw_images / np.float32(255))


def test_subclass_partition_on_mock_cifar20():
  with tfds.testing.mock_data(num_examples=60):
    ds = data.load_dataset(dataset_cfg("cifar20"), seed=0)
  classes = _common_fine_classes(ds, 2)
  assert classes, "mock data too small for this test"
  ud = data.make_unlearn_data(ds, forget_cfg("subclass", classes), seed=0)
  _check_partition(ud, "fine_labels", classes)
  assert ud.forget_train.labels.max() < 20


def test_unprepared_dataset_raises_data_error(tmp_path, monkeypatch):
  def no_network(*args, **kwargs):
    raise AssertionError("the data loader tried to open a network connection")
  monkeypatch.setattr(socket.socket, "connect", no_network)
  with pytest.raises(DataError) as e:
    data.load_dataset(dataset_cfg("cifar20", data_dir=str(tmp_path)), seed=0)
  msg = str(e.value)
  assert "\n" not in msg
  assert f'pip install -e ".[prepare]" && python -m launch.prepare_data --dataset=cifar20 ' \
         f"--data_dir={tmp_path}" in msg
  assert "--config.dataset.download=True" in msg
  assert list(tmp_path.iterdir()) == []                              # nothing downloaded


def test_prepare_data_without_tensorflow(monkeypatch, capsys):
  from launch import prepare_data
  monkeypatch.setattr(prepare_data, "have_tensorflow", lambda: False)
  assert prepare_data.prepare("cifar10", "/nonexistent") == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and 'pip install -e ".[prepare]"' in err
  assert prepare_data.prepare("digits") == 0
  assert prepare_data.prepare("cifar") == 2
  assert "cifar10, cifar100, cifar20" in capsys.readouterr().err
