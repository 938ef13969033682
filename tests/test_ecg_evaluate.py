"""Metrics, the one-pass early-classification curve, and loading saved models."""
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from ecgkern.ecg.evaluate import EARLY_FRACTIONS, CheckpointError, classification_metrics, load_model, prefix_lengths, prefix_proba, roc_auc
from ecgkern.ecg.models import ECGClassifier
from ecgkern.ecg.train import atomic_save


def _beats(n=24, T=140, seed=0):
    g = np.random.default_rng(seed)
    return np.cumsum(g.normal(size=(n, T, 1)), axis=1) / 10


@pytest.mark.parametrize("num_layers, num_classes, head", [(1, 2, "last"), (2, 5, "last"), (1, 5, "pool")])
def test_one_pass_early_probs_equal_rerunning_each_prefix(num_layers, num_classes, head):
    torch.manual_seed(0)
    model = ECGClassifier(num_classes, hidden_size=16, num_layers=num_layers, head=head).eval()
    X = _beats()
    lengths = prefix_lengths(X.shape[1])
    assert lengths[0] == 7 and lengths[-1] == 140 and len(lengths) == 20
    one_pass = prefix_proba(model, X, lengths)
    with torch.no_grad():
        rerun = np.stack([torch.softmax(model(torch.as_tensor(X[:, :L], dtype=torch.float32)), 1).numpy()
                          for L in lengths])
    assert one_pass.shape == rerun.shape == (20, len(X), num_classes)
    assert np.abs(one_pass - rerun).max() <= 1e-6


def test_bidirectional_prefixes_rerun_the_model():
    torch.manual_seed(0)
    model = ECGClassifier(2, hidden_size=8, bidirectional=True).eval()
    X = _beats(6, 30)
    probs = prefix_proba(model, X, [5, 30])
    with torch.no_grad():
        want = torch.softmax(model(torch.as_tensor(X[:, :5], dtype=torch.float32)), 1).numpy()
    np.testing.assert_allclose(probs[0], want, atol=1e-7)
    with pytest.raises(ValueError, match="unidirectional"):
        model.step_logits(torch.zeros(1, 3, 1))


def test_metrics_match_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 300)
    proba = rng.dirichlet(np.ones(5), 300)
    proba[np.arange(300), y] += 0.3
    proba /= proba.sum(1, keepdims=True)
    m = classification_metrics(y, proba, [f"c{k}" for k in range(5)])
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr"))
    assert m["roc_auc_kind"] == "macro one-vs-rest ROC-AUC"
    assert np.sum(m["confusion_matrix"]) == 300 and len(m["per_class_recall"]) == 5
    assert m["accuracy"] == pytest.approx(np.mean(proba.argmax(1) == y))
    b = proba[:, :2] / proba[:, :2].sum(1, keepdims=True)
    assert roc_auc(y % 2, b) == pytest.approx(roc_auc_score(y % 2, b[:, 1]))


def test_ovr_auc_skips_a_class_absent_from_the_labels():
    y = np.array([0, 0, 1, 1, 2, 2])
    proba = np.eye(4)[[0, 0, 1, 1, 2, 3]] * 0.7 + 0.075
    assert 0 < roc_auc(y, proba) <= 1


# ---- saved models -----------------------------------------------------------------------------

def _save_model(path, **overrides):
    model = ECGClassifier(2, hidden_size=8)
    saved = {"format": "ecgkern-ecg-model", "config": model.config, "state_dict": model.state_dict(),
             "task": "binary", "split": "pooled"}
    saved.update(overrides)
    atomic_save(saved, path)
    return model


def test_load_model_roundtrip(tmp_path):
    model = _save_model(tmp_path / "model.pt")
    loaded, saved = load_model(tmp_path)  # a folder means its model.pt
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    assert not list(tmp_path.glob(".*tmp*"))  # the atomic save left no temp file behind


def test_corrupt_truncated_and_foreign_checkpoints(tmp_path):
    path = tmp_path / "model.pt"
    _save_model(path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        load_model(path)
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        load_model(path)
    torch.save(torch.nn.Linear(3, 2).state_dict(), path)  # a foreign torch file
    with pytest.raises(CheckpointError, match="not an ecgkern-ecg-model"):
        load_model(path)
    _save_model(path, config={**ECGClassifier(2, hidden_size=8).config, "hidden_size": 32})  # wrong architecture
    with pytest.raises(CheckpointError, match="do not fit the architecture.*hidden_size=32"):
        load_model(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "missing.pt")


def test_early_fractions():
    assert EARLY_FRACTIONS[0] == 0.05 and EARLY_FRACTIONS[-1] == 1.0 and len(EARLY_FRACTIONS) == 20
