"""The ECG5000 harness: data, model, training, evaluation, plots and the ``ecgkern`` CLI."""
from .data import ECG5000, Split, load_ecg5000, make_split
from .models import ECGClassifier

__all__ = ["ECG5000", "Split", "load_ecg5000", "make_split", "ECGClassifier"]
