"""Datasets: loading, normalisation and the dataset registry.

Every loader returns a :class:`Dataset` with float32 inputs already normalised and int64 labels.
Images are ``N x C x H x W``; the models flatten where they need to.

Datasets:

- ``digits`` (default): scikit-learn's 8x8 handwritten digits (ships with the package, no download).
  Pixels are scaled to [0, 1] (``/16``), then standardised with the *training* set's global mean and
  std. The 80/20 split is stratified per class with a fixed seed, so it is identical on every
  machine and in every process. Shape ``(N, 1, 8, 8)``.
- ``fashionmnist``: the IDX files read directly (gzip + numpy). Searched in ``data_dir``,
  ``data_dir/fashion-mnist``, ``data_dir/FashionMNIST/raw``, then the Debian package location
  ``/usr/share/datasets/fashion-mnist``. Normalised with mean 0.2860, std 0.3530.
- ``mnist``: same IDX reader (``data_dir``, ``data_dir/MNIST/raw``, ``data_dir/mnist``, then the
  cache dir); otherwise torchvision downloads it into ``data_dir`` or the cache dir
  (``$BYZROBUST_DATA`` or ``~/.cache/byzrobust/data``). Normalised with 0.1307, 0.3081.
- ``cifar10`` / ``cifar100``: torchvision, downloading only when the files are not already present.
  Normalised per channel with the usual constants. Shape ``(N, 3, 32, 32)``.

Missing data raises :class:`ConfigError` with a one-line message saying how to get it.

Loaded datasets are cached in-process per ``(name, data_dir)``: callers share the returned tensors
and must not modify them in place.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import importlib.util
import os
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from common.errors import ConfigError, one_line, unknown_name, warn

#: Where the Debian package ``dataset-fashion-mnist`` installs the IDX files.
FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
#: Download / cache directory used when no ``data_dir`` is given.
CACHE_DIR = os.environ.get("BYZROBUST_DATA") or os.path.join(
    os.path.expanduser("~"), ".cache", "byzrobust", "data")

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2

FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


@dataclass
class Dataset:
    """A train/test split, normalised, as tensors."""

    name: str
    x_train: torch.Tensor  # float32, N x C x H x W
    y_train: torch.Tensor  # int64, N
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple

    def __repr__(self) -> str:  # tensors would flood the screen
        return (f"Dataset({self.name!r}, train={tuple(self.x_train.shape)}, "
                f"test={tuple(self.x_test.shape)}, num_classes={self.num_classes})")


# --------------------------------------------------------------------------------------------
# IDX reader (MNIST / Fashion-MNIST)

_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array (unsigned bytes only)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ConfigError(f"{path} is not an IDX file (bad magic number)")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != 0x08:
        raise ConfigError(f"{path}: unsupported IDX element type 0x{dtype_code:02x} (need ubyte)")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    count = int(np.prod(dims)) if dims else 0
    if len(raw) - offset < count:
        raise ConfigError(f"{path} is truncated ({len(raw) - offset} of {count} bytes)")
    return np.frombuffer(raw, dtype=np.uint8, count=count, offset=offset).reshape(dims)


def _find_idx_file(directory: str, stem: str) -> str | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


def _find_idx_dir(candidates) -> dict | None:
    """First directory holding all four IDX files -> {key: path}, or None."""
    for directory in candidates:
        if not directory or not os.path.isdir(directory):
            continue
        paths = {key: _find_idx_file(directory, stem) for key, stem in _IDX_FILES.items()}
        if all(paths.values()):
            return paths
    return None


def _idx_dataset(name: str, paths: dict, mean: float, std: float) -> Dataset:
    def images(key):
        arr = read_idx(paths[key])
        x = torch.from_numpy(arr.astype(np.float32, copy=True)).unsqueeze(1)
        return x.div_(255.0).sub_(mean).div_(std)

    def labels(key):
        return torch.from_numpy(read_idx(paths[key]).astype(np.int64))

    x_train, y_train = images("train_images"), labels("train_labels")
    x_test, y_test = images("test_images"), labels("test_labels")
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise ConfigError(f"{name}: image and label IDX files disagree in length under "
                          f"{os.path.dirname(paths['train_images'])}")
    return Dataset(name, x_train, y_train, x_test, y_test, 10, tuple(x_train.shape[1:]))


# --------------------------------------------------------------------------------------------
# loaders

def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: (1797, 8, 8) images with values 0..16 and (1797,) labels.

    Read straight from the CSV file scikit-learn ships (``sklearn/datasets/data/digits.csv.gz``,
    what ``load_digits`` reads): importing ``sklearn.datasets`` costs 0.8 s at every process
    start (it pulls in scipy.stats), reading the file 20 ms. Falls back to ``load_digits``
    if the file is not where it is expected.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.origin is not None:
        path = os.path.join(os.path.dirname(spec.origin), "datasets", "data", "digits.csv.gz")
        if os.path.isfile(path):
            table = np.loadtxt(path, delimiter=",")
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits  # noqa: PLC0415 - a fallback; the import costs ~1 s

    bunch = load_digits()
    return bunch.images, bunch.target


def _load_digits(data_dir: str | None) -> Dataset:
    if data_dir:
        warn(f"--data-dir {data_dir} is not used: digits is embedded (scikit-learn's copy)")
    images, target = digits_arrays()
    x = images.astype(np.float32) / 16.0  # (1797, 8, 8) in [0, 1]
    y = target.astype(np.int64)
    rng = np.random.default_rng(DIGITS_SPLIT_SEED)
    train_idx, test_idx = [], []
    for c in range(10):  # stratified: 20% of every class goes to the test set
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        n_test = int(round(DIGITS_TEST_FRACTION * len(idx)))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    train_idx = np.sort(np.concatenate(train_idx))
    test_idx = np.sort(np.concatenate(test_idx))
    mean = float(x[train_idx].mean())
    std = float(x[train_idx].std())

    def prep(idx):
        return torch.from_numpy((x[idx] - mean) / std).float().unsqueeze(1).contiguous()

    return Dataset("digits", prep(train_idx), torch.from_numpy(y[train_idx]),
                   prep(test_idx), torch.from_numpy(y[test_idx]), 10, (1, 8, 8))


def fashionmnist_installed() -> bool:
    """True if the Debian package's Fashion-MNIST IDX files are present (the experiment grids'
    default size needs them)."""
    return _find_idx_dir([FASHION_MNIST_SYSTEM_DIR]) is not None


def _load_fashionmnist(data_dir: str | None) -> Dataset:
    candidates = []
    if data_dir:
        candidates += [data_dir, os.path.join(data_dir, "fashion-mnist"),
                       os.path.join(data_dir, "FashionMNIST", "raw")]
    candidates.append(FASHION_MNIST_SYSTEM_DIR)
    paths = _find_idx_dir(candidates)
    if paths is not None and data_dir and paths["train_images"].startswith(FASHION_MNIST_SYSTEM_DIR):
        warn(f"--data-dir {data_dir} holds no fashionmnist IDX files; using those in "
             f"{FASHION_MNIST_SYSTEM_DIR} instead")
    if paths is None:
        where = f"{data_dir} or {FASHION_MNIST_SYSTEM_DIR}" if data_dir else FASHION_MNIST_SYSTEM_DIR
        raise ConfigError(
            f"fashionmnist: no IDX files found under {where}; install the Debian package "
            f"dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or pass --data-dir DIR "
            f"containing train-images-idx3-ubyte[.gz]")
    return _idx_dataset("fashionmnist", paths, FASHION_MNIST_MEAN, FASHION_MNIST_STD)


# Where torchvision downloads each dataset from (its first mirror), for the offline check.
DOWNLOAD_HOSTS = {"mnist": "ossci-datasets.s3.amazonaws.com", "cifar10": "www.cs.toronto.edu",
                  "cifar100": "www.cs.toronto.edu"}


def _unreachable(host: str, timeout: float = 3.0) -> str | None:
    """Why ``host`` cannot be reached on port 443 within ``timeout`` s (None: it can)."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return None
    except OSError as e:
        return one_line(e, 120)


@contextlib.contextmanager
def _download_or_explain(name: str, root: str, what: str) -> Iterator[None]:
    """Download ``name`` into ``root`` inside the block: fail at once with the how-to when its
    host is unreachable, and leave no folder behind that the failed attempt created."""
    how = f"download it elsewhere and pass --data-dir DIR containing {what}"
    offline = _unreachable(DOWNLOAD_HOSTS[name])
    if offline:
        raise ConfigError(f"{name} is not under {root} and this machine cannot download it "
                          f"(no internet? {DOWNLOAD_HOSTS[name]}: {offline}); {how}")
    top = os.path.abspath(root)  # the first folder the download will create, if any
    while not os.path.exists(os.path.dirname(top)) and os.path.dirname(top) != top:
        top = os.path.dirname(top)
    created = not os.path.exists(top)
    before = set() if created else set(os.listdir(top))
    try:
        yield
    except Exception as exc:  # no internet after all, unwritable dir, ... -> actionable message
        if created:
            shutil.rmtree(top, ignore_errors=True)
        else:
            for entry in set(os.listdir(top)) - before:
                shutil.rmtree(os.path.join(top, entry), ignore_errors=True)
        raise ConfigError(f"could not download {name} into {root} (no internet?): "
                          f"{one_line(exc, 200)}; {how}") from exc


def _load_mnist(data_dir: str | None) -> Dataset:
    root = data_dir or CACHE_DIR
    candidates = []
    if data_dir:
        candidates += [data_dir, os.path.join(data_dir, "mnist")]
    candidates += [os.path.join(root, "MNIST", "raw")]
    paths = _find_idx_dir(candidates)
    if paths is not None:
        return _idx_dataset("mnist", paths, MNIST_MEAN, MNIST_STD)
    with _download_or_explain("mnist", root, "train-images-idx3-ubyte[.gz] (or MNIST/raw/)"):
        import torchvision  # noqa: PLC0415 - only to download; importing it costs ~0.5 s

        train = torchvision.datasets.MNIST(root, train=True, download=True)
        test = torchvision.datasets.MNIST(root, train=False, download=True)

    def images(ds):
        x = ds.data.to(torch.float32).unsqueeze(1)
        return x.div_(255.0).sub_(MNIST_MEAN).div_(MNIST_STD)

    return Dataset("mnist", images(train), train.targets.to(torch.int64), images(test),
                   test.targets.to(torch.int64), 10, (1, 28, 28))


def _cifar_loader(name: str, cls_name: str, folder: str, num_classes: int, mean, std):
    def load(data_dir: str | None) -> Dataset:
        root = data_dir or CACHE_DIR
        # accept --data-dir pointing at the extracted folder itself
        if os.path.basename(os.path.normpath(root)) == folder:
            root = os.path.dirname(os.path.normpath(root))
        present = os.path.isdir(os.path.join(root, folder))
        import torchvision  # noqa: PLC0415 - only for CIFAR; importing it costs ~0.5 s

        cls = getattr(torchvision.datasets, cls_name)
        if present:
            try:
                train, test = cls(root, train=True), cls(root, train=False)
            except Exception as exc:
                raise ConfigError(f"{name}: could not read {os.path.join(root, folder)} "
                                  f"({one_line(exc, 200)}); delete it or pass --data-dir DIR "
                                  f"containing an intact {folder}") from exc
        else:
            with _download_or_explain(name, root, folder):
                train = cls(root, train=True, download=True)
                test = cls(root, train=False, download=True)
        m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

        def images(ds):
            x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).float()
            return x.div_(255.0).sub_(m).div_(s).contiguous()

        return Dataset(name, images(train), torch.as_tensor(train.targets, dtype=torch.int64),
                       images(test), torch.as_tensor(test.targets, dtype=torch.int64),
                       num_classes, (3, 32, 32))

    return load


#: name -> loader(data_dir) -> Dataset
DATASETS: dict[str, Callable[[str | None], Dataset]] = {
    "digits": _load_digits,
    "fashionmnist": _load_fashionmnist,
    "mnist": _load_mnist,
    "cifar10": _cifar_loader("cifar10", "CIFAR10", "cifar-10-batches-py", 10,
                             CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": _cifar_loader("cifar100", "CIFAR100", "cifar-100-python", 100,
                              CIFAR100_MEAN, CIFAR100_STD),
}

_ALIASES = {"fashion-mnist": "fashionmnist", "fashion_mnist": "fashionmnist",
            "fmnist": "fashionmnist", "cifar-10": "cifar10", "cifar-100": "cifar100"}

DEFAULT_DATASET = "digits"


def register_dataset(name: str, loader: Callable[[str | None], Dataset]) -> None:
    """Register ``loader(data_dir) -> Dataset`` as ``--dataset name`` (plugins). The loader
    returns normalised float32 inputs and int64 labels, identically in every process, and
    raises ConfigError with a how-to when its data is missing."""
    key = str(name).strip().lower()
    if key in DATASETS and DATASETS[key] is not loader:
        raise ValueError(f"dataset '{key}' is already registered")
    DATASETS[key] = loader


def dataset_names() -> list[str]:
    """Names accepted by :func:`load_dataset` (aliases such as ``fashion-mnist`` also work)."""
    return list(DATASETS)


def canonical_name(name: str) -> str:
    """Normalise a dataset name (case, aliases); raise ConfigError listing choices if unknown."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise unknown_name("dataset", name, DATASETS)
    return key


def load_dataset(name: str = DEFAULT_DATASET, data_dir: str | None = None) -> Dataset:
    """Load a dataset by name (cached in-process per ``(name, data_dir)``; do not mutate it)."""
    key = canonical_name(name)
    if data_dir is not None:
        data_dir = os.path.abspath(os.path.expanduser(str(data_dir)))
    return _load_cached(key, data_dir)


@functools.lru_cache(maxsize=8)
def _load_cached(name: str, data_dir: str | None) -> Dataset:
    return DATASETS[name](data_dir)


def clear_cache() -> None:
    """Forget every cached dataset (frees memory; tests use it after monkeypatching paths)."""
    _load_cached.cache_clear()
