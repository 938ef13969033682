"""The ``ecgkern`` command (also ``python -m ecgkern``): train, evaluate, info, bench.

This module only dispatches: ``train``/``evaluate`` belong to the ECG harness (``ecgkern.ecg.cli``),
``bench`` to the benchmarks (``ecgkern.bench``), ``info`` is the backend table.
"""
from __future__ import annotations

import argparse
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    from .ecg import cli as ecg_cli

    parser = argparse.ArgumentParser(prog="ecgkern", description="ecgkern: LSTM backends and the ECG5000 harness")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,evaluate,info,bench}")
    ecg_cli.add_commands(sub)
    sub.add_parser("info", help="torch version, threads, devices and the LSTM backend table")
    sub.add_parser("bench", help="LSTM backend benchmarks (ecgkern bench --help)", add_help=False)
    return parser


def cmd_info() -> int:
    import torch

    import ecgkern

    print(f"ecgkern {ecgkern.__version__}, torch {torch.__version__}, python {sys.version.split()[0]}")
    from . import _build
    from .bench.env import cpu_model

    print(f"CPU: {cpu_model()}, threads: {torch.get_num_threads()} (os.cpu_count()={os.cpu_count()})")
    print(_build.cpu_kernel_summary())
    from .backends import cpp

    print(cpp.input_projection_summary())
    cuda = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    print("devices: cpu" + "".join(f", cuda:{i} ({n})" for i, n in enumerate(cuda)))
    print(f"{'backend':<10} {'available':<10} reason / note")
    for name, st in ecgkern.available_backends().items():
        print(f"{name:<10} {'yes' if st.available else 'no':<10} {st.reason or st.note or ''}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":  # everything after `bench` belongs to the benchmark's own parser
        from .bench import main as bench_main

        return bench_main(argv[1:]) or 0
    args = build_parser().parse_args(argv)
    if args.command == "info":
        return cmd_info()
    from .ecg import cli as ecg_cli

    return ecg_cli.run(args, argv)


if __name__ == "__main__":
    sys.exit(main())
