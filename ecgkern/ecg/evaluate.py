"""Test metrics and the early-classification curve, and loading a saved model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, classification_report, confusion_matrix, f1_score, roc_auc_score

from .models import MODEL_KEYS, ECGClassifier

EARLY_FRACTIONS = tuple(round(k / 20, 2) for k in range(1, 21))  # 0.05, 0.10, ..., 1.00
MODEL_FORMAT = "ecgkern-ecg-model"


class CheckpointError(RuntimeError):
    """A checkpoint file is unreadable, or not an ecgkern ECG model, or does not fit its architecture."""


def _batches(X: np.ndarray, batch_size: int):
    for start in range(0, len(X), batch_size):
        yield torch.as_tensor(X[start:start + batch_size], dtype=torch.float32)


@torch.no_grad()
def predict_proba(model: ECGClassifier, X: np.ndarray, device="cpu", batch_size: int = 512) -> np.ndarray:
    """Softmax probabilities [n, C] on full sequences."""
    model.eval()
    return np.concatenate([torch.softmax(model(xb.to(device)), 1).cpu().numpy() for xb in _batches(X, batch_size)])


def prefix_lengths(T: int, fractions=EARLY_FRACTIONS) -> list[int]:
    return [max(1, int(round(T * f))) for f in fractions]


@torch.no_grad()
def prefix_proba(model: ECGClassifier, X: np.ndarray, lengths, device="cpu", batch_size: int = 512) -> np.ndarray:
    """Probabilities [len(lengths), n, C] of the model seeing only each prefix.

    Unidirectional: ONE forward pass over the full sequences (hidden state at step L-1 is the
    prefix-L output). Bidirectional: the model is rerun on each prefix.
    """
    model.eval()
    idx = torch.as_tensor([L - 1 for L in lengths])
    chunks = []
    for xb in _batches(X, batch_size):
        xb = xb.to(device)
        if model.lstm.bidirectional:
            logits = torch.stack([model(xb[:, :L]) for L in lengths])
        else:
            logits = model.step_logits(xb)[:, idx.to(device)].transpose(0, 1)  # [P, B, C]
        chunks.append(torch.softmax(logits, -1).cpu().numpy())
    return np.concatenate(chunks, axis=1)


def roc_auc(y_true: np.ndarray, proba: np.ndarray) -> float | None:
    """Binary ROC-AUC (positive = class 1) for 2 classes, else macro one-vs-rest ROC-AUC;
    None when y_true holds a single class (AUC undefined)."""
    if len(np.unique(y_true)) < 2:
        return None
    if proba.shape[1] == 2:
        return float(roc_auc_score(y_true, proba[:, 1]))
    labels = np.arange(proba.shape[1])
    present = np.isin(labels, y_true)
    if not present.all():  # OvR AUC is undefined for a class absent from y_true; average the rest
        return float(np.mean([roc_auc_score(y_true == k, proba[:, k]) for k in labels[present]]))
    return float(roc_auc_score(y_true, proba, multi_class="ovr", average="macro", labels=labels))


def auc_label(num_classes: int) -> str:
    return "ROC-AUC (binary)" if num_classes == 2 else "macro one-vs-rest ROC-AUC"


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, class_names) -> dict:
    labels = list(range(proba.shape[1]))
    y_pred = proba.argmax(1)
    report = classification_report(y_true, y_pred, labels=labels, target_names=list(class_names),
                                   output_dict=True, zero_division=0)
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "roc_auc": roc_auc(y_true, proba),
        "roc_auc_kind": auc_label(proba.shape[1]),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "per_class_recall": [float(report[n]["recall"]) for n in class_names],
        "report": report,
    }


def early_curve(model: ECGClassifier, X: np.ndarray, y: np.ndarray, device="cpu") -> list[dict]:
    lengths = prefix_lengths(X.shape[1])
    probs = prefix_proba(model, X, lengths, device)
    return [{"fraction": f, "prefix_len": L, "roc_auc": roc_auc(y, p)}
            for f, L, p in zip(EARLY_FRACTIONS, lengths, probs)]


# ---- saved models ---------------------------------------------------------------------------

def _torch_load(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, garbage bytes, unsafe pickle: all unreadable to us
        raise CheckpointError(
            f"cannot read checkpoint {str(path)!r}: it is corrupt, truncated or not a torch weights file "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None


def load_checkpoint(path, expected_format: str) -> dict:
    """torch.load(weights_only=True) + a check that the file is the ecgkern kind we expect."""
    path = Path(path)
    obj = _torch_load(path)
    if not isinstance(obj, dict) or obj.get("format") != expected_format:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{str(path)!r} is not an {expected_format} checkpoint (found {found!r})")
    return obj


def resolve_model_path(path) -> Path:
    path = Path(path)
    return path / "model.pt" if path.is_dir() else path


def load_model(path, device="cpu", backend: str | None = None) -> tuple[ECGClassifier, dict]:
    """Rebuild the classifier saved in ``model.pt`` (or a run folder); returns (model, saved dict)."""
    path = resolve_model_path(path)
    saved = load_checkpoint(path, MODEL_FORMAT)
    config = saved.get("config")
    if not isinstance(config, dict) or any(k not in config for k in MODEL_KEYS) or "state_dict" not in saved:
        raise CheckpointError(f"{str(path)!r} lacks the model config or weights needed to rebuild it")
    if backend is not None:
        config = {**config, "backend": backend}
    model = ECGClassifier.from_config(config)
    try:
        model.load_state_dict(saved["state_dict"])
    except (RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"the weights in {str(path)!r} do not fit the architecture in its config "
            f"({', '.join(f'{k}={config[k]}' for k in MODEL_KEYS)}): {' '.join(str(exc).split())[:400]}"
        ) from None
    return model.to(device), saved
