"""Results: the JSON record, the Markdown tables and ``--compare``.

The JSON holds every raw figure (each repeat's time, first-call time, peak memory, matmul
peak, environment); everything in the Markdown is derived from it, so a JSON file can be
re-rendered or compared later.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from ..atomic import atomic_write_text
from .cases import MODE_TITLES, Case, Shape, dedupe, dtype_name, gemm_dtype
from .measure import Outcome
from .runners import CPP_FLOAT32, REFERENCE, TORCH

SCHEMA = "ecgkern-bench/1"
BASELINES = {"vs_nn_lstm": TORCH, "vs_reference": REFERENCE}


def case_record(case: Case, outcomes: dict[str, Outcome], peaks: dict) -> dict:
    """One case's JSON record: raw figures plus the derived medians, ratios and GFLOP/s.

    ``peaks``: best matmul GFLOP/s per "device/dtype"; each row's % of peak is against the
    peak of the dtype its GEMMs run in (float32 for the float32 cpp row of an autocast case).
    """
    backends = {}
    for name, out in outcomes.items():
        rec = asdict(out)
        rec["repeats"] = len(out.times_s)
        rec.update(out.stats())
        rec["peak_dtype"] = "float32" if name == CPP_FLOAT32 else dtype_name(gemm_dtype(case.device, case.dtype))
        if "median_s" in rec:
            peak_gflops = peaks.get(f"{case.device}/{rec['peak_dtype']}")
            rec["gflops"] = case.flops / rec["median_s"] / 1e9
            rec["pct_of_peak"] = 100 * rec["gflops"] / peak_gflops if peak_gflops else None
        backends[name] = rec
    for rec in backends.values():
        for key, base in BASELINES.items():
            base_med = backends.get(base, {}).get("median_s")
            rec[f"speedup_{key}"] = base_med / rec["median_s"] if base_med and rec.get("median_s") else None
    return {
        "key": case.key, "device": case.device, "dtype": dtype_name(case.dtype), "mode": case.mode,
        "shape": case.shape.as_dict(), "flops": case.flops, "backends": backends,
    }


def write_json(result: dict, path: Path) -> None:
    atomic_write_text(path, json.dumps(result, indent=1, sort_keys=False))  # the run writes after each case


def load_json(path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"benchmark result file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f"{path} is not an ecgkern bench result (expected schema {SCHEMA!r})")
    return data


# ---------------------------------------------------------------------------------------------
# Markdown


def _fmt_time(s: float | None) -> str:
    if s is None:
        return "–"
    return f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s"


def _fmt_x(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}x"


def _fmt(v, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def _groups(cases: list[dict]) -> dict[tuple, list[dict]]:
    """Cases per (device, dtype, mode), rows ordered by T, then hidden, then batch."""
    groups: dict[tuple, list[dict]] = {}
    order = lambda c: tuple(c["shape"][k] for k in ("seq", "hidden", "batch", "input"))  # noqa: E731
    for c in sorted(cases, key=order):
        groups.setdefault((c["device"], c["dtype"], c["mode"]), []).append(c)
    return groups


def _backend_order(cases: list[dict]) -> list[str]:
    order = []
    for c in cases:
        order += [b for b in c["backends"] if b not in order]
    return order


def _cell(rec: dict) -> str:
    """A status cell: the reason when a backend was not measured."""
    if rec["status"] == "ok":
        return _fmt_time(rec.get("median_s"))
    return f"{rec['status'].upper()}: {rec.get('reason') or ''}".strip()


def _load(values) -> str:
    return "–" if not values else "/".join(f"{v:.1f}" for v in values)


def _widened(result: dict) -> list[tuple[str, str]]:
    """(device, dtype) of the cases whose GEMMs run in another dtype (``gemm_dtype``)."""
    return dedupe((c["device"], c["dtype"]) for c in result.get("cases", [])
                  for n, b in c["backends"].items() if n != CPP_FLOAT32 and b.get("peak_dtype", c["dtype"]) != c["dtype"])


def _device_dtypes(result: dict) -> set[tuple[str, str]]:
    return {(c["device"], c["dtype"]) for c in result.get("cases", [])}


def _allocator(info: dict | None) -> str:
    if not info:
        return "not recorded"
    mode = info.get("mode")
    text = {"default": "the C library's defaults (large buffers mapped and unmapped per call: page faults count)",
            "steady": "`--malloc steady` (freed memory kept in the process: repeated calls reuse warm pages)"}.get(mode, str(mode))
    env = ", ".join(f"{k}={v}" for k, v in (info.get("env") or {}).items())
    return f"{text}; {info.get('libc')}" + (f"; environment {env}" if env else "")


def machine_tag(result: dict, device: str, dtype: str | None = None) -> str:
    """The CPU model and ISA flags (and, with a dtype, that dtype's matmul peak) for a table header."""
    env = result["environment"]
    if device != "cpu":
        return env.get("gpu_name") or device
    isa = env.get("cpu_isa")
    flags = "ISA flags not recorded" if not isa else ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in isa.items()
                                                               if k in ("avx512f", "avx512_bf16", "amx_bf16"))
    tag = f"{env.get('cpu_model')}; {flags}"
    if env.get("isa_caps"):  # an ISA capped on purpose: say so wherever the machine is named
        caps = ", ".join(f"{k}={v}" for k, v in env["isa_caps"].items())
        tag += f"; ISA capped ({caps}): torch's CPU capability {env.get('torch_cpu_capability')}"
    if dtype is not None:
        entry = result.get("matmul_peak", {}).get(f"{device}/{dtype}", {})
        tag += f"; {dtype} {entry.get('size')}² matmul peak {_fmt(entry.get('gflops_best'), '.0f')} GFLOP/s"
    return tag


def environment_lines(result: dict) -> list[str]:
    env, st = result["environment"], result.get("settings", {})
    lines = [
        f"- machine: {machine_tag(result, 'cpu')} ({env.get('cpu_count')} CPUs, torch threads {env.get('torch_threads')})"
        + (f"; GPU {env['gpu_name']}" if env.get("gpu_name") else ""),
        f"- torch {env.get('torch')} (CUDA {env.get('cuda_runtime')}, oneDNN {'on' if env.get('mkldnn_enabled') else 'off'}),"
        f" triton {env.get('triton')}, Python {env.get('python')}; ecgkern {env.get('ecgkern')} at {env.get('ecgkern_commit')}",
        f"- run {env.get('date_utc')}, load average (1/5/15 min) at start {_load(env.get('load_average'))}, "
        f"at end {_load(env.get('load_average_end'))}; command: `{result.get('command')}`",
        f"- timing: first call apart (compile/JIT build), one warm-up call, then up to {st.get('repeats')} repeats "
        f"(at least {st.get('min_repeats')}, until {st.get('budget_s')} s per backend and case), backends interleaved "
        "(each round in an order balanced for what ran just before); "
        "median and IQR; every timing includes the input projection",
        "- backend load in this process (import, plus the JIT build when not cached): "
        + ", ".join(f"{k} {v:.2f} s" for k, v in (env.get("backend_load_s") or {}).items()),
        f"- peak memory: {st.get('memory_method')}",
        f"- C heap: {_allocator(env.get('allocator'))}",
        "- bfloat16/float16 on CPU: every layer runs in float32 under `torch.autocast` of that dtype (nn.LSTM's "
        f"mixed precision; nn.LSTM under the same autocast is the baseline); `{CPP_FLOAT32}` is the float32 cpp layer "
        "timed beside it, its % peak against the float32 peak",
        *[f"- {dt} on {dev}: no GEMM instructions for it on this CPU, so ecgkern's GEMMs run in float32 (widened, "
          "rounded once) and the rows' % peak is against the float32 peak" for dev, dt in _widened(result)],
        *(["- bfloat16 on CUDA: modules converted to it; torch never flattens bf16 cuDNN weights "
           "(`flatten_parameters` skips them), so nn.LSTM in bf16 compacts them on every call: compare with the "
           "float32 rows too"] if ("cuda", "bfloat16") in _device_dtypes(result) else []),
        "- GFLOP/s counts GEMM FLOPs only (input projection, recurrence and, for fwd+bwd, the weight-gradient "
        "and dh GEMMs); % peak is against the best square `torch.mm` measured in the same run:"
        + "".join(f" {k}: {_fmt(v.get('gflops_best'), '.1f')} GFLOP/s (n={v.get('size')}, best of "
                  f"{len(v.get('runs', []))} measurements, at start and end)" for k, v in result.get("matmul_peak", {}).items()),
    ]
    loads = [v[0] for v in (env.get("load_average"), env.get("load_average_end")) if v]
    if loads and env.get("cpu_count") and max(loads) > env["cpu_count"]:
        lines.append(f"- **warning**: the machine was shared (load average up to {max(loads):.1f} on "
                     f"{env['cpu_count']} CPUs): absolute times are inflated and noisy; the interleaved ratios less so")
    return lines


def headline_table(result: dict, shape: dict) -> list[str]:
    """The ECG-shape summary: per device/dtype/backend, fwd and fwd+bwd medians and ratios."""
    rows = ["| device | dtype | backend | fwd | fwd vs nn.LSTM | fwd vs reference | fwd % peak | fwd+bwd | fwd+bwd vs nn.LSTM | "
            "fwd+bwd vs reference | fwd+bwd % peak | train-step peak MiB |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    by = {(c["device"], c["dtype"], c["mode"]): c for c in result["cases"] if c["shape"] == shape}
    pairs = sorted({(d, t) for d, t, _ in by})
    for dev, dt in pairs:
        fwd, bwd = by.get((dev, dt, "fwd")), by.get((dev, dt, "fwdbwd"))
        for name in _backend_order([c for c in (fwd, bwd) if c]):
            f = (fwd or {}).get("backends", {}).get(name)
            b = (bwd or {}).get("backends", {}).get(name)
            cells = []
            for rec in (f, b):
                if rec is None:
                    cells += ["–", "–", "–", "–"]
                elif rec["status"] != "ok":
                    same = rec is b and f is not None and (f["status"], f.get("reason")) == (b["status"], b.get("reason"))
                    cells += [b["status"].upper() if same else _cell(rec), "–", "–", "–"]
                else:
                    cells += [_fmt_time(rec.get("median_s")), _fmt_x(rec.get("speedup_vs_nn_lstm")),
                              _fmt_x(rec.get("speedup_vs_reference")), _fmt(rec.get("pct_of_peak"), ".1f")]
            mem = b.get("peak_mem_bytes") if b else None
            rows.append(f"| {dev} | {dt} | {name} | " + " | ".join(cells) + f" | {_fmt(mem and mem / 2**20, '.1f')} |")
    return rows


def speedup_matrix(cases: list[dict], key: str) -> list[str]:
    """Rows = shapes, columns = backends, cells = speedup vs one baseline."""
    base = BASELINES[key]
    names = [n for n in _backend_order(cases) if n != base and
             any(c["backends"][n]["status"] == "ok" for c in cases if n in c["backends"])]
    rows = [f"| shape | {base} median | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for c in cases:
        b = c["backends"]
        cells = [_fmt_x(b[n].get(f"speedup_{key}")) if n in b and b[n]["status"] == "ok"
                 else (b[n]["status"].upper() if n in b else "–") for n in names]
        rows.append(f"| {Shape.from_dict(c['shape']).label} | {_fmt_time(b.get(base, {}).get('median_s'))} | " + " | ".join(cells) + " |")
    return rows


def detail_table(cases: list[dict]) -> list[str]:
    names = _backend_order(cases)
    # A backend skipped for every shape gets one line, not one per shape.
    always_skipped = {n for n in names if all(c["backends"].get(n, {}).get("status") == "skipped" for c in cases)}
    rows = ["| shape | backend | median | IQR | n | vs nn.LSTM | vs reference | GFLOP/s | % peak | peak MiB | first call |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for n in always_skipped:
        rec = next(c["backends"][n] for c in cases if n in c["backends"])
        rows.append(f"| all | {n} | {_cell(rec)} | | | | | | | | |")
    for c in cases:
        label = Shape.from_dict(c["shape"]).label
        for n in names:
            rec = c["backends"].get(n)
            if rec is None or n in always_skipped:
                continue
            if rec["status"] != "ok":
                rows.append(f"| {label} | {n} | {_cell(rec)} | | | | | | | | {_fmt_time(rec.get('first_call_s'))} |")
                continue
            mem = rec.get("peak_mem_bytes")
            rows.append(
                f"| {label} | {n} | {_fmt_time(rec['median_s'])} | {_fmt_time(rec['iqr_s'])} | {rec['repeats']} | "
                f"{_fmt_x(rec.get('speedup_vs_nn_lstm'))} | {_fmt_x(rec.get('speedup_vs_reference'))} | "
                f"{_fmt(rec.get('gflops'), '.2f')} | {_fmt(rec.get('pct_of_peak'), '.1f')} | "
                f"{_fmt(mem and mem / 2**20, '.2f')} | {_fmt_time(rec.get('first_call_s'))} |"
            )
    return rows


def train_table(train: list[dict]) -> list[str]:
    rows = ["| device | backend | epochs | wall time | sequences/s | vs reference | status |", "|---|---|---|---|---|---|---|"]
    ref = {t["device"]: t for t in train if t["backend"] == REFERENCE and t["status"] == "ok"}
    for t in train:
        base = ref.get(t["device"])
        ratio = base["wall_s"] / t["wall_s"] if base and t["status"] == "ok" else None
        rows.append(f"| {t['device']} | {t['backend']} | {t.get('epochs')} | {_fmt_time(t.get('wall_s'))} | "
                    f"{_fmt(t.get('sequences_per_s'), '.0f')} | {_fmt_x(ratio)} | "
                    f"{t['status'] if t['status'] == 'ok' else t['status'] + ': ' + str(t.get('reason'))} |")
    return rows


def _peak_dtype(cases: list[dict], dtype: str) -> str:
    """The dtype whose matmul peak the rows of these cases are against (see ``gemm_dtype``)."""
    return next((b["peak_dtype"] for c in cases for n, b in c["backends"].items() if n != CPP_FLOAT32 and "peak_dtype" in b),
                dtype)


def markdown(result: dict, full: bool = True) -> str:
    """The whole report; with ``full=False`` only the environment, headline and training tables."""
    from .cases import ECG

    out = ["# ecgkern benchmark", ""] + environment_lines(result) + [""]
    if result["cases"]:
        ecg = next((c["shape"] for c in result["cases"] if c["shape"] == ECG.as_dict()), result["cases"][0]["shape"])
        note = " (the ECG5000 model's shape)" if ecg == ECG.as_dict() else ""
        out += [f"## Headline: {Shape.from_dict(ecg).label}{note}", "", f"Machine: {machine_tag(result, 'cpu')}; "
                "% peak is against the matmul peak of the dtype the row's GEMMs run in.", ""] + headline_table(result, ecg) + [""]
    for (dev, dt, mode), cases in (_groups(result["cases"]) if full else {}).items():
        title = f"{dev} {dt}, {MODE_TITLES[mode]} ({machine_tag(result, dev, _peak_dtype(cases, dt))})"
        out += [f"## Speedup vs nn.LSTM: {title}", ""] + speedup_matrix(cases, "vs_nn_lstm") + [""]
        out += [f"## Speedup vs reference: {title}", ""] + speedup_matrix(cases, "vs_reference") + [""]
    for (dev, dt, mode), cases in (_groups(result["cases"]) if full else {}).items():
        tag = machine_tag(result, dev, _peak_dtype(cases, dt))
        out += [f"## All figures: {dev} {dt}, {MODE_TITLES[mode]} ({tag})", ""] + detail_table(cases) + [""]
    if result.get("train"):
        out += ["## End-to-end training (ECG5000)", ""] + train_table(result["train"]) + [""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# --compare


def compare(old: dict, new: dict, threshold: float = 0.05) -> dict:
    """Which (case, backend) medians moved beyond the noise between two result files.

    The noise band of a pair is the larger relative IQR of the two runs, and at least
    ``threshold``; a change inside the band is ``same``.
    """
    old_idx = {(c["key"], b): r for c in old["cases"] for b, r in c["backends"].items() if r.get("median_s")}
    rows, only_old = [], set(old_idx)
    for c in new["cases"]:
        for b, r in c["backends"].items():
            if not r.get("median_s"):
                continue
            o = old_idx.get((c["key"], b))
            if o is None:
                continue
            only_old.discard((c["key"], b))
            noise = max(threshold, o["iqr_s"] / o["median_s"], r["iqr_s"] / r["median_s"])
            change = r["median_s"] / o["median_s"]
            verdict = "faster" if change < 1 - noise else "slower" if change > 1 + noise else "same"
            rows.append({"case": c["key"], "backend": b, "old_s": o["median_s"], "new_s": r["median_s"],
                         "change": change, "noise": noise, "verdict": verdict})
    warn = []
    for field in ("cpu_model", "gpu_name", "torch_threads"):
        a, b = old["environment"].get(field), new["environment"].get(field)
        if a != b:
            warn.append(f"{field} differs: {a} -> {b}")
    return {"rows": rows, "only_in_old": sorted(f"{k} {b}" for k, b in only_old), "warnings": warn}


def compare_text(cmp: dict) -> str:
    rows = cmp["rows"]
    counts = {v: sum(r["verdict"] == v for r in rows) for v in ("faster", "slower", "same")}
    lines = [f"compare: {counts['faster']} faster, {counts['slower']} slower, {counts['same']} within noise "
             f"(of {len(rows)} case/backend pairs measured in both)"]
    lines += [f"warning: {w}" for w in cmp["warnings"]]
    moved = sorted((r for r in rows if r["verdict"] != "same"), key=lambda r: r["change"])
    if moved:
        lines += ["", "| case | backend | old | new | new/old | noise band | verdict |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['case']} | {r['backend']} | {_fmt_time(r['old_s'])} | {_fmt_time(r['new_s'])} | "
                  f"{r['change']:.3f} | ±{100 * r['noise']:.0f}% | {r['verdict']} |" for r in moved]
    if cmp["only_in_old"]:
        lines += ["", f"{len(cmp['only_in_old'])} pairs measured only in the old file (e.g. {cmp['only_in_old'][0]})"]
    return "\n".join(lines)
