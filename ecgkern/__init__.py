"""ecgkern: one explicit-gate LSTM recurrence, five backends, one drop-in torch.nn.LSTM."""
from .backends import BackendStatus, BackendUnavailableError, available_backends
from .lstm import LSTM

# isort: split
# After .lstm: importing the submodule ``ecgkern.lstm`` binds the name ``lstm`` to it, so the
# functional ``lstm`` must come last.
from .functional import lstm

__all__ = ["LSTM", "lstm", "available_backends", "BackendStatus", "BackendUnavailableError"]
__version__ = "0.1.0"
