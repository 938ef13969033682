"""Placeholder until this backend lands: reports itself unavailable."""
import torch

NAME = "cuda"


def unavailable_reason(device_type=None):
    return "not implemented yet"


def supports(device_type, dtype):
    return "not implemented yet"


def recurrence(xg, w_hh, h0, c0):
    raise NotImplementedError
