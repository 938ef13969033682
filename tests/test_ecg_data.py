"""ECG5000 loading, checksums, tslearn parity and the two split protocols."""
import gzip
import shutil

import numpy as np
import pytest

from ecgkern.ecg import data as ecgdata
from ecgkern.ecg.data import CLASS_TOTALS, DataIntegrityError, load_ecg5000, make_split, read_bundled_bytes, task_labels


@pytest.fixture(scope="module")
def ecg():
    return load_ecg5000()


def test_bundled_counts_and_shapes(ecg):
    assert ecg.X_train.shape == (500, 140, 1) and ecg.X_test.shape == (4500, 140, 1)
    counts = np.bincount(np.concatenate([ecg.y_train, ecg.y_test]), minlength=6)[1:]
    assert tuple(counts) == CLASS_TOTALS == (2919, 1767, 96, 194, 24)
    assert np.isfinite(ecg.X_train).all() and np.isfinite(ecg.X_test).all()


def test_pooled_split_is_the_notebooks(ecg):
    s = make_split(ecg, "pooled", "binary")
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (3000, 1000, 1000)
    assert tuple(np.bincount(s.y_train)) == (1751, 1249)  # the notebook's printed 2-class train counts
    # stratified: each part keeps the pooled abnormal fraction
    for y in (s.y_train, s.y_val, s.y_test):
        assert abs(y.mean() - 2081 / 5000) < 0.002
    m = make_split(ecg, "pooled", "multiclass")
    assert m.num_classes == 5 and set(np.unique(m.y_test)) == set(range(5))


def test_ucr_split_takes_validation_from_train_only(ecg):
    s = make_split(ecg, "ucr", "multiclass")
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (400, 100, 4500)
    np.testing.assert_array_equal(s.X_test, ecg.X_test)  # the official test part, untouched
    train_rows = {r.tobytes() for r in ecg.X_train}
    assert all(r.tobytes() in train_rows for r in np.concatenate([s.X_train, s.X_val]))
    assert tuple(np.bincount(np.concatenate([s.y_train, s.y_val]), minlength=5)) == tuple(np.bincount(ecg.y_train)[1:])


def test_task_labels():
    y = np.array([1, 2, 3, 4, 5, 1])
    assert task_labels(y, "binary").tolist() == [0, 1, 1, 1, 1, 0]
    assert task_labels(y, "multiclass").tolist() == [0, 1, 2, 3, 4, 0]


@pytest.mark.parametrize("call, word", [
    (lambda d: make_split(d, "kfold", "binary"), "kfold"),
    (lambda d: make_split(d, "pooled", "3class"), "3class"),
])
def test_unknown_split_or_task(ecg, call, word):
    with pytest.raises(ValueError, match=word):
        call(ecg)


def _copy_bundled(tmp_path, monkeypatch):
    src = ecgdata._bundled_dir()
    for name in ("ECG5000_TRAIN.tsv.gz", "ECG5000_TEST.tsv.gz", "ECG5000.sha256"):
        shutil.copyfile(src / name, tmp_path / name)
    monkeypatch.setattr(ecgdata, "_bundled_dir", lambda: tmp_path)
    return tmp_path


def test_tampered_file_is_refused(tmp_path, monkeypatch):
    d = _copy_bundled(tmp_path, monkeypatch)
    raw = bytearray(gzip.decompress((d / "ECG5000_TRAIN.tsv.gz").read_bytes()))
    raw[100:101] = b"9" if raw[100:101] != b"9" else b"8"  # one digit changed: still parses, wrong data
    (d / "ECG5000_TRAIN.tsv.gz").write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataIntegrityError, match="checksum"):
        load_ecg5000()


def test_truncated_file_is_refused(tmp_path, monkeypatch):
    d = _copy_bundled(tmp_path, monkeypatch)
    path = d / "ECG5000_TEST.tsv.gz"
    path.write_bytes(path.read_bytes()[:50_000])
    with pytest.raises(DataIntegrityError, match="corrupt or truncated"):
        load_ecg5000()
    # truncated at a line boundary but validly gzipped: the checksum catches it
    raw = gzip.decompress((ecgdata.resources.files("ecgkern") / "data" / "ECG5000_TEST.tsv.gz").read_bytes())
    path.write_bytes(gzip.compress(raw[: raw.index(b"\n", len(raw) // 2) + 1]))
    with pytest.raises(DataIntegrityError, match="checksum"):
        load_ecg5000()


def test_folder_source(tmp_path, ecg):
    (tmp_path / "ECG5000_TRAIN.tsv").write_bytes(read_bundled_bytes("TRAIN"))
    (tmp_path / "ECG5000_TEST.tsv.gz").write_bytes(gzip.compress(read_bundled_bytes("TEST")))
    got = load_ecg5000(str(tmp_path))
    for a, b in zip((got.X_train, got.y_train, got.X_test, got.y_test), (ecg.X_train, ecg.y_train, ecg.X_test, ecg.y_test)):
        np.testing.assert_array_equal(a, b)


def test_missing_or_incomplete_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        load_ecg5000(str(tmp_path / "no_such_folder"))
    (tmp_path / "ECG5000_TRAIN.tsv").write_text("1 " + " ".join(["0.5"] * 140) + "\n")
    with pytest.raises(FileNotFoundError, match="ECG5000_TEST"):
        load_ecg5000(str(tmp_path))


def test_malformed_folder_file(tmp_path):
    (tmp_path / "ECG5000_TRAIN.txt").write_text("1 0.1 0.2\n")
    (tmp_path / "ECG5000_TEST.txt").write_text("1 0.1 0.2\n")
    with pytest.raises(DataIntegrityError, match="141 columns"):
        load_ecg5000(str(tmp_path))
    (tmp_path / "ECG5000_TRAIN.txt").write_text("7 " + " ".join(["0.5"] * 140) + "\n")
    with pytest.raises(DataIntegrityError, match="labels"):
        load_ecg5000(str(tmp_path))


@pytest.fixture
def offline_tslearn_cache(tmp_path, monkeypatch):
    """The bundled files in tslearn's cache layout (<root>/UCR_UEA/ECG5000/ECG5000_{TRAIN,TEST}.txt),
    with every tslearn download path patched to fail: tslearn must read them from disk."""
    ucr_uea = pytest.importorskip("tslearn.datasets.ucr_uea")

    def no_network(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(ucr_uea, "urlretrieve", no_network)
    monkeypatch.setattr(ucr_uea, "extract_from_zip_url", no_network)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for root in (tmp_path / "xdg" / "tslearn", tmp_path / "home" / ".tslearn" / "datasets"):
        folder = root / "UCR_UEA" / "ECG5000"
        folder.mkdir(parents=True)
        for part in ("TRAIN", "TEST"):
            (folder / f"ECG5000_{part}.txt").write_bytes(read_bundled_bytes(part))
    return tmp_path


def test_tslearn_reads_bundled_data_to_the_same_arrays(offline_tslearn_cache, ecg):
    from tslearn.datasets import UCR_UEA_datasets

    X_train, y_train, X_test, y_test = UCR_UEA_datasets().load_dataset("ECG5000")
    assert X_train is not None, "tslearn did not find the cached files"
    for a, b in zip((X_train, y_train, X_test, y_test), (ecg.X_train, ecg.y_train, ecg.X_test, ecg.y_test)):
        assert a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    via_source = load_ecg5000("tslearn")  # our tslearn source, served by the same cache
    np.testing.assert_array_equal(via_source.X_test, ecg.X_test)


def test_tslearn_source_failure_is_clear(tmp_path, monkeypatch):
    ucr_uea = pytest.importorskip("tslearn.datasets.ucr_uea")
    monkeypatch.setattr(ucr_uea, "extract_from_zip_url", lambda *a, **k: False)
    monkeypatch.setattr(ucr_uea, "urlretrieve", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="tslearn could not download"):
        load_ecg5000("tslearn")


def test_tslearn_source_without_tslearn_names_the_extra(monkeypatch):
    import sys

    from ecgkern.ecg.data import MissingExtraError

    monkeypatch.setitem(sys.modules, "tslearn", None)  # import tslearn -> ImportError
    monkeypatch.setitem(sys.modules, "tslearn.datasets", None)
    with pytest.raises(MissingExtraError, match=r"ecgkern\[tslearn\]"):
        load_ecg5000("tslearn")
