"""ecgkern: one explicit-gate LSTM recurrence, five backends, one drop-in torch.nn.LSTM."""
from .backends import BackendStatus, BackendUnavailableError, available_backends
from .functional import lstm  # after .lstm: importing the submodule would rebind the name `lstm`
from .lstm import LSTM

__all__ = ["LSTM", "lstm", "available_backends", "BackendStatus", "BackendUnavailableError"]
__version__ = "0.1.0"
