"""Training: the loop, resumable checkpoints, and the run's outputs (model.pt, metrics.json, PNGs).

Every epoch ends with an atomic ``checkpoint.pt`` (model, optimizer, scheduler, RNG states,
history, best-so-far weights): a run killed at any moment resumes from its last complete epoch
and reaches exactly the metrics of an uninterrupted run with the same seed.
"""
from __future__ import annotations

import dataclasses
import json
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..atomic import atomic_write, atomic_write_text
from ..backends import resolve_backend_name
from ..timing import Stopwatch
from . import plots
from .data import SPLITS, TASKS, Split, limit_split, load_ecg5000, make_split
from .evaluate import MODEL_FORMAT, classification_metrics, early_curve, load_checkpoint, predict_proba
from .models import MODEL_KEYS, ECGClassifier

CHECKPOINT_FORMAT = "ecgkern-ecg-checkpoint"
LR_SCHEDULES = ("constant", "cosine")
SELECTIONS = ("val_loss", "last")
# Mixed precision of the training steps: torch.autocast dtype per --amp choice (None = off).
AMP_DTYPES = {"off": None, "bf16": torch.bfloat16}


@dataclass
class TrainConfig:
    """Defaults = the original notebook's experiment (binary, pooled split, hidden 64, ...)."""

    task: str = "binary"
    split: str = "pooled"
    backend: str = "auto"
    epochs: int = 20
    hidden_size: int = 64
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0
    head: str = "last"
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    class_weights: bool = False
    class_weight_power: float = 1.0  # weights = (inverse frequency) ** power; 0.5 = gentler
    clip_grad: float = 0.0  # max gradient norm; 0 = no clipping
    step_loss: float = 0.0  # weight of the mean per-step loss (early classification); 0 = last step only
    augment: bool = False
    select: str = "val_loss"  # which epoch's weights become model.pt: best validation loss, or the last
    amp: str = "off"  # "bf16": training steps under torch.autocast(bfloat16); weights and optimizer stay float32
    seed: int = 0
    device: str = "auto"
    data_source: str = "bundled"
    limit: int | None = None  # debug: keep only the first N beats of each part

    def validate(self) -> TrainConfig:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        if self.split not in SPLITS:
            raise ValueError(f"unknown split {self.split!r}; choose one of {', '.join(SPLITS)}")
        if self.select not in SELECTIONS:
            raise ValueError(f"unknown selection {self.select!r}; choose one of {', '.join(SELECTIONS)}")
        if self.amp not in AMP_DTYPES:
            raise ValueError(f"unknown amp mode {self.amp!r}; choose one of {', '.join(AMP_DTYPES)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr schedule {self.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
        for name in ("epochs", "hidden_size", "num_layers", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.clip_grad < 0:
            raise ValueError(f"clip_grad must be >= 0, got {self.clip_grad}")
        if not 0 <= self.step_loss <= 1:
            raise ValueError(f"step_loss must be in [0, 1], got {self.step_loss}")
        if self.step_loss and self.bidirectional:
            raise ValueError("step_loss needs a unidirectional LSTM (a reverse direction sees the future)")
        if self.limit is not None and self.limit < 2:
            raise ValueError(f"limit must be >= 2, got {self.limit}")
        resolve_backend_name(self.backend, resolve_device(self.device))  # unknown/unavailable backend -> error now
        return self

    def model_config(self, num_classes: int) -> dict:
        return {**{k: getattr(self, k) for k in MODEL_KEYS if k != "num_classes"}, "num_classes": num_classes}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use auto, cpu or cuda[:N]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here")
    return dev


def atomic_save(obj, path: Path) -> None:
    """torch.save that never leaves a half-written file (see ecgkern.atomic)."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


def prepare_data(config: TrainConfig) -> Split:
    return limit_split(make_split(load_ecg5000(config.data_source), config.split, config.task), config.limit)


def inverse_frequency_weights(y: np.ndarray, num_classes: int, power: float = 1.0) -> torch.Tensor:
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    return torch.as_tensor((len(y) / (num_classes * np.maximum(counts, 1))) ** power, dtype=torch.float32)


def augment_batch(xb: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Per-beat amplitude scaling (x N(1, 0.1)), offset N(0, 0.1) and jitter N(0, 0.03)."""
    B, T, _ = xb.shape
    scale = 1 + 0.1 * torch.randn(B, 1, 1, generator=gen)
    offset = 0.1 * torch.randn(B, 1, 1, generator=gen)
    return xb * scale + offset + 0.03 * torch.randn(B, T, 1, generator=gen)


def _loss(model: ECGClassifier, xb, yb, weight, step_loss: float):
    if not step_loss:
        return F.cross_entropy(model(xb), yb, weight=weight)
    steps = model.step_logits(xb)  # [B, T, C]; the last step is the plain model's output
    last = F.cross_entropy(steps[:, -1], yb, weight=weight)
    every = F.cross_entropy(steps.flatten(0, 1), yb.repeat_interleave(steps.shape[1]), weight=weight)
    return (1 - step_loss) * last + step_loss * every


@torch.no_grad()
def _eval_loss(model, X, y, weight, batch_size=512) -> float:
    model.eval()
    total = 0.0
    for start in range(0, len(X), batch_size):
        logits = model(X[start:start + batch_size])
        total += F.cross_entropy(logits, y[start:start + batch_size], weight=weight, reduction="sum").item()
    if weight is not None:  # weighted mean, as F.cross_entropy's default reduction does
        return total / weight[y].sum().item()
    return total / len(X)


class Trainer:
    """One run in ``out``: fit (resumably), then evaluate and write every output."""

    def __init__(self, config: TrainConfig, out: Path, log: Callable[[str], None] = print,
                 progress: bool = True):
        self.config = config.validate()
        self.out = Path(out)
        self.log = log
        self.progress = progress
        self.device = resolve_device(config.device)
        self.data = prepare_data(config)
        self.backend = resolve_backend_name(config.backend, self.device)
        torch.manual_seed(config.seed)
        self.gen = torch.Generator().manual_seed(config.seed)  # shuffling and augmentation
        self.model = ECGClassifier(**config.model_config(self.data.num_classes)).to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay) \
            if config.weight_decay else torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=config.epochs) \
            if config.lr_schedule == "cosine" else None
        self.weight = inverse_frequency_weights(self.data.y_train, self.data.num_classes, config.class_weight_power).to(self.device) \
            if config.class_weights else None
        self.epoch = 0
        self.history = {"train_loss": [], "val_loss": [], "val_accuracy": [], "epoch_seconds": []}
        self.best = {"epoch": 0, "val_loss": float("inf"), "state_dict": None}

    # ---- checkpoints ----
    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def _checkpoint(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT, "config": dataclasses.asdict(self.config), "epoch": self.epoch,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "rng": {"torch": torch.get_rng_state(), "loader": self.gen.get_state()},
            "history": self.history, "best": self.best,
        }

    def restore(self) -> None:
        ck = load_checkpoint(self.checkpoint_path, CHECKPOINT_FORMAT)
        if ck["config"] != dataclasses.asdict(self.config):
            raise ValueError(f"{self.checkpoint_path} was written with a different config; resume with that config")
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        if self.scheduler:
            self.scheduler.load_state_dict(ck["scheduler"])
        torch.set_rng_state(ck["rng"]["torch"])
        self.gen.set_state(ck["rng"]["loader"])
        self.epoch, self.history, self.best = ck["epoch"], ck["history"], ck["best"]

    def _save_model(self, state_dict) -> None:
        atomic_save({"format": MODEL_FORMAT, "config": self.model.config, "class_names": list(self.data.class_names),
                     "task": self.config.task, "split": self.config.split, "data_source": self.config.data_source,
                     "limit": self.config.limit,
                     "epoch": self.best["epoch"], "state_dict": state_dict}, self.out / "model.pt")

    # ---- training ----
    def _tensors(self, X, y):
        return (torch.as_tensor(X, dtype=torch.float32, device=self.device),
                torch.as_tensor(y, dtype=torch.long, device=self.device))

    def _train_epoch(self, X, y) -> float:
        self.model.train()
        cfg = self.config
        perm = torch.randperm(len(X), generator=self.gen).to(self.device)
        total = 0.0
        starts = range(0, len(X), cfg.batch_size)
        bar = tqdm(starts, desc=f"epoch {self.epoch + 1}/{cfg.epochs}", leave=False, disable=not self.progress)
        for start in bar:
            idx = perm[start:start + cfg.batch_size]
            xb, yb = X[idx], y[idx]
            if cfg.augment:
                xb = augment_batch(xb.cpu(), self.gen).to(self.device)
            amp_dtype = AMP_DTYPES[cfg.amp]
            with torch.autocast(self.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = _loss(self.model, xb, yb, self.weight, cfg.step_loss)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
            self.optimizer.step()
            total += loss.item() * len(idx)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        return total / len(X)

    def fit(self) -> None:
        """Train until ``config.epochs``, saving a checkpoint after every epoch."""
        cfg = self.config
        X_tr, y_tr = self._tensors(self.data.X_train, self.data.y_train)
        X_va, y_va = self._tensors(self.data.X_val, self.data.y_val)
        while self.epoch < cfg.epochs:
            with Stopwatch() as epoch_time:
                train_loss = self._train_epoch(X_tr, y_tr)
                val_loss = _eval_loss(self.model, X_va, y_va, self.weight)
                val_acc = float((predict_proba(self.model, self.data.X_val, self.device).argmax(1) == self.data.y_val).mean())
                if self.scheduler:
                    self.scheduler.step()
                self.epoch += 1
            seconds = epoch_time.seconds
            for key, value in (("train_loss", train_loss), ("val_loss", val_loss), ("val_accuracy", val_acc),
                               ("epoch_seconds", seconds)):
                self.history[key].append(value)
            improved = val_loss < self.best["val_loss"] if cfg.select == "val_loss" else True
            if improved:
                self.best = {"epoch": self.epoch, "val_loss": val_loss,
                             "state_dict": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}}
                self._save_model(self.best["state_dict"])
            atomic_save(self._checkpoint(), self.checkpoint_path)
            self.log(f"epoch {self.epoch:03d}/{cfg.epochs} | train_loss={train_loss:.4f} | val_loss={val_loss:.4f}"
                     f" | val_acc={val_acc:.4f} | {seconds:.1f}s" + (" | best" if improved and cfg.select == "val_loss" else ""))

    # ---- results ----
    def finish(self) -> dict:
        """Evaluate the best-validation-loss weights on the test split; write metrics.json and the plots."""
        d = self.data
        with Stopwatch() as eval_time:
            self.model.load_state_dict(self.best["state_dict"])
            proba = predict_proba(self.model, d.X_test, self.device)
            test = classification_metrics(d.y_test, proba, d.class_names)
            early = early_curve(self.model, d.X_test, d.y_test, self.device)
        metrics = {
            "config": dataclasses.asdict(self.config),
            "backend": self.backend, "device": str(self.device), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "machine": platform.machine(),
            "data": {"train": len(d.y_train), "val": len(d.y_val), "test": len(d.y_test),
                     "class_names": list(d.class_names)},
            "history": self.history,
            "best_epoch": self.best["epoch"],
            "test": test,
            "early": early,
            "timing": {"train_seconds": float(sum(self.history["epoch_seconds"])), "epochs": self.epoch,
                       "eval_seconds": eval_time.seconds},
        }
        plots.plot_loss(self.history, self.best["epoch"], self.config.select, self.out / "loss.png")
        plots.plot_confusion(test["confusion_matrix"], d.class_names, self.out / "confusion.png")
        plots.plot_roc(d.y_test, proba, d.class_names, self.out / "roc.png")
        plots.plot_early({"this model": early}, d.num_classes, self.out / "early.png",
                         note=plots.early_note(self.config.step_loss))
        plots.plot_examples(d.X_train, d.y_train, d.class_names, self.out / "examples.png", split=self.config.split)
        atomic_write_text(self.out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        return metrics


def train(config: TrainConfig, out, resume: bool = False, log=print, progress: bool = True) -> dict:
    """Train ``config`` into folder ``out`` (or resume the run there) and return its metrics."""
    out = Path(out)
    trainer = Trainer(config, out, log, progress)
    if resume:
        if not trainer.checkpoint_path.is_file():
            raise FileNotFoundError(f"nothing to resume: {trainer.checkpoint_path} does not exist")
        trainer.restore()
        log(f"resuming {out} after epoch {trainer.epoch}/{config.epochs}")
    elif trainer.checkpoint_path.exists():
        raise FileExistsError(f"{out} already holds a run (checkpoint.pt); pass --resume or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    log(f"training {config.task} on the {config.split} split: {len(trainer.data.y_train)} train / "
        f"{len(trainer.data.y_val)} val / {len(trainer.data.y_test)} test beats, backend {trainer.backend}"
        f"{' (auto)' if config.backend == 'auto' else ''}, "
        f"device {trainer.device}, {torch.get_num_threads()} threads -> {out}")
    trainer.fit()
    return trainer.finish()


def saved_config(out) -> TrainConfig:
    """The config of the run in ``out`` (from its checkpoint), for ``--resume``."""
    ck = load_checkpoint(Path(out) / "checkpoint.pt", CHECKPOINT_FORMAT)
    return TrainConfig(**ck["config"])
