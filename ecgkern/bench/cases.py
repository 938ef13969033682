"""What gets benchmarked: shapes, grids, modes and the cases built from them."""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import torch

MODES = ("fwd", "fwdbwd")  # no_grad forward; forward + backward of layer + linear head
MODE_TITLES = {"fwd": "forward (no_grad)", "fwdbwd": "forward+backward (layer + linear head)"}

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float64": torch.float64, "fp64": torch.float64,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


@dataclass(frozen=True, order=True)
class Shape:
    batch: int
    seq: int
    input: int
    hidden: int

    @property
    def label(self) -> str:
        return f"B{self.batch}-T{self.seq}-I{self.input}-H{self.hidden}"

    def as_dict(self) -> dict:
        return {"batch": self.batch, "seq": self.seq, "input": self.input, "hidden": self.hidden}

    @classmethod
    def from_dict(cls, d: dict) -> Shape:
        return cls(int(d["batch"]), int(d["seq"]), int(d["input"]), int(d["hidden"]))


ECG = Shape(batch=64, seq=140, input=1, hidden=64)  # the ECG5000 model's shape

# The default grid: batch x hidden x T, input size 1 as in ECG5000 (--input-size changes it).
GRID_BATCH = (1, 16, 64, 256)
GRID_HIDDEN = (32, 64, 128, 256, 512)
GRID_SEQ = (140, 1024)
# --quick: the ECG shape plus enough points for a speedup-vs-batch (H=64) and -vs-hidden (B=64) curve.
QUICK_BATCH_H64 = (1, 16, 256)
QUICK_HIDDEN_B64 = (256,)
QUICK_EXTRA = (Shape(256, 140, 1, 256),)  # the large-batch, large-hidden training target
GPU_EXTRA = (Shape(16, 1024, 1, 768),)  # a long, wide GPU case (FlashRNN compares at this size)

_KEYS = {"b": "batch", "batch": "batch", "t": "seq", "seq": "seq", "i": "input", "input": "input",
         "h": "hidden", "hidden": "hidden"}
_TOKEN = re.compile(r"^([a-z]+)\s*=?\s*(\d+)$")


def parse_shape(text: str, default_input: int = 1) -> Shape:
    """``B64,T140,H64[,I1]`` (also ``b=64 t=140 h=64``, or ``-``/``x`` separated) -> Shape."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"empty shape string {text!r}; expected e.g. 'B64,T140,H64' or 'B64,T140,I1,H64'")
    values = {}
    for token in re.split(r"[,\s;x\-]+", text.strip().lower()):
        if not token:
            continue
        m = _TOKEN.match(token)
        if not m or m.group(1) not in _KEYS:
            raise ValueError(
                f"bad shape string {text!r}: cannot read {token!r}; expected tokens B<batch>, T<seq>, "
                "H<hidden> and optionally I<input>, e.g. 'B64,T140,H64'"
            )
        key, value = _KEYS[m.group(1)], int(m.group(2))
        if key in values:
            raise ValueError(f"bad shape string {text!r}: {key} given twice")
        if value <= 0:
            raise ValueError(f"bad shape string {text!r}: {key} must be positive, got {value}")
        values[key] = value
    missing = [k for k in ("batch", "seq", "hidden") if k not in values]
    if missing:
        raise ValueError(f"bad shape string {text!r}: missing {', '.join(missing)} (need B, T and H)")
    values.setdefault("input", default_input)
    return Shape(**values)


def grid(batches, hiddens, seqs, input_size: int = 1) -> list[Shape]:
    return [Shape(b, t, input_size, h) for b, h, t in itertools.product(batches, hiddens, seqs)]


def preset_shapes(name: str, device_type: str = "cpu", input_size: int = 1) -> list[Shape]:
    """``ecg``, ``quick`` or ``full`` (the default grid; on CUDA plus the B16-H768-T1024 case)."""
    ecg = [Shape(ECG.batch, ECG.seq, ECG.input, ECG.hidden)]
    if name == "ecg":
        return ecg
    if name == "quick":
        shapes = ecg + grid(QUICK_BATCH_H64, (64,), (140,), input_size) + grid((64,), QUICK_HIDDEN_B64, (140,), input_size)
        shapes += [Shape(s.batch, s.seq, input_size, s.hidden) for s in QUICK_EXTRA]
    elif name == "full":
        shapes = ecg + grid(GRID_BATCH, GRID_HIDDEN, GRID_SEQ, input_size)
        if device_type == "cuda":
            shapes += [Shape(s.batch, s.seq, input_size, s.hidden) for s in GPU_EXTRA]
    else:
        raise ValueError(f"unknown shape preset {name!r}; choose ecg, quick or full")
    return dedupe(shapes)


def dedupe(shapes) -> list[Shape]:
    seen, out = set(), []
    for s in shapes:
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def parse_dtype(text: str) -> torch.dtype:
    try:
        return DTYPES[text.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {text!r}; choose one of float32, float64, bfloat16, float16") from None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def gemm_dtype(device: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype the GEMMs of a ``dtype`` case run in, whose matmul peak its % of peak is against:
    float32 for a 16-bit dtype this CPU has no GEMM instructions for (ecgkern widens those; the
    peak of ATen's fallback loop, well under 1 GFLOP/s, would say nothing)."""
    from .. import _build

    if str(device).startswith("cpu") and not _build.cpu_gemm_is_fast(dtype):
        return torch.float32
    return dtype


def gemm_flops(shape: Shape, mode: str) -> int:
    """Matrix-multiply FLOPs of one call (2 per multiply-add); the pointwise gate math is not counted.

    Forward: input projection 2*T*B*I*4H + recurrent GEMMs 2*T*B*H*4H. Backward (weights only,
    the input needs no grad): dh through W_hh, dW_hh and dW_ih, i.e. 2*T*B*4H*(2H + I).
    The linear head of the training case is negligible and left out.
    """
    T, B, I, H = shape.seq, shape.batch, shape.input, shape.hidden
    fwd = 2 * T * B * 4 * H * (I + H)
    if mode == "fwd":
        return fwd
    return fwd + 2 * T * B * 4 * H * (2 * H + I)


@dataclass(frozen=True)
class Case:
    device: str
    dtype: torch.dtype
    mode: str
    shape: Shape

    @property
    def key(self) -> str:
        return f"{self.device}/{dtype_name(self.dtype)}/{self.mode}/{self.shape.label}"

    @property
    def flops(self) -> int:
        return gemm_flops(self.shape, self.mode)


def build_cases(devices, dtypes_per_device: dict, modes, shapes) -> list[Case]:
    """Cases ordered cheapest first (the ECG shape leads), so early results arrive early."""
    cases = [Case(d, dt, m, s) for d in devices for dt in dtypes_per_device[d] for s in shapes for m in modes]
    return sorted(cases, key=lambda c: (c.shape != ECG, c.device, c.flops, c.shape, c.mode, str(c.dtype)))
