"""``--train``: the default ECG5000 training run, end to end, once per backend.

Uses the harness' own ``Trainer`` (ecgkern.ecg.train), so what is timed is exactly what
``ecgkern train`` does (data on the device, Adam, per-epoch validation and checkpoint). The
backends' runs are interleaved epoch by epoch (A B A B ...), so machine drift cancels.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable

from ..timing import Stopwatch
from .measure import Outcome


def train_benchmark(backends: list[str], device: str, epochs: int, *, limit: int | None = None, seed: int = 0,
                    skip: Callable[[str], str | None] = lambda name: None,
                    on_epoch: Callable[[str, int], None] | None = None) -> list[dict]:
    """One record per backend: wall time of ``epochs`` epochs and training sequences per second.

    ``skip(name)`` gives the reason a backend is not run (unavailable here), or None.
    """
    from ..ecg.train import TrainConfig, Trainer

    records, trainers = {}, {}
    with tempfile.TemporaryDirectory(prefix="ecgkern-bench-train-") as tmp:
        for name in backends:
            reason = skip(name)
            if reason:
                records[name] = _record(name, device, epochs, Outcome("skipped", reason), None)
                continue
            config = TrainConfig(backend=name, epochs=1, device=device, seed=seed, limit=limit)
            setup = Stopwatch()
            try:
                trainers[name] = Trainer(config, f"{tmp}/{name}", log=lambda msg: None, progress=False)
                trainers[name].out.mkdir(parents=True, exist_ok=True)
            except Exception as exc:  # noqa: BLE001 - an unavailable backend is a row, not a crash
                records[name] = _record(name, device, epochs, Outcome.failed(exc), None)
                continue
            records[name] = {"setup_s": setup.seconds}
        for epoch in range(1, epochs + 1):
            for name, trainer in list(trainers.items()):
                trainer.config.epochs = epoch  # fit() trains up to config.epochs: one more epoch
                try:
                    trainer.fit()
                except Exception as exc:  # noqa: BLE001
                    records[name] = _record(name, device, epochs, Outcome.failed(exc), None)
                    del trainers[name]
                    continue
                if on_epoch:
                    on_epoch(name, epoch)
        for name, trainer in trainers.items():
            records[name] = _record(name, device, epochs, Outcome("ok"), trainer, records[name]["setup_s"])
    return [records[n] for n in backends]


def _record(name, device, epochs, outcome: Outcome, trainer, setup_s: float | None = None) -> dict:
    rec = {"backend": name, "device": device, "epochs": epochs, "status": outcome.status, "reason": outcome.reason}
    if trainer is not None:
        seconds = trainer.history["epoch_seconds"]
        n_train = len(trainer.data.y_train)
        rec.update(
            resolved_backend=trainer.backend,
            wall_s=float(sum(seconds)),  # training + per-epoch validation, as `ecgkern train` reports it
            setup_s=setup_s,
            epoch_seconds=list(seconds),
            train_sequences=n_train,
            sequences_per_s=n_train * epochs / float(sum(seconds)),
            final_val_accuracy=trainer.history["val_accuracy"][-1],
        )
    return rec
