"""The run's figures (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, roc_curve  # noqa: E402

from .evaluate import auc_label  # noqa: E402


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_loss(history: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = np.arange(1, len(history["train_loss"]) + 1)
    ax.plot(epochs, history["train_loss"], marker="o", label="train")
    ax.plot(epochs, history["val_loss"], marker="o", label="validation")
    ax.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss per epoch")
    ax.legend()
    _save(fig, path)


def plot_confusion(cm, class_names, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ConfusionMatrixDisplay(np.asarray(cm), display_labels=list(class_names)).plot(ax=ax, colorbar=False)
    ax.set_title("Test confusion matrix")
    _save(fig, path)


def plot_roc(y_true, proba, class_names, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 5))
    if proba.shape[1] == 2:
        fpr, tpr, _ = roc_curve(y_true, proba[:, 1])
        ax.plot(fpr, tpr, label=f"{class_names[1]} vs {class_names[0]}")
    else:
        for k, name in enumerate(class_names):
            if np.any(y_true == k) and not np.all(y_true == k):
                fpr, tpr, _ = roc_curve(y_true == k, proba[:, k])
                ax.plot(fpr, tpr, label=f"{name} vs rest")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="Test ROC")
    ax.legend(loc="lower right")
    _save(fig, path)


def plot_early(curves: dict, num_classes: int, path: Path) -> None:
    """``curves``: {label: [{"fraction", "roc_auc"}, ...]}; several runs may share one plot."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, curve in curves.items():
        ax.plot([p["fraction"] for p in curve], [p["roc_auc"] for p in curve], marker="o", label=label)
    ax.axhline(0.5, color="grey", ls=":", lw=0.8)
    ax.set(xlabel="fraction of the beat observed", ylabel=f"test {auc_label(num_classes)}",
           title="Early classification", ylim=(0.0, 1.02))
    ax.legend(loc="lower right")
    _save(fig, path)


def plot_examples(X, y, class_names, path: Path) -> None:
    fig, axes = plt.subplots(1, len(class_names), figsize=(3 * len(class_names), 2.6), squeeze=False)
    for k, (ax, name) in enumerate(zip(axes[0], class_names)):
        idx = np.flatnonzero(y == k)
        if len(idx):
            ax.plot(X[idx[0], :, 0])
        ax.set_title(f"{name} (n={len(idx)})")
        ax.set_xticks([])
    _save(fig, path)
