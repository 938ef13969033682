"""The ECG classifier: ecgkern.LSTM + a linear head on the last hidden state."""
from __future__ import annotations

import torch
from torch import nn

from ..lstm import LSTM

# The keys of a model config (everything needed to rebuild the module from a checkpoint).
MODEL_KEYS = ("num_classes", "hidden_size", "num_layers", "bidirectional", "dropout", "backend", "head")
HEADS = ("last", "pool")


class ECGClassifier(nn.Module):
    """Batch-first [B, T, 1] beats -> logits [B, C], from the final hidden state(s).

    ``head="last"``: a linear layer on the last hidden state (the notebook's model).
    ``head="pool"``: on [last, mean over steps, max over steps] of the last layer's outputs, which
    gives every step a direct gradient path (the prefix versions are running mean and max).

    With a unidirectional LSTM the hidden state after step t is exactly what a forward over
    the prefix x[:, :t+1] ends with, so ``step_logits`` gives every prefix's logits in one pass.
    """

    def __init__(self, num_classes: int, hidden_size: int = 64, num_layers: int = 1,
                 bidirectional: bool = False, dropout: float = 0.0, backend: str = "auto", head: str = "last"):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
        self.config = {
            "num_classes": num_classes, "hidden_size": hidden_size, "num_layers": num_layers,
            "bidirectional": bidirectional, "dropout": dropout, "backend": backend, "head": head,
        }
        self.lstm = LSTM(1, hidden_size, num_layers=num_layers, batch_first=True,
                         dropout=dropout if num_layers > 1 else 0.0,
                         bidirectional=bidirectional, backend=backend)
        self.drop = nn.Dropout(dropout)
        features = hidden_size * (2 if bidirectional else 1) * (3 if head == "pool" else 1)
        self.head = nn.Linear(features, num_classes)

    @classmethod
    def from_config(cls, config: dict) -> ECGClassifier:
        return cls(**{k: config[k] for k in MODEL_KEYS})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, (h_n, _) = self.lstm(x)
        if self.lstm.bidirectional:
            last = torch.cat([h_n[-2], h_n[-1]], dim=1)  # last layer, forward and reverse
        else:
            last = h_n[-1]
        if self.config["head"] == "pool":
            last = torch.cat([last, out.mean(1), out.amax(1)], dim=1)
        return self.head(self.drop(last))

    def step_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits after every step, [B, T, C]: entry t is the model's output on x[:, :t+1]."""
        if self.lstm.bidirectional:
            raise ValueError("per-step logits need a unidirectional LSTM (a reverse direction sees the future)")
        out, _ = self.lstm(x)
        if self.config["head"] == "pool":
            steps = torch.arange(1, out.shape[1] + 1, device=out.device, dtype=out.dtype).view(1, -1, 1)
            out = torch.cat([out, out.cumsum(1) / steps, out.cummax(1).values], dim=2)
        return self.head(self.drop(out))
