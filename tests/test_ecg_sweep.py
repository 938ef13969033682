"""`ecgkern train --seeds N`: one summary over seeds, and a rerun reuses the finished seeds."""
import json

import numpy as np
import pytest
import torch

from ecgkern.ecg.sweep import run_seeds
from ecgkern.ecg.train import TrainConfig


def test_seed_sweep_summary_and_reuse(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = TrainConfig(limit=32, epochs=1, hidden_size=4, batch_size=16, seed=5, task="multiclass", split="ucr")
        lines = []
        summary = run_seeds(cfg, 2, tmp_path, log=lines.append, progress=False, name="tiny")
        assert summary["seeds"] == [5, 6]
        runs = [json.loads((tmp_path / f"seed-{s}" / "metrics.json").read_text()) for s in (5, 6)]
        accs = [r["test"]["accuracy"] for r in runs]
        assert summary["test"]["accuracy"]["mean"] == pytest.approx(np.mean(accs))
        assert summary["test"]["accuracy"]["std"] == pytest.approx(np.std(accs, ddof=1))
        assert len(summary["per_class_recall"]) == 5 and set(summary["early_roc_auc"]) == {"0.50", "1.00"}
        assert json.loads((tmp_path / "summary.json").read_text()) == summary
        md = (tmp_path / "summary.md").read_text()
        assert "macro one-vs-rest ROC-AUC" in md and "class 5" in md
        lines.clear()
        assert run_seeds(cfg, 2, tmp_path, log=lines.append, progress=False, name="tiny") == summary
        assert sum("already done" in line for line in lines) == 2
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(ValueError, match="seeds"):
        run_seeds(cfg, 0, tmp_path)
