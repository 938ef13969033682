"""``ecgkern`` command line: train, evaluate, info, bench."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from ..backends import BACKEND_NAMES, BackendUnavailableError
from .data import SPLITS, TASKS, DataIntegrityError
from .models import HEADS



def _add_train_args(p: argparse.ArgumentParser, d) -> None:
    g = p.add_argument_group("experiment")
    g.add_argument("--task", choices=TASKS, default=d.task, help="binary (normal vs abnormal) or multiclass (5 classes); default %(default)s")
    g.add_argument("--split", choices=SPLITS, default=d.split,
                   help="pooled: train+test pooled, stratified 60/20/20 (the notebook); ucr: official 500/4500 with validation from the 500; default %(default)s")
    g.add_argument("--data-source", default=d.data_source, help="bundled (default, offline), tslearn (downloads), or a folder with ECG5000_TRAIN/TEST in UCR format")
    g.add_argument("--seed", type=int, default=d.seed, help="seed of initialisation, shuffling, dropout, augmentation; default %(default)s")
    g.add_argument("--seeds", type=int, default=None, metavar="N", help="run seeds SEED..SEED+N-1 into OUT/seed-K and write OUT/summary.json and summary.md")
    g = p.add_argument_group("model")
    g.add_argument("--backend", choices=("auto",) + BACKEND_NAMES, default=d.backend, help="LSTM recurrence backend; default %(default)s")
    g.add_argument("--hidden-size", type=int, default=d.hidden_size)
    g.add_argument("--num-layers", type=int, default=d.num_layers)
    g.add_argument("--bidirectional", action="store_true")
    g.add_argument("--dropout", type=float, default=d.dropout, help="dropout before the head (and between LSTM layers)")
    g.add_argument("--head", choices=HEADS, default=d.head,
                   help="last: linear head on the last hidden state (default); pool: on [last, mean, max] of the hidden states")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate; default %(default)s")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="> 0 switches to AdamW")
    g.add_argument("--clip-grad", type=float, default=d.clip_grad, metavar="NORM", help="clip the gradient norm (0 = off)")
    g.add_argument("--lr-schedule", choices=("constant", "cosine"), default=d.lr_schedule)
    g.add_argument("--class-weights", action="store_true", help="inverse-frequency weighted cross-entropy (imbalanced 5-class task)")
    g.add_argument("--class-weight-power", type=float, default=d.class_weight_power, metavar="P",
                   help="with --class-weights: weights = (inverse frequency) ** P; default %(default)s")
    g.add_argument("--select", choices=("val_loss", "last"), default=d.select,
                   help="model.pt holds the epoch of best validation loss (default) or the last epoch")
    g.add_argument("--step-loss", type=float, default=d.step_loss, metavar="W",
                   help="early classification: loss = (1-W) * last-step CE + W * mean CE over every step; default %(default)s")
    g.add_argument("--augment", action="store_true", help="random amplitude scaling, offset and jitter of training beats")
    g.add_argument("--amp", choices=("off", "bf16"), default=d.amp,
                   help="mixed precision: bf16 runs the training steps under torch.autocast(bfloat16), weights stay float32; default %(default)s")
    g = p.add_argument_group("run")
    g.add_argument("--device", default=d.device, help="auto (default), cpu, cuda, cuda:N")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    g.add_argument("--out", default=None, help="output folder; default runs/<task>-<split>-<timestamp>")
    g.add_argument("--resume", action="store_true", help="continue the interrupted run in --out from its last complete epoch")
    g.add_argument("--no-progress", action="store_true", help="no progress bars (epoch lines only)")
    g.add_argument("--limit", type=int, default=None, help=argparse.SUPPRESS)  # debug: first N beats of each part


def build_parser() -> argparse.ArgumentParser:
    from .train import TrainConfig

    parser = argparse.ArgumentParser(prog="ecgkern", description="ecgkern: LSTM backends and the ECG5000 harness")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train_args(sub.add_parser("train", help="train an ECG5000 classifier (defaults = the original notebook)"), TrainConfig())
    ev = sub.add_parser("evaluate", help="re-evaluate a saved model on its test split")
    ev.add_argument("path", help="a run folder or its model.pt")
    ev.add_argument("--data-source", default=None, help="override the data source saved with the model")
    ev.add_argument("--backend", choices=("auto",) + BACKEND_NAMES, default=None, help="override the saved backend")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--json", default=None, metavar="FILE", help="also write the metrics to FILE")
    sub.add_parser("info", help="torch version, threads, devices and the LSTM backend table")
    sub.add_parser("bench", help="LSTM backend benchmarks (ecgkern bench --help)", add_help=False)
    return parser


def _config_from_args(args):
    from .train import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})


def cmd_train(args) -> int:
    import torch

    from .sweep import run_seeds
    from .train import saved_config, train

    if args.threads:
        torch.set_num_threads(args.threads)
    progress = not args.no_progress
    if args.resume and args.seeds is None:
        if args.out is None:
            raise ValueError("--resume needs --out DIR (the folder of the interrupted run)")
        config = saved_config(args.out)  # the run continues with the config it started with
        out = Path(args.out)
    else:
        config = _config_from_args(args)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = Path(args.out or f"runs/{config.task}-{config.split}-{stamp}")
    t0 = time.perf_counter()
    if args.seeds is not None:
        run_seeds(config, args.seeds, out, progress=progress)
        print(f"wrote {out}/summary.json and summary.md ({time.perf_counter() - t0:.0f} s)")
        return 0
    metrics = train(config, out, resume=args.resume, progress=progress)
    _print_metrics(metrics["test"], metrics["early"])
    print(f"wrote {out}/ (model.pt, metrics.json, loss/confusion/roc/early/examples.png) in {time.perf_counter() - t0:.0f} s")
    return 0


def _print_metrics(test: dict, early: list) -> None:
    print(f"test: accuracy={test['accuracy']:.4f} balanced_accuracy={test['balanced_accuracy']:.4f} "
          f"macro_f1={test['macro_f1']:.4f} {test['roc_auc_kind']}={test['roc_auc']:.4f} (n={test['n']})")
    print("early " + test["roc_auc_kind"] + ": " + " ".join(f"{e['fraction']:.2f}:{e['roc_auc']:.3f}" for e in early))


def cmd_evaluate(args) -> int:
    from .data import limit_split, load_ecg5000, make_split
    from .evaluate import classification_metrics, early_curve, load_model, predict_proba
    from .train import resolve_device

    device = resolve_device(args.device)
    model, saved = load_model(args.path, device, backend=args.backend)
    split = limit_split(make_split(load_ecg5000(args.data_source or saved.get("data_source", "bundled")),
                                   saved["split"], saved["task"]), saved.get("limit"))
    if split.num_classes != model.config["num_classes"]:
        raise ValueError(f"model has {model.config['num_classes']} outputs but task {saved['task']!r} has {split.num_classes} classes")
    test = classification_metrics(split.y_test, predict_proba(model, split.X_test, device), split.class_names)
    early = early_curve(model, split.X_test, split.y_test, device)
    print(f"{args.path}: {saved['task']} on the {saved['split']} split (best epoch {saved.get('epoch')})")
    _print_metrics(test, early)
    if args.json:
        Path(args.json).write_text(json.dumps({"test": test, "early": early}, indent=2) + "\n")
    return 0


def cmd_info() -> int:
    import torch

    from .. import available_backends

    print(f"ecgkern {__import__('ecgkern').__version__}, torch {torch.__version__}, python {sys.version.split()[0]}")
    print(f"CPU threads: {torch.get_num_threads()} (os.cpu_count()={os.cpu_count()})")
    cuda = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    print("devices: cpu" + "".join(f", cuda:{i} ({n})" for i, n in enumerate(cuda)))
    print(f"{'backend':<10} {'available':<10} reason / note")
    for name, st in available_backends().items():
        print(f"{name:<10} {'yes' if st.available else 'no':<10} {st.reason or st.note or ''}")
    return 0


def cmd_bench(argv) -> int:
    try:
        from .. import bench
    except ImportError as exc:
        if getattr(exc, "name", None) in ("ecgkern.bench",):
            print("ecgkern: error: the benchmark package ecgkern.bench is not installed in this checkout", file=sys.stderr)
            return 2
        raise
    return bench.main(argv) or 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":  # everything after `bench` belongs to ecgkern.bench
        return cmd_bench(argv[1:])
    args = build_parser().parse_args(argv)
    from .evaluate import CheckpointError

    try:
        if args.command == "train":
            return cmd_train(args)
        if args.command == "evaluate":
            return cmd_evaluate(args)
        return cmd_info()
    except KeyboardInterrupt:
        print("\ninterrupted; the last complete epoch is saved: rerun with --resume (and the same --out) to continue",
              file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, CheckpointError, DataIntegrityError,
            BackendUnavailableError) as exc:
        print(f"ecgkern: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
