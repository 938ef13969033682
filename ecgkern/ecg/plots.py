"""The run's figures (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, auc, roc_curve  # noqa: E402

from .evaluate import auc_label  # noqa: E402


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_loss(history: dict, selected_epoch: int | None, select: str, path: Path) -> None:
    """Train and validation loss per epoch; the epoch saved as model.pt is marked."""
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = np.arange(1, len(history["train_loss"]) + 1)
    ax.plot(epochs, history["train_loss"], marker="o", label="train")
    ax.plot(epochs, history["val_loss"], marker="o", label="validation")
    if selected_epoch:
        why = "lowest validation loss" if select == "val_loss" else "last epoch"
        ax.axvline(selected_epoch, color="grey", ls="--", lw=1, label=f"model.pt: epoch {selected_epoch} ({why})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
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
        ax.plot(fpr, tpr, label=f"{class_names[1]} vs {class_names[0]} (AUC {auc(fpr, tpr):.3f})")
    else:
        for k, name in enumerate(class_names):
            if np.any(y_true == k) and not np.all(y_true == k):
                fpr, tpr, _ = roc_curve(y_true == k, proba[:, k])
                ax.plot(fpr, tpr, label=f"{name} vs rest (AUC {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="chance (AUC 0.5)")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="Test ROC")
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)


LAST_STEP_NOTE = ("Trained on the last step's output only: the prediction from a partial beat was never part of "
                  "the loss, so early points may swing, even below 0.5. --step-loss W trains every step.")


def early_note(step_loss: float) -> str:
    """The subtitle of early.png: how the model was trained, which explains the curve's shape."""
    if not step_loss:
        return LAST_STEP_NOTE
    return f"Trained with --step-loss {step_loss:g}: the loss includes the prediction after every step."


def plot_early(curves: dict, num_classes: int, path: Path, note: str | None = None) -> None:
    """``curves``: {label: [{"fraction", "roc_auc"}, ...]}; several runs may share one plot.
    ``note``: a subtitle under the title (e.g. ``early_note``)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.4))
    for label, curve in curves.items():
        ax.plot([p["fraction"] for p in curve], [p["roc_auc"] for p in curve], marker="o", label=label)
    ax.axhline(0.5, color="grey", ls=":", lw=0.8, label="chance")
    ax.set(xlabel="fraction of the beat observed", ylabel=f"test {auc_label(num_classes)}", ylim=(0.0, 1.02))
    lines = textwrap.wrap(note, 90) if note else []
    ax.set_title("Early classification: predicting from the first part of each beat", fontsize=10, pad=8 + 10 * len(lines))
    if lines:
        ax.text(0.5, 1.015, "\n".join(lines), transform=ax.transAxes, ha="center", va="bottom", fontsize=7.5, color="dimgrey")
    ax.legend(loc="best", fontsize=8)
    _save(fig, path)


def plot_examples(X, y, class_names, path: Path, split: str) -> None:
    """One training beat per class; n = that class's beats in the training part of ``split``."""
    fig, axes = plt.subplots(1, len(class_names), figsize=(3 * len(class_names), 2.9), squeeze=False, sharey=True)
    for k, (ax, name) in enumerate(zip(axes[0], class_names)):
        idx = np.flatnonzero(y == k)
        if len(idx):
            ax.plot(X[idx[0], :, 0])
        ax.set_title(f"{name}\n(n={len(idx)} training beats)", fontsize=9)
        ax.set_xlabel("time step")
    axes[0][0].set_ylabel("amplitude (z-normalised)")
    fig.suptitle(f"One training beat per class ({split} split, {len(y)} training beats)", fontsize=10)
    _save(fig, path)
