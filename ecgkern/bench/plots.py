"""PNG plots of a result: speedup vs batch and vs hidden size (log scale), and a roofline view."""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator

from .cases import ECG, MODE_TITLES, MODES
from .report import BASELINES, _backend_order, _groups
from .runners import ALL_BACKENDS


def _color(backend: str) -> str:
    """One colour per backend in every panel."""
    i = ALL_BACKENDS.index(backend) if backend in ALL_BACKENDS else len(ALL_BACKENDS)
    return f"C{i}"


def _fixed(values, preferred):
    return preferred if preferred in values else Counter(values).most_common(1)[0][0]


def _series(cases, axis: str, key: str):
    """{backend: [(x, speedup)]} along ``axis`` (batch|hidden), other dimensions fixed."""
    shapes = [c["shape"] for c in cases]
    seq = _fixed([s["seq"] for s in shapes], ECG.seq)
    other = "hidden" if axis == "batch" else "batch"
    fixed = _fixed([s[other] for s in shapes if s["seq"] == seq], getattr(ECG, other))
    out, base = {}, BASELINES[key]
    for c in cases:
        s = c["shape"]
        if s["seq"] != seq or s[other] != fixed:
            continue
        for name, rec in c["backends"].items():
            v = rec.get(f"speedup_{key}")
            if v is not None and name != base:
                out.setdefault(name, []).append((s[axis], v))
    return {n: sorted(p) for n, p in out.items()}, f"T={seq}, {other}={fixed}"


def plot_result(result: dict, prefix: Path) -> list[Path]:
    """Write the PNGs next to ``prefix`` (one set per device/dtype); returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    by_dd: dict[tuple, list] = {}
    for (dev, dt, mode), cases in _groups(result["cases"]).items():
        by_dd.setdefault((dev, dt), []).append((mode, cases))
    for (dev, dt), groups in by_dd.items():
        modes = {m: c for m, c in groups}
        for axis in ("batch", "hidden"):
            fig, axes = plt.subplots(len(MODES), len(BASELINES), figsize=(11, 8), squeeze=False)
            for i, mode in enumerate(MODES):
                for j, key in enumerate(BASELINES):
                    ax = axes[i][j]
                    series, fixed = _series(modes.get(mode, []), axis, key) if mode in modes else ({}, "")
                    for name, pts in series.items():
                        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name, color=_color(name))
                    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
                    _style(ax, f"{axis} size ({fixed})", f"speedup vs {BASELINES[key]}", MODE_TITLES[mode],
                           sorted({p[0] for pts in series.values() for p in pts}))
            machine = result["environment"].get("cpu_model" if dev == "cpu" else "gpu_name")
            written.append(_save(plt, fig, f"ecgkern speedup vs {axis} size — {dev} {dt} ({machine})",
                                 f"{prefix}_{dev}_{dt}_speedup_vs_{axis}.png"))
        written.append(_roofline(plt, result, dev, dt, groups, prefix))
    return written


def _roofline(plt, result, dev, dt, groups, prefix) -> Path:
    peak = result.get("matmul_peak", {}).get(f"{dev}/{dt}", {}).get("gflops_best")
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4.5), squeeze=False)
    for ax, (mode, cases) in zip(axes[0], groups):
        best: dict[float, tuple] = {}  # per case, the highest point: where its shape label goes
        for name in _backend_order(cases):
            pts = [(c["flops"], c["backends"][name]["gflops"], c["shape"]) for c in cases
                   if c["backends"].get(name, {}).get("gflops")]
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=name, s=18, color=_color(name))
            for flops, gflops, shape in pts:
                if gflops > best.get(flops, (0,))[0]:
                    best[flops] = (gflops, shape)
        placed: list[tuple[float, float]] = []  # (log10 x, log10 y) of the labels drawn so far
        for flops, (gflops, shape) in sorted(best.items(), key=lambda kv: _shape_label(kv[1][1]) != _shape_label(ECG.as_dict())):
            x, y = math.log10(flops), math.log10(gflops)
            if any(abs(x - px) < 0.7 and abs(y - py) < 0.1 for px, py in placed):
                continue  # would overlap a label already drawn
            placed.append((x, y))
            ax.annotate(_shape_label(shape), (flops, gflops), textcoords="offset points", xytext=(0, 5),
                        ha="center", fontsize=6, color="dimgrey")
        if peak:
            ax.axhline(peak, color="red", lw=1, ls="--", label=f"matmul peak {peak:.0f} GFLOP/s")
        _style(ax, "GEMM FLOPs per call (labels: the case's shape, where they fit)", "achieved GFLOP/s", MODE_TITLES[mode])
        ax.xaxis.set_major_formatter(FuncFormatter(_si))
    return _save(plt, fig, f"ecgkern achieved GEMM rate vs measured matmul peak — {dev} {dt}",
                 f"{prefix}_{dev}_{dt}_roofline.png")


def _shape_label(shape: dict) -> str:
    return f"B{shape['batch']} H{shape['hidden']} T{shape['seq']}"


def _si(value, _pos=None) -> str:
    """1e6 -> 1M, 1e9 -> 1G: FLOP counts without exponents."""
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def _plain(value, _pos=None) -> str:
    """Tick text as written numbers (1, 16, 0.5, 2e+09), never 2^k or 10^k."""
    return f"{value:g}"


def _style(ax, xlabel: str, ylabel: str, title: str, xticks=None) -> None:
    """Log axes with plain tick labels: ``xticks`` (the sizes measured) on x when given."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    if xticks:
        ax.xaxis.set_major_locator(FixedLocator(xticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(_plain))
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(_plain))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _save(plt, fig, title: str, path: str) -> Path:
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
