"""The harness' commands, ``ecgkern train`` and ``ecgkern evaluate`` (dispatched by ``ecgkern.cli``)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from ..backends import BACKEND_NAMES, BackendUnavailableError
from .data import SPLITS, TASKS, DataIntegrityError, MissingExtraError
from .models import HEADS


def _add_train_args(p: argparse.ArgumentParser, d) -> None:
    g = p.add_argument_group("experiment")
    g.add_argument("--task", choices=TASKS, default=d.task, help="binary (normal vs abnormal) or multiclass (5 classes)")
    g.add_argument("--split", choices=SPLITS, default=d.split,
                   help="pooled: train+test pooled, stratified 60/20/20 (the notebook); "
                        "ucr: official 500/4500 with validation from the 500")
    g.add_argument("--data-source", default=d.data_source,
                   help="bundled (offline), tslearn (downloads; pip install 'ecgkern[tslearn]'), "
                        "or a folder with ECG5000_TRAIN/TEST in UCR format")
    g.add_argument("--seed", type=int, default=d.seed, help="seed of initialisation, shuffling, dropout, augmentation")
    g.add_argument("--seeds", type=int, default=None, metavar="N",
                   help="run seeds SEED..SEED+N-1 into OUT/seed-K and write OUT/summary.json and summary.md")
    g = p.add_argument_group("model")
    g.add_argument("--backend", choices=("auto",) + BACKEND_NAMES, default=d.backend, help="LSTM recurrence backend")
    g.add_argument("--hidden-size", type=int, default=d.hidden_size, help="LSTM hidden units")
    g.add_argument("--num-layers", type=int, default=d.num_layers, help="stacked LSTM layers")
    g.add_argument("--bidirectional", action="store_true", help="a second LSTM reading the beat backwards")
    g.add_argument("--dropout", type=float, default=d.dropout, help="dropout before the head (and between LSTM layers)")
    g.add_argument("--head", choices=HEADS, default=d.head,
                   help="last: linear head on the last hidden state; pool: on [last, mean, max] of the hidden states")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=d.epochs, help="training epochs")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="beats per optimiser step")
    g.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="> 0 switches to AdamW")
    g.add_argument("--clip-grad", type=float, default=d.clip_grad, metavar="NORM", help="clip the gradient norm (0 = off)")
    g.add_argument("--lr-schedule", choices=("constant", "cosine"), default=d.lr_schedule, help="learning-rate schedule over the epochs")
    g.add_argument("--class-weights", action="store_true", help="inverse-frequency weighted cross-entropy (imbalanced 5-class task)")
    g.add_argument("--class-weight-power", type=float, default=d.class_weight_power, metavar="P",
                   help="with --class-weights: weights = (inverse frequency) ** P")
    g.add_argument("--select", choices=("val_loss", "last"), default=d.select,
                   help="model.pt holds the epoch of best validation loss or the last epoch")
    g.add_argument("--step-loss", type=float, default=d.step_loss, metavar="W",
                   help="early classification: loss = (1-W) * last-step CE + W * mean CE over every step")
    g.add_argument("--augment", action="store_true", help="random amplitude scaling, offset and jitter of training beats")
    g.add_argument("--amp", choices=("off", "bf16"), default=d.amp,
                   help="mixed precision: bf16 runs the training steps under torch.autocast(bfloat16), weights stay float32; default %(default)s")
    g = p.add_argument_group("run")
    g.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    g.add_argument("--out", default=None, help="output folder (default: runs/<task>-<split>-<timestamp>)")
    g.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --out from its last complete epoch, with the flags it started with")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (epoch lines only; also off when stderr is not a terminal)")
    g.add_argument("--limit", type=int, default=None, help=argparse.SUPPRESS)  # debug: first N beats of each part


class _DefaultsFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to every option that has a real default (not None/False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if action.option_strings and "%(default)" not in text and \
                not (default is None or default is False or default is argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


def add_commands(sub) -> None:
    """Add ``train`` and ``evaluate`` to the ``ecgkern`` subcommand parsers ``sub``."""
    from .train import TrainConfig

    _add_train_args(sub.add_parser("train", help="train an ECG5000 classifier (defaults = the original notebook)",
                                   formatter_class=_DefaultsFormatter), TrainConfig())
    ev = sub.add_parser("evaluate", help="re-evaluate a saved model on its test split", formatter_class=_DefaultsFormatter)
    ev.add_argument("path", help="a run folder or its model.pt")
    ev.add_argument("--data-source", default=None, help="override the data source saved with the model")
    ev.add_argument("--backend", choices=("auto",) + BACKEND_NAMES, default=None, help="override the saved backend")
    ev.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    ev.add_argument("--json", default=None, metavar="FILE", help="also write the metrics to FILE")


def _config_from_args(args):
    from .train import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})


def _flags_given(train_argv: list[str]) -> dict:
    """The ``train`` options written on the command line (not filled in from defaults)."""
    from .train import TrainConfig

    probe = argparse.ArgumentParser(add_help=False)
    _add_train_args(probe, TrainConfig())
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return vars(probe.parse_known_args(train_argv)[0])


def _check_resume_flags(config, given: dict, out: Path) -> None:
    """``--resume`` continues a run with the config it started with: a flag that says otherwise is an error."""
    differ = [f"--{key.replace('_', '-')} {value} (the run has {getattr(config, key)})"
              for key, value in given.items() if hasattr(config, key) and value != getattr(config, key)]
    if differ:
        raise ValueError(f"--resume continues {out} with the flags it started with, and these differ: "
                         f"{', '.join(differ)}; drop them, or start a new run with another --out")


def _report_interrupt(out: Path, seeds: bool, created: bool) -> None:
    if seeds:
        print(f"\ninterrupted; finished seeds and the last complete epoch are kept in {out}: "
              "the same command continues the sweep", file=sys.stderr)
    elif (out / "checkpoint.pt").is_file():
        print(f"\ninterrupted; the last complete epoch is saved in {out}: "
              f"`ecgkern train --out {out} --resume` continues it", file=sys.stderr)
    else:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        print(f"\ninterrupted before the first epoch finished; nothing was saved ({out} is not a run)", file=sys.stderr)


def cmd_train(args, argv: list[str]) -> int:
    import torch

    from ..timing import Stopwatch
    from .sweep import run_seeds
    from .train import saved_config, train

    if args.threads:
        torch.set_num_threads(args.threads)
    progress = not args.no_progress and sys.stderr.isatty()
    if args.resume and args.seeds is None:
        if args.out is None:
            raise ValueError("--resume needs --out DIR (the folder of the interrupted run)")
        out = Path(args.out)
        config = saved_config(out)  # the run continues with the config it started with
        _check_resume_flags(config, _flags_given(argv[1:]), out)
    else:
        config = _config_from_args(args)
        out = Path(args.out or f"runs/{config.task}-{config.split}-{time.strftime('%Y%m%d-%H%M%S')}")
    created = not out.exists()
    try:
        with Stopwatch() as elapsed:
            if args.seeds is not None:
                run_seeds(config, args.seeds, out, progress=progress)
            else:
                metrics = train(config, out, resume=args.resume, progress=progress)
    except KeyboardInterrupt:
        _report_interrupt(out, args.seeds is not None, created)
        return 130
    if args.seeds is not None:
        print(f"wrote {out}/summary.json and summary.md ({elapsed.seconds:.0f} s)")
        return 0
    _print_metrics(metrics["test"], metrics["early"])
    print(f"wrote {out}/ (model.pt, metrics.json, loss/confusion/roc/early/examples.png) in {elapsed.seconds:.0f} s")
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


def run(args, argv: list[str]) -> int:
    """Run the parsed ``train``/``evaluate`` command; a bad input is one line on stderr and exit code 2."""
    from .evaluate import CheckpointError

    try:
        if args.command == "train":
            return cmd_train(args, argv)
        return cmd_evaluate(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, CheckpointError, DataIntegrityError,
            MissingExtraError, BackendUnavailableError) as exc:
        print(f"ecgkern: error: {exc}", file=sys.stderr)
        return 2
