"""Seed sweeps: N runs of one config, then one summary JSON + Markdown table (mean ± std)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_text
from .train import TrainConfig, train

SUMMARY_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc")
EARLY_POINTS = (0.5, 1.0)


def _stat(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "values": [float(x) for x in v]}


def summarize(runs: list[dict], name: str = "") -> dict:
    """Mean ± sample std (ddof=1) over the runs' test metrics, early AUCs, per-class recall, time."""
    first = runs[0]
    config = {k: v for k, v in first["config"].items() if k != "seed"}
    early = {f"{p:.2f}": _stat([next(e["roc_auc"] for e in r["early"] if abs(e["fraction"] - p) < 1e-9) for r in runs])
             for p in EARLY_POINTS}
    return {
        "name": name,
        "config": config,
        "seeds": [r["config"]["seed"] for r in runs],
        "backend": first["backend"], "device": first["device"], "threads": first["threads"], "torch": first["torch"],
        "data": first["data"],
        "test": {m: _stat([r["test"][m] for r in runs]) for m in SUMMARY_METRICS},
        "roc_auc_kind": first["test"]["roc_auc_kind"],
        "per_class_recall": {c: _stat([r["test"]["per_class_recall"][k] for r in runs])
                             for k, c in enumerate(first["data"]["class_names"])},
        "early_roc_auc": early,
        "early_curve_mean": [{"fraction": e["fraction"], "prefix_len": e["prefix_len"],
                              "roc_auc": float(np.mean([r["early"][i]["roc_auc"] for r in runs]))}
                             for i, e in enumerate(first["early"])],
        "train_seconds": _stat([r["timing"]["train_seconds"] for r in runs]),
        "best_epoch": [r["best_epoch"] for r in runs],
    }


def _pm(stat: dict, digits: int = 3) -> str:
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def markdown(summary: dict) -> str:
    s = summary
    n = len(s["seeds"])
    lines = [
        f"### {s['name'] or 'sweep'}: {s['config']['task']}, {s['config']['split']} split, {n} seeds",
        "",
        f"test n={s['data']['test']}; mean ± std (ddof=1) over seeds {s['seeds']}; backend {s['backend']} on "
        f"{s['device']}, {s['threads']} threads; train time per seed {s['train_seconds']['mean']:.0f} s.",
        "",
        "| accuracy | balanced acc. | macro-F1 | " + s["roc_auc_kind"] + " | AUC @50% | AUC @100% |",
        "|---|---|---|---|---|---|",
        "| " + " | ".join([_pm(s["test"][m]) for m in SUMMARY_METRICS]
                         + [_pm(s["early_roc_auc"][k]) for k in ("0.50", "1.00")]) + " |",
        "",
        "| per-class recall | " + " | ".join(s["per_class_recall"]) + " |",
        "|---|" + "---|" * len(s["per_class_recall"]),
        "| mean ± std | " + " | ".join(_pm(v, 2) for v in s["per_class_recall"].values()) + " |",
        "",
    ]
    return "\n".join(lines)


def run_seeds(config: TrainConfig, n: int, out, log=print, progress: bool = True, name: str = "") -> dict:
    """Seeds config.seed .. config.seed+n-1 into ``out/seed-K``; a finished seed is reused, an
    interrupted one resumed, so the sweep itself can be rerun after a kill."""
    if n < 1:
        raise ValueError(f"--seeds must be >= 1, got {n}")
    out = Path(out)
    runs = []
    for k in range(n):
        cfg = dataclasses.replace(config, seed=config.seed + k)
        run_dir = out / f"seed-{cfg.seed}"
        done = run_dir / "metrics.json"
        if done.is_file() and json.loads(done.read_text())["config"] == dataclasses.asdict(cfg):
            log(f"seed {cfg.seed}: already done ({done})")
            runs.append(json.loads(done.read_text()))
            continue
        log(f"seed {cfg.seed} ({k + 1}/{n})")
        runs.append(train(cfg, run_dir, resume=(run_dir / "checkpoint.pt").is_file(), log=log, progress=progress))
    summary = summarize(runs, name or out.name)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "summary.md", markdown(summary))
    log(markdown(summary))
    return summary
