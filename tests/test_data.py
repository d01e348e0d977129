import os
import socket

import numpy as np
import pytest
import torch

from common.data import datasets as data_mod
from common.data.datasets import dataset_names, load_dataset
from common.data.partition import (
    _repair_single_class,
    label_counts,
    longtail_indices,
    mimic2_layout,
    pad_shards,
    parse_scheme,
    partition,
    sample_batches,
)
from common.errors import ConfigError


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def covers_once(shards, n):
    allidx = torch.cat(shards)
    return len(allidx) == n and torch.equal(torch.sort(allidx).values, torch.arange(n))


# ------------------------------------------------------------------------------- datasets

def test_registry_and_unknown_name():
    assert {"digits", "fashionmnist", "mnist", "cifar10", "cifar100"} <= set(dataset_names())
    with pytest.raises(ConfigError, match="choose one of"):
        load_dataset("imagenet")


def test_digits(digits):
    d = digits
    assert d.name == "digits" and d.num_classes == 10 and d.input_shape == (1, 8, 8)
    assert d.x_train.shape == (1438, 1, 8, 8) and d.x_test.shape == (359, 1, 8, 8)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert set(d.y_train.tolist()) == set(range(10)) == set(d.y_test.tolist())
    assert abs(float(d.x_train.mean())) < 1e-4 and abs(float(d.x_train.std()) - 1) < 1e-3
    assert load_dataset("digits") is d  # cached
    # deterministic split, independent of the cache
    fresh = data_mod.DATASETS["digits"](None)
    assert torch.equal(fresh.x_train, d.x_train) and torch.equal(fresh.y_test, d.y_test)


def test_digits_file_read_equals_sklearn_load_digits(monkeypatch):
    from sklearn.datasets import load_digits

    ref = load_digits()
    images, target = data_mod.digits_arrays()
    assert images.shape == (1797, 8, 8) and np.array_equal(images, ref.images)
    assert np.array_equal(target, ref.target)
    # without the shipped file (or sklearn's layout changing) it falls back to load_digits
    monkeypatch.setattr(data_mod.os.path, "isfile", lambda p: False)
    images, target = data_mod.digits_arrays()
    assert np.array_equal(images, ref.images) and np.array_equal(target, ref.target)


@pytest.mark.skipif(not os.path.isdir(data_mod.FASHION_MNIST_SYSTEM_DIR),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_fashionmnist_system_copy():
    d = load_dataset("fashionmnist")
    assert d.x_train.shape == (60000, 1, 28, 28) and d.x_test.shape == (10000, 1, 28, 28)
    assert d.input_shape == (1, 28, 28) and d.num_classes == 10
    assert sorted(d.y_train.unique().tolist()) == list(range(10))
    assert sorted(d.y_test.unique().tolist()) == list(range(10))
    assert abs(float(d.x_train[:5000].mean())) < 0.05


def test_idx_reader_from_data_dir(tmp_path):
    import gzip

    import numpy as np

    def write(name, arr, magic):
        header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
        with gzip.open(tmp_path / "FashionMNIST" / "raw" / (name + ".gz"), "wb") as fh:
            fh.write(header + arr.astype(np.uint8).tobytes())

    (tmp_path / "FashionMNIST" / "raw").mkdir(parents=True)
    rng = np.random.default_rng(0)
    write("train-images-idx3-ubyte", rng.integers(0, 256, (20, 28, 28)), 3)
    write("train-labels-idx1-ubyte", np.arange(20) % 10, 1)
    write("t10k-images-idx3-ubyte", rng.integers(0, 256, (10, 28, 28)), 3)
    write("t10k-labels-idx1-ubyte", np.arange(10), 1)
    d = load_dataset("fashion-mnist", str(tmp_path))
    assert d.x_train.shape == (20, 1, 28, 28) and d.y_test.tolist() == list(range(10))


def _no_network(*args, **kwargs):
    raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: <urlopen error network unreachable>")


def _never_called(*args, **kwargs):
    raise AssertionError("a download was attempted although the host is unreachable")


def test_missing_fashionmnist_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(data_mod, "FASHION_MNIST_SYSTEM_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError) as err:
        load_dataset("fashionmnist", str(tmp_path / "empty"))
    msg = str(err.value)
    assert "--data-dir" in msg and "dataset-fashion-mnist" in msg and "\n" not in msg


def test_missing_mnist_no_network(tmp_path, monkeypatch):
    """Reachable host but the download fails: the how-to, and the folders it made are gone."""
    import torchvision

    def fails_after_making_folders(root, **kw):
        os.makedirs(os.path.join(root, "MNIST", "raw"), exist_ok=True)
        _no_network(root, **kw)

    monkeypatch.setattr(data_mod, "CACHE_DIR", str(tmp_path / "cache" / "data"))
    monkeypatch.setattr(data_mod, "_unreachable", lambda host: None)
    monkeypatch.setattr(torchvision.datasets, "MNIST", fails_after_making_folders)
    (tmp_path / "empty").mkdir()
    for data_dir in (None, str(tmp_path / "empty")):
        data_mod.clear_cache()
        with pytest.raises(ConfigError) as err:
            load_dataset("mnist", data_dir)
        assert "--data-dir" in str(err.value) and "no internet" in str(err.value)
    assert not (tmp_path / "cache").exists() and not list((tmp_path / "empty").iterdir())


def test_offline_fails_at_once_and_leaves_nothing(tmp_path, monkeypatch):
    """No route to the download host: one line at once, torchvision never called."""
    import torchvision

    def unreachable(address, timeout=None):
        raise OSError("Name or service not known")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(torchvision.datasets, "MNIST", _never_called)
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", _never_called)
    monkeypatch.setattr(data_mod, "CACHE_DIR", str(tmp_path / "cache"))
    for name, what in (("mnist", "train-images-idx3-ubyte"), ("cifar10", "cifar-10-batches-py")):
        data_mod.clear_cache()
        with pytest.raises(ConfigError) as err:
            load_dataset(name, None)
        msg = str(err.value)
        assert "cannot download it (no internet?" in msg and what in msg and "\n" not in msg
    assert not (tmp_path / "cache").exists()


def test_missing_cifar_no_network(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setattr(data_mod, "_unreachable", lambda host: None)
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", _no_network)
    with pytest.raises(ConfigError, match="--data-dir DIR containing cifar-10-batches-py"):
        load_dataset("cifar10", str(tmp_path))
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------- partitions

def test_parse_scheme():
    assert parse_scheme("iid") == ("iid", None)
    assert parse_scheme("noniid") == ("noniid", None)
    assert parse_scheme("dirichlet:0.5") == ("dirichlet", 0.5)
    assert parse_scheme("longtail") == ("longtail", None)
    assert parse_scheme("shards:2") == ("shards", 2) and parse_scheme("SHARDS:10") == ("shards", 10)
    for bad in ("dirichlet:abc", "dirichlet:-1", "dirichlet", "sorted", "iid:3", "shards",
                "shards:0", "shards:-2", "shards:1.5", "shards:two"):
        with pytest.raises(ConfigError, match=r"dirichlet:ALPHA.*shards:K"):
            parse_scheme(bad)


def test_iid_sizes(digits):
    y = digits.y_train
    shards = partition(y, 7, "iid", gen())
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1 and covers_once(shards, len(y))
    assert all(s.dtype == torch.int64 for s in shards)


def test_noniid_is_skewed(digits):
    y = digits.y_train
    non = partition(y, 10, "noniid", gen())
    iid = partition(y, 10, "iid", gen())
    assert covers_once(non, len(y))
    sizes = [len(s) for s in non]
    assert max(sizes) - min(sizes) <= 1
    classes_non = (label_counts(y, non, 10) > 0).sum(1)
    classes_iid = (label_counts(y, iid, 10) > 0).sum(1)
    assert int(classes_non.max()) <= 3
    assert classes_non.float().mean() < 0.35 * classes_iid.float().mean()


def test_dirichlet_alpha_controls_skew(digits):
    y = digits.y_train

    def skew(alpha):
        shards = partition(y, 10, f"dirichlet:{alpha}", gen(3))
        assert covers_once(shards, len(y)) and min(len(s) for s in shards) >= 1
        c = label_counts(y, shards, 10).float()
        p = c / c.sum(1, keepdim=True)
        return float(p.max(1).values.mean())  # mean share of each shard's dominant class

    assert skew(0.05) > 0.5 and skew(1000.0) < 0.25


def test_dirichlet_no_empty_shard():
    y = torch.arange(60) % 3
    for seed in range(5):
        shards = partition(y, 40, "dirichlet:0.01", gen(seed))
        assert min(len(s) for s in shards) >= 1 and covers_once(shards, 60)


def test_shards_by_hand():
    # 12 samples, 4 per class: shards:2 over 3 workers cuts 6 shards of 2 samples, two per class
    # ({0}, {0}, {1}, {1}, {2}, {2}); a random draw pairs two shards of one class with
    # probability 7/15, and the repair must leave every worker with exactly two classes, 2 + 2.
    y = torch.tensor([2, 0, 1, 0, 2, 1, 0, 2, 1, 0, 1, 2])
    for seed in range(30):
        shards = partition(y, 3, "shards:2", gen(seed))
        assert covers_once(shards, 12) and [len(s) for s in shards] == [4, 4, 4]
        counts = label_counts(y, shards, 3)
        assert counts.sum(0).tolist() == [4, 4, 4]
        for row in counts.tolist():
            assert sorted(row) == [0, 2, 2]
    # shards:1 is one random shard (one class here) per worker
    one = partition(y, 6, "shards:1", gen(0))
    assert covers_once(one, 12) and (label_counts(y, one, 3) > 0).sum(1).tolist() == [1] * 6


def test_shards_repair_swaps_a_single_class_worker():
    classes = [frozenset({c}) for c in (0, 0, 1, 1, 2, 2)]
    owned = [[0, 1], [2, 4], [3, 5]]  # worker 0 holds class 0 twice
    _repair_single_class(owned, classes, gen(0))
    assert sorted(t for own in owned for t in own) == list(range(6))
    for own in owned:
        assert len({c for t in own for c in classes[t]}) == 2
    # Two single-class workers of different classes fix each other.
    owned = [[0, 1], [2, 3], [4, 5]]
    _repair_single_class(owned, classes, gen(1))
    assert all(len({c for t in own for c in classes[t]}) == 2 for own in owned)


def test_shards_when_one_class_dominates():
    # 10 samples of class 0, 2 of class 1: 6 shards of 2, five of them class 0 only, more than
    # (K - 1) n = 3, so two of the three workers must hold class 0 alone; the split stays valid.
    y = torch.tensor([0] * 10 + [1] * 2)
    for seed in range(10):
        shards = partition(y, 3, "shards:2", gen(seed))
        assert covers_once(shards, 12)
        assert sorted((label_counts(y, shards, 2) > 0).sum(1).tolist()) == [1, 1, 2]


def test_shards_fashionmnist_like_every_client_two_classes():
    # Fashion-MNIST's training labels: 60000 samples, 6000 per class, in random order; n = 20,
    # shards:2 gives 40 shards of 1500 samples, each of one class; every client gets 2 classes.
    y = torch.arange(10).repeat_interleave(6000)[torch.randperm(60000, generator=gen(5))]
    for seed in range(10):
        shards = partition(y, 20, "shards:2", gen(seed))
        assert covers_once(shards, 60000) and all(len(s) == 3000 for s in shards)
        counts = label_counts(y, shards, 10)
        assert counts.sum(0).tolist() == [6000] * 10
        assert ((counts > 0).sum(1) == 2).all()
        assert bool(((counts == 0) | (counts == 1500) | (counts == 3000)).all())
        assert int(counts.max()) == 1500  # never two shards of the same class
    assert not all(torch.equal(a, b) for a, b in zip(partition(y, 20, "shards:2", gen(0)),
                                                     partition(y, 20, "shards:2", gen(1))))


def test_shards_uneven_digits_at_least_two_classes(digits):
    y = digits.y_train  # 1438 samples, unbalanced classes: some shards straddle two classes
    for seed in range(5):
        shards = partition(y, 20, "shards:2", gen(seed))
        assert covers_once(shards, len(y))
        assert int((label_counts(y, shards, 10) > 0).sum(1).min()) >= 2


def test_shards_too_many():
    with pytest.raises(ConfigError, match="shards:2"):
        partition(torch.arange(5) % 2, 3, "shards:2", gen())


def test_longtail_fractions():
    y = torch.arange(10).repeat_interleave(1000)
    keep = longtail_indices(y, gen())
    counts = torch.bincount(y[keep], minlength=10)
    for c in range(10):
        assert int(counts[c]) == max(1, round(1000 * 0.5 ** c))
    assert len(torch.unique(keep)) == len(keep)
    assert torch.equal(keep, longtail_indices(y, gen()))
    shards = partition(y[keep], 4, "longtail", gen())
    assert covers_once(shards, len(keep))
    # longtail:noniid: the kept samples sorted by label, as noniid (the paper's Table 1)
    assert parse_scheme("longtail:noniid") == ("longtail", "noniid")
    assert parse_scheme("longtail:iid") == ("longtail", "iid")
    sorted_shards = partition(y[keep], 4, "longtail:noniid", gen())
    expected = partition(y[keep], 4, "noniid", gen())
    assert all(torch.equal(a, b) for a, b in zip(sorted_shards, expected))
    assert len(torch.unique(y[keep][sorted_shards[0]])) == 1  # class 0 alone fills the first block
    with pytest.raises(ConfigError, match="longtail:noniid"):
        parse_scheme("longtail:sorted")


def test_mimic2_layout(digits):
    y = digits.y_train
    shards, a_idx = mimic2_layout(y, 5, 10, gen())
    assert len(shards) == 5
    assert bool((y[a_idx] < 5).all()) and len(a_idx) == int((y < 5).sum())
    for s in shards[:3]:
        assert bool((y[s] < 5).all())
    for s in shards[3:]:
        assert bool((y[s] >= 5).all())
    assert covers_once(shards, len(y))
    assert torch.equal(torch.sort(torch.cat(shards[:3])).values, a_idx)


def test_partitions_deterministic(digits):
    y = digits.y_train
    for scheme in ("iid", "noniid", "dirichlet:0.3", "shards:2"):
        a = partition(y, 6, scheme, gen(11))
        b = partition(y, 6, scheme, gen(11))
        c = partition(y, 6, scheme, gen(12))
        assert all(torch.equal(s, t) for s, t in zip(a, b))
        assert not all(torch.equal(s, t) for s, t in zip(a, c))


def test_too_many_shards():
    with pytest.raises(ConfigError):
        partition(torch.zeros(3, dtype=torch.long), 4, "iid", gen())


# ------------------------------------------------------------------------------- sampling

def test_pad_shards():
    shards = [torch.tensor([5, 6, 7]), torch.tensor([1]), torch.tensor([9, 8])]
    table, lengths = pad_shards(shards)
    assert lengths.tolist() == [3, 1, 2]
    assert table.tolist() == [[5, 6, 7], [1, 1, 1], [9, 8, 9]]


def test_sample_batches_matches_loop_and_grouping(digits):
    shards = partition(digits.y_train, 9, "dirichlet:0.5", gen(1))
    batch = 16
    u = torch.rand(9, batch, generator=gen(2))
    u[0, 0] = 1.0 - 2.0 ** -24  # the largest float32 below 1 must stay in range
    table, lengths = pad_shards(shards)
    out = sample_batches(table, lengths, batch, u)
    assert out.shape == (9, batch) and out.dtype == torch.int64
    for i, s in enumerate(shards):
        expect = torch.stack([s[int(float(v) * len(s))] if int(float(v) * len(s)) < len(s)
                              else s[-1] for v in u[i].double()])
        assert torch.equal(out[i], expect)
        assert bool(torch.isin(out[i], s).all())
    # grouping workers differently gives the same batches
    for groups in ([[0, 1, 2, 3], [4, 5, 6, 7, 8]], [[i] for i in range(9)], [[8, 3], [0, 1, 2, 4, 5, 6, 7]]):
        for g in groups:
            t, lengths = pad_shards([shards[i] for i in g])
            assert torch.equal(sample_batches(t, lengths, batch, u[g]), out[g])
