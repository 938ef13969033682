"""``ecgkern bench``: every backend vs nn.LSTM and the reference loop."""
from __future__ import annotations

import argparse
import gc
import os
import shlex
import sys
from pathlib import Path

import torch

from ..timing import Stopwatch
from .allocator import MODES as MALLOC_MODES
from .allocator import apply as apply_malloc
from .cases import MODES, build_cases, dedupe, dtype_name, gemm_dtype, grid, parse_dtype, parse_shape, preset_shapes
from .measure import CPU_MEMORY_METHOD, CUDA_MEMORY_METHOD, Outcome, matmul_peak, measure_case
from .report import SCHEMA, case_record, compare, compare_text, load_json, markdown, write_json
from .runners import ALL_BACKENDS, CPP_FLOAT32, TORCH, extra_backends, make_inputs, make_runner, parse_backends, skip_reason, uses_autocast

QUICK = {"repeats": 10, "budget": 1.0}
FULL = {"repeats": 30, "budget": 3.0}


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ecgkern bench",
        description="Time every ecgkern LSTM backend against torch.nn.LSTM and the reference loop "
                    "(one process, interleaved), write a Markdown table, a JSON file and PNG plots.",
    )
    sel = p.add_argument_group("what to run")
    sel.add_argument("--quick", action="store_true", help="the small grid (ECG shape + a few points; < 10 min on 2 CPU cores)")
    sel.add_argument("--backends", default=None, help=f"comma-separated, from: {', '.join(ALL_BACKENDS)} ('torch' = nn.LSTM); "
                     "default all. nn.LSTM and reference are always timed (they are the baselines)")
    sel.add_argument("--shapes", nargs="+", default=None, metavar="SHAPE",
                     help="presets ecg|quick|full and/or shapes like B64,T140,H64 (I<input> optional); default full (quick with --quick)")
    sel.add_argument("--batch", type=_ints, help="grid instead of --shapes: batch sizes, e.g. 1,16,64")
    sel.add_argument("--hidden", type=_ints, help="grid: hidden sizes (with --batch)")
    sel.add_argument("--seq", type=_ints, help="grid: sequence lengths (with --batch; default 140)")
    sel.add_argument("--input-size", type=int, default=1, help="input features for grid shapes (default 1, as ECG5000)")
    sel.add_argument("--modes", default=",".join(MODES), help="fwd (no_grad forward), fwdbwd (training step); default both")
    sel.add_argument("--device", default=None, help="cpu, cuda or cpu,cuda (default: cuda when available, else cpu)")
    sel.add_argument("--dtype", default=None, help="comma-separated (default float32 on CPU; float32,bfloat16,float16 on CUDA)")
    sel.add_argument("--train", action="store_true", help="instead of the grid: time the default ECG5000 training per backend")
    sel.add_argument("--train-epochs", type=int, default=20)
    sel.add_argument("--train-limit", type=int, default=None, help="train on the first N beats only (a smoke test)")
    how = p.add_argument_group("how to measure")
    how.add_argument("--repeats", type=int, default=None,
                     help=f"most timed calls per backend and case (default {FULL['repeats']}, quick {QUICK['repeats']})")
    how.add_argument("--min-repeats", type=int, default=3, help="fewest timed calls per backend and case (default 3)")
    how.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                     help=f"stop a backend's repeats once they add up to this, after --min-repeats "
                          f"(default {FULL['budget']}, quick {QUICK['budget']})")
    how.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    how.add_argument("--peak-size", type=int, default=None, metavar="N",
                     help="matrix size of the matmul-peak measurement (default 2048 on CPU, 8192 on CUDA)")
    how.add_argument("--malloc", choices=MALLOC_MODES, default="default",
                     help="C heap behaviour: default (glibc's: big buffers page-fault on every call) or steady "
                          "(freed memory stays in the process, as with jemalloc); see benchmarks/README.md")
    how.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    how.add_argument("--seed", type=int, default=0)
    out = p.add_argument_group("output")
    out.add_argument("--out", default="bench-results", help="output folder (default ./bench-results)")
    out.add_argument("--name", default=None, help="file name prefix (default <device>-<quick|full|custom|train>)")
    out.add_argument("--resume", action="store_true", help="keep the cases already in the output JSON, run the rest")
    out.add_argument("--no-plots", action="store_true")
    out.add_argument("--no-progress", action="store_true")
    cmp = p.add_argument_group("compare")
    cmp.add_argument("--compare", metavar="OLD.json", help="after the run, list cases faster/slower than OLD.json beyond the noise")
    cmp.add_argument("--against", metavar="NEW.json", help="with --compare: compare two files, run nothing")
    cmp.add_argument("--threshold", type=float, default=0.05, help="smallest relative change reported (default 0.05)")
    return p


def _devices(text: str | None) -> list[str]:
    if text is None:
        return ["cuda" if torch.cuda.is_available() else "cpu"]
    devices = dedupe(d.strip().lower() for d in text.split(",") if d.strip())
    for d in devices:
        if d not in ("cpu", "cuda"):
            raise ValueError(f"unknown device {d!r}; choose cpu, cuda or cpu,cuda")
        if d == "cuda" and not torch.cuda.is_available():
            raise ValueError("device cuda requested but CUDA is not available here (torch "
                             f"{torch.__version__}, CUDA runtime {torch.version.cuda})")
    if not devices:
        raise ValueError("--device is empty")
    return devices


def _dtypes(text: str | None, device: str) -> list[torch.dtype]:
    if text is None:
        return [torch.float32] if device == "cpu" else [torch.float32, torch.bfloat16, torch.float16]
    return dedupe(parse_dtype(t) for t in text.split(",") if t.strip())


def _shapes(args, device: str):
    if args.batch or args.hidden or args.seq:
        if not (args.batch and args.hidden):
            raise ValueError("a grid needs both --batch and --hidden (and optionally --seq)")
        return grid(args.batch, args.hidden, args.seq or [140], args.input_size)
    specs = args.shapes or ["quick" if args.quick else "full"]
    shapes = []
    for spec in specs:
        if spec.lower() in ("ecg", "quick", "full"):
            shapes += preset_shapes(spec.lower(), device, args.input_size)
        else:
            shapes.append(parse_shape(spec, args.input_size))
    return dedupe(shapes)


def _modes(text: str) -> list[str]:
    modes = dedupe(m.strip().lower() for m in text.split(",") if m.strip())
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ValueError(f"unknown mode(s) {', '.join(bad) or repr(text)}; choose from {', '.join(MODES)}")
    return modes


def _default_name(args, devices) -> str:
    kind = "train" if args.train else "quick" if args.quick and not (args.shapes or args.batch) else \
        "full" if not (args.shapes or args.batch) else "custom"
    return f"{'-'.join(devices)}-{kind}" + ("" if args.malloc == "default" else f"-{args.malloc}")


def _progress(total: int, disable: bool):
    from tqdm.auto import tqdm

    # off when stderr is not a terminal: a log file would fill with carriage-return redraws
    return tqdm(total=total, unit="case", file=sys.stderr, disable=disable or not sys.stderr.isatty(),
                dynamic_ncols=True, mininterval=1.0)


def plan(args, devices) -> tuple[list, dict]:
    """Every case to run (validating shapes, dtypes and modes) and the dtypes per device."""
    shapes = {d: _shapes(args, d) for d in devices}
    dtypes = {d: _dtypes(args.dtype, d) for d in devices}
    modes = _modes(args.modes)
    cases = [c for d in devices for c in build_cases([d], dtypes, modes, shapes[d])]
    # The float32 peak too where float32 cpp is timed beside autocast cases (its % of peak).
    peak_dtypes = {d: dedupe([gemm_dtype(d, dt) for dt in dtypes[d]]
                             + [torch.float32] * any(uses_autocast(c) for c in cases if c.device == d))
                   for d in devices}
    return cases, peak_dtypes


def _measure_peaks(result, devices, dtypes, size) -> None:
    """Measure (or re-measure) the matmul peak per device/dtype; keep every run and the best."""
    for d in devices:
        for dt in dtypes[d]:
            entry = result["matmul_peak"].setdefault(f"{d}/{dtype_name(dt)}", {"runs": []})
            try:
                entry["runs"].append(matmul_peak(d, dt, size))
            except Exception as exc:  # noqa: BLE001 - e.g. a dtype without a GEMM on this device
                entry["error"] = str(exc).splitlines()[0]
                continue
            best = max(entry["runs"], key=lambda r: r["gflops_best"])
            entry.update(size=best["size"], gflops_best=best["gflops_best"])


def run_grid(args, cases, dtypes, backends, explicit, result, path: Path) -> None:
    """Measure every case, writing the JSON after each so a long run can be resumed."""
    devices = dedupe(c.device for c in cases)
    done = {c["key"] for c in result["cases"]}
    todo = [c for c in cases if c.key not in done]
    if todo:
        _measure_peaks(result, devices, dtypes, args.peak_size)
    bar = _progress(len(todo), args.no_progress)
    for case in todo:
        bar.set_description(case.key)
        case_time = Stopwatch()
        inputs = make_inputs(case, args.seed)
        outcomes: dict[str, Outcome] = {}
        runners = {}
        names = backends + extra_backends(case, backends)
        for name in names:
            reason = skip_reason("cpp" if name == CPP_FLOAT32 else name, case.device, case.dtype, explicit)
            if reason:
                outcomes[name] = Outcome("skipped", reason)
                continue
            try:
                runners[name] = make_runner(name, case, inputs)
            except Exception as exc:  # noqa: BLE001 - recorded (OOM or error), the run goes on
                outcomes[name] = Outcome.failed(exc)
        calls = [0]

        def tick(name, calls=calls):
            calls[0] += 1
            bar.set_postfix_str(f"{name} call {calls[0]}", refresh=True)

        outcomes.update(measure_case(
            runners, case.device, repeats=args.repeats, min_repeats=args.min_repeats, budget_s=args.budget,
            memory=not args.no_memory, on_call=tick,
        ))
        peaks = {k: v.get("gflops_best") for k, v in result["matmul_peak"].items()}
        result["cases"].append(case_record(case, {n: outcomes[n] for n in names}, peaks))
        result["cases"][-1]["wall_s"] = case_time.seconds  # the whole case, warm-ups included
        write_json(result, path)
        del runners, inputs
        gc.collect()
        bar.update(1)
    bar.close()
    if todo:  # measured again at the end: the best of both is the peak (a shared machine drifts)
        _measure_peaks(result, devices, dtypes, args.peak_size)
        for rec in result["cases"]:
            for b in rec["backends"].values():
                peak = result["matmul_peak"].get(f"{rec['device']}/{b.get('peak_dtype', rec['dtype'])}", {}).get("gflops_best")
                if b.get("gflops") and peak:
                    b["pct_of_peak"] = 100 * b["gflops"] / peak
    result["environment"]["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    write_json(result, path)


def run_train(args, devices, backends, explicit, result, path: Path) -> None:
    """``--train``: the ECG5000 training per backend (the harness' model is ecgkern.LSTM, so no nn.LSTM row)."""
    from .train import train_benchmark

    lstm_backends = [b for b in backends if b != TORCH]
    result["train"] = []
    for d in devices:
        bar = _progress(args.train_epochs * len(lstm_backends), args.no_progress)
        result["train"] += train_benchmark(
            lstm_backends, d, args.train_epochs, limit=args.train_limit, seed=args.seed,
            skip=lambda b, d=d: skip_reason(b, d, torch.float32, explicit),
            on_epoch=lambda b, e, d=d, bar=bar: (bar.set_description(f"train {d} {b} epoch {e}"), bar.update(1)),
        )
        bar.close()
    write_json(result, path)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed by argparse
        return int(exc.code or 0)
    try:
        return _main(args, argv)
    except ValueError as exc:
        print(f"ecgkern bench: error: {exc}", file=sys.stderr)
        return 2


def _main(args, argv) -> int:
    if args.against and not args.compare:
        raise ValueError("--against needs --compare OLD.json")
    if args.compare and args.against:  # compare two files; nothing is run
        print(compare_text(compare(load_json(args.compare), load_json(args.against), args.threshold)))
        return 0
    old = load_json(args.compare) if args.compare else None  # fail before a long run, not after
    for name, value, low in (("--repeats", args.repeats, 1), ("--min-repeats", args.min_repeats, 1),
                             ("--threads", args.threads, 1), ("--peak-size", args.peak_size, 1), ("--train-epochs", args.train_epochs, 1)):
        if value is not None and value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if args.budget is not None and args.budget < 0:
        raise ValueError(f"--budget must be >= 0, got {args.budget}")
    defaults = QUICK if args.quick else FULL
    args.repeats = args.repeats or defaults["repeats"]
    args.budget = defaults["budget"] if args.budget is None else args.budget
    args.min_repeats = min(args.min_repeats, args.repeats)
    if args.threads:
        torch.set_num_threads(args.threads)
    allocator = apply_malloc(args.malloc)  # before anything is allocated for the cases
    devices = _devices(args.device)
    backends, explicit = parse_backends(args.backends)
    cases, dtypes = plan(args, devices)  # bad shapes/dtypes/modes fail here, before anything is measured
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = args.name or _default_name(args, devices)
    path = out / f"{name}.json"

    from .env import environment

    result = load_json(path) if args.resume and path.exists() else None
    if result is not None:
        earlier = (result["environment"].get("allocator") or {}).get("mode", "default")
        if earlier != args.malloc:
            raise ValueError(f"{path} was measured with --malloc {earlier}; resume it with the same setting "
                             f"(not {args.malloc}) or write to another --name")
    if result is None:
        result = {
            "schema": SCHEMA,
            "command": "ecgkern bench " + shlex.join(argv if argv is not None else sys.argv[1:]),
            "environment": {**environment(devices), "allocator": allocator},
            "settings": {"repeats": args.repeats, "min_repeats": args.min_repeats, "budget_s": args.budget,
                         "memory_method": None if args.no_memory else
                         "; ".join(f"{d}: {CUDA_MEMORY_METHOD if d == 'cuda' else CPU_MEMORY_METHOD}" for d in devices),
                         "seed": args.seed, "backends": backends},
            "matmul_peak": {},
            "cases": [],
        }
    if args.train:
        run_train(args, devices, backends, explicit, result, path)
    else:
        run_grid(args, cases, dtypes, backends, explicit, result, path)
    md = markdown(result)
    (out / f"{name}.md").write_text(md + "\n")
    written = [path, out / f"{name}.md"]
    if not args.no_plots and result["cases"]:
        from .plots import plot_result

        written += plot_result(result, out / name)
    print(markdown(result, full=False))
    print("\nwrote " + ", ".join(str(p) for p in written))
    if old is not None:
        print()
        print(compare_text(compare(old, result, args.threshold)))
    return 0
