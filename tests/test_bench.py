"""The benchmark machinery (ecgkern.bench): parsing, skipping, OOM handling, compare, JSON, a tiny run.

No timing is asserted here; speed lives in the benchmark results themselves.
"""
import json
import platform
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from ecgkern.bench import cli, main, measure
from ecgkern.bench.allocator import apply as apply_malloc
from ecgkern.bench.cases import ECG, Case, Shape, build_cases, gemm_flops, parse_dtype, parse_shape, preset_shapes
from ecgkern.bench.measure import Outcome, measure_case, round_order
from ecgkern.bench.report import SCHEMA, compare, compare_text, load_json
from ecgkern.bench.runners import TORCH, TRITON_CPU_NOTE, make_inputs, make_runner, parse_backends, skip_reason

TINY = ["--shapes", "B3,T5,H4", "--repeats", "2", "--min-repeats", "1", "--peak-size", "64", "--no-progress"]


# ---- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("B64,T140,H64", Shape(64, 140, 1, 64)),
    ("b=2 t=3 i=5 h=7", Shape(2, 3, 5, 7)),
    ("H8-T9-B1", Shape(1, 9, 1, 8)),
    ("batch16,seq1024,hidden768", Shape(16, 1024, 1, 768)),
])
def test_parse_shape(text, expected):
    assert parse_shape(text) == expected


@pytest.mark.parametrize("text, words", [
    ("", "empty"),
    ("B64,T140", "missing hidden"),
    ("B64,T140,H0", "positive"),
    ("B64,T140,H64,Q3", "'q3'"),
    ("B64,B32,T1,H1", "twice"),
    ("banana", "banana"),
])
def test_bad_shape_names_the_problem(text, words):
    with pytest.raises(ValueError, match=words):
        parse_shape(text)


def test_presets_contain_the_target_shapes():
    quick = preset_shapes("quick")
    assert quick[0] == ECG and Shape(256, 140, 1, 256) in quick
    full = preset_shapes("full")
    assert len(full) == 40  # 4 batch x 5 hidden x 2 T; the ECG shape is one of them
    assert Shape(16, 1024, 1, 768) in preset_shapes("full", "cuda")
    with pytest.raises(ValueError, match="preset"):
        preset_shapes("medium")


def test_cases_put_the_ecg_shape_first():
    cases = build_cases(["cpu"], {"cpu": [torch.float32]}, ["fwd", "fwdbwd"], [Shape(1, 2, 1, 2), ECG])
    assert [c.shape for c in cases[:2]] == [ECG, ECG]


def test_parse_backends_and_dtype():
    names, explicit = parse_backends("cpp,torch")
    assert names[:2] == [TORCH, "reference"] and "cpp" in names and explicit == {"cpp", TORCH}
    assert parse_backends(None)[0][0] == TORCH
    with pytest.raises(ValueError, match="unknown backend 'cppp'"):
        parse_backends("cppp")
    assert parse_dtype("bf16") is torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        parse_dtype("float8")


def test_gemm_flops_match_torch_flop_counter():
    """The FLOP model agrees with torch's own count of the reference layer's matmuls."""
    from torch.utils.flop_counter import FlopCounterMode

    case = Case("cpu", torch.float32, "fwd", Shape(3, 6, 2, 5))
    inputs = make_inputs(case)
    for mode in ("fwd", "fwdbwd"):
        c = Case("cpu", torch.float32, mode, case.shape)
        run = make_runner("reference", c, inputs)
        with FlopCounterMode(display=False) as counter:
            run()
        counted = counter.get_total_flops()
        # fwd is exact; fwd+bwd differs by the head's GEMMs and the skipped dh of step 0 (h0 needs no grad).
        assert counted == pytest.approx(gemm_flops(c.shape, mode), rel=0 if mode == "fwd" else 0.1)


@pytest.mark.parametrize("argv, words", [
    (["--backends", "nope"], "unknown backend"),
    (["--shapes", "B1,T2"], "missing hidden"),
    (["--device", "tpu"], "unknown device"),
    (["--dtype", "float8"], "unknown dtype"),
    (["--modes", "bwd"], "unknown mode"),
    (["--repeats", "0"], "--repeats must be"),
    (["--batch", "4"], "both --batch and --hidden"),
    (["--against", "x.json"], "needs --compare"),
    (["--compare", "/nonexistent/old.json"], "not found"),
])
def test_bad_arguments_exit_2_with_a_message(argv, words, tmp_path, capsys):
    assert main(argv + ["--out", str(tmp_path), "--no-progress"]) == 2
    assert words in capsys.readouterr().err


def test_help_returns_0(capsys):
    assert main(["--help"]) == 0
    assert "--quick" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_device_without_cuda(tmp_path, capsys):
    assert main(["--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_skip_reasons():
    assert skip_reason(TORCH, "cpu", torch.float32, set()) is None
    assert skip_reason("reference", "cpu", torch.float32, set()) is None
    assert skip_reason("cuda", "cpu", torch.float32, set()).startswith("unavailable:")
    assert skip_reason("triton", "cpu", torch.float32, set()) == TRITON_CPU_NOTE
    assert skip_reason("triton", "cpu", torch.float32, {"triton"}) != TRITON_CPU_NOTE  # named: timed if it can run


# ---- measuring -----------------------------------------------------------------------------


def test_measure_interleaves_and_respects_repeats_and_budget():
    calls = []
    runners = {n: (lambda n=n: calls.append(n)) for n in "abc"}
    out = measure_case(runners, "cpu", repeats=4, min_repeats=2, budget_s=1e9, memory=False)
    assert all(len(o.times_s) == 4 and o.first_call_s is not None for o in out.values())
    timed = calls[6:]  # after each runner's first and warm-up call
    rounds = [timed[i:i + 3] for i in range(0, 12, 3)]
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds)  # one call of each per round
    assert rounds[0] != rounds[1]  # the order changes
    out = measure_case(runners, "cpu", repeats=50, min_repeats=2, budget_s=0.0, memory=False)
    assert all(len(o.times_s) == 2 for o in out.values())  # budget spent: stop at min_repeats


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_round_order_balances_what_runs_just_before(n):
    names = [f"r{i}" for i in range(n)]
    rounds = [round_order(names, rnd) for rnd in range(2 * n)]  # whole designs (n or 2n rows)
    assert all(sorted(r) == names for r in rounds)
    follows = Counter((a, b) for r in rounds for a, b in zip(r, r[1:]))
    pairs = [(a, b) for a in names for b in names if a != b]
    assert set(follows) == set(pairs) and len(set(follows.values())) <= 1  # every ordered pair equally often
    firsts = Counter(r[0] for r in rounds)
    assert len(firsts) == n and len(set(firsts.values())) == 1


def test_measure_case_gives_no_runner_a_fixed_predecessor():
    calls = []
    runners = {n: (lambda n=n: calls.append(n)) for n in "abcd"}
    measure_case(runners, "cpu", repeats=8, min_repeats=8, budget_s=1e9, memory=False)
    timed = calls[8:]
    predecessors = {n: {a for a, b in zip(timed, timed[1:]) if b == n} for n in "abcd"}
    assert all(p == set("abcd") - {n} for n, p in predecessors.items())


def _oom():
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB (simulated)")


def test_oom_is_recorded_and_the_others_go_on():
    state = {"n": 0}

    def oom_on_third_call():
        state["n"] += 1
        if state["n"] == 3:
            raise MemoryError("simulated")

    out = measure_case({"oom": _oom, "late": oom_on_third_call, "ok": lambda: None}, "cpu",
                       repeats=3, min_repeats=1, budget_s=1e9, memory=False)
    assert out["oom"].status == "oom" and "simulated" in out["oom"].reason
    assert out["late"].status == "oom" and out["late"].first_call_s is not None
    assert out["ok"].status == "ok" and len(out["ok"].times_s) == 3
    err = Outcome.failed(ValueError("boom\nmore"))
    assert err.status == "error" and err.reason == "ValueError: boom"


def test_cpu_peak_memory_sees_torch_allocations():
    n = 1 << 20
    peak = measure.peak_memory(lambda: torch.empty(n, dtype=torch.float32).fill_(1), "cpu")
    if peak is None:
        pytest.skip("this torch's profiler exposes no allocation events")
    assert 4 * n <= peak < 8 * n


# ---- compare -------------------------------------------------------------------------------


def _result(medians: dict, iqr=0.01, cpu="X"):
    return {"schema": SCHEMA, "environment": {"cpu_model": cpu}, "cases": [
        {"key": k, "backends": {"cpp": {"median_s": m, "iqr_s": iqr * m}}} for k, m in medians.items()]}


def test_compare_verdicts_use_the_noise_band():
    old = _result({"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0, "gone": 1.0})
    new = _result({"a": 0.5, "b": 1.5, "c": 1.03, "d": 0.9}, cpu="Y")
    rows = {r["case"]: r["verdict"] for r in compare(old, new)["rows"]}
    assert rows == {"a": "faster", "b": "slower", "c": "same", "d": "faster"}
    noisy = _result({"d": 0.9}, iqr=0.3)  # a 10% change inside a 30% IQR is noise
    assert compare(old, noisy)["rows"][0]["verdict"] == "same"
    cmp = compare(old, new)
    assert cmp["only_in_old"] == ["gone cpp"] and any("cpu_model" in w for w in cmp["warnings"])
    text = compare_text(cmp)
    assert "2 faster, 1 slower, 1 within noise" in text


def test_load_json_rejects_other_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "something-else"}))
    with pytest.raises(ValueError, match="not an ecgkern bench result"):
        load_json(bad)
    bad.write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_json(bad)


# ---- end to end ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert main(TINY + ["--backends", "reference,cuda", "--out", str(out), "--name", "tiny"]) == 0
    return out


def test_tiny_run_writes_table_json_and_plots(tiny_run):
    data = load_json(tiny_run / "tiny.json")
    env = data["environment"]
    for key in ("cpu_model", "torch_threads", "torch", "triton", "cuda_runtime", "ecgkern_commit", "date_utc"):
        assert key in env
    peak = data["matmul_peak"]["cpu/float32"]
    assert len(peak["runs"]) == 2 and peak["gflops_best"] == max(r["gflops_best"] for r in peak["runs"])
    assert [c["mode"] for c in data["cases"]] == ["fwd", "fwdbwd"]
    for case in data["cases"]:
        assert case["flops"] == gemm_flops(Shape(3, 5, 1, 4), case["mode"])
        b = case["backends"]
        assert list(b) == [TORCH, "reference", "cuda"]
        for name in (TORCH, "reference"):
            rec = b[name]
            assert rec["status"] == "ok" and rec["repeats"] == len(rec["times_s"]) == 2
            assert rec["q1_s"] <= rec["median_s"] <= rec["q3_s"] and rec["first_call_s"] > 0
            assert rec["gflops"] > 0
            assert rec["peak_mem_bytes"] is None or rec["peak_mem_bytes"] > 0
        assert b[TORCH]["speedup_vs_nn_lstm"] == 1.0 and b["reference"]["speedup_vs_reference"] == 1.0
        assert b[TORCH]["speedup_vs_reference"] == pytest.approx(b["reference"]["median_s"] / b[TORCH]["median_s"])
        assert b["cuda"]["status"] == "skipped" and "CUDA" in b["cuda"]["reason"]
    assert env["allocator"]["mode"] == "default"
    md = (tiny_run / "tiny.md").read_text()
    assert "C heap: the C library's defaults" in md
    assert "B3-T5-I1-H4" in md and "SKIPPED: unavailable" in md and "speedup" in md.lower()
    pngs = sorted(p.name for p in tiny_run.glob("*.png"))
    assert pngs == ["tiny_cpu_float32_roofline.png", "tiny_cpu_float32_speedup_vs_batch.png",
                    "tiny_cpu_float32_speedup_vs_hidden.png"]
    assert all((tiny_run / p).stat().st_size > 1000 for p in pngs)


def test_compare_two_files_runs_nothing(tiny_run, capsys):
    path = str(tiny_run / "tiny.json")
    measured = sum(r["status"] == "ok" for c in load_json(path)["cases"] for r in c["backends"].values())
    assert main(["--compare", path, "--against", path]) == 0
    assert f"0 faster, 0 slower, {measured} within noise" in capsys.readouterr().out


def test_oom_in_a_run_is_a_table_row(tmp_path, monkeypatch, capsys):
    real = cli.make_runner

    def fake(name, case, inputs):
        if name == "reference" and case.mode == "fwdbwd":
            return _oom
        return real(name, case, inputs)

    monkeypatch.setattr(cli, "make_runner", fake)
    assert main(TINY + ["--backends", "reference", "--out", str(tmp_path), "--no-plots", "--no-memory"]) == 0
    data = load_json(tmp_path / "cpu-custom.json")
    fwd, bwd = data["cases"]
    assert fwd["backends"]["reference"]["status"] == "ok"
    assert bwd["backends"]["reference"]["status"] == "oom"
    assert bwd["backends"][TORCH]["status"] == "ok" and bwd["backends"][TORCH]["speedup_vs_reference"] is None
    assert "OOM" in (tmp_path / "cpu-custom.md").read_text()
    # --resume keeps both cases and runs nothing new
    monkeypatch.setattr(cli, "make_runner", lambda *a: pytest.fail("resume re-ran a case"))
    assert main(TINY + ["--backends", "reference", "--out", str(tmp_path), "--no-plots", "--resume"]) == 0
    assert len(load_json(tmp_path / "cpu-custom.json")["cases"]) == 2
    # a file measured with one heap setting is not continued with another
    capsys.readouterr()
    assert main(TINY + ["--backends", "reference", "--out", str(tmp_path), "--name", "cpu-custom", "--resume",
                        "--malloc", "steady"]) == 2
    assert "measured with --malloc default" in capsys.readouterr().err


def test_train_benchmark_smoke(tmp_path):
    argv = ["--train", "--train-epochs", "1", "--train-limit", "4", "--backends", "reference,cuda",
            "--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    train = {t["backend"]: t for t in load_json(tmp_path / "cpu-train.json")["train"]}
    assert TORCH not in train  # the harness' model is ecgkern.LSTM
    ref = train["reference"]
    assert ref["status"] == "ok" and ref["epochs"] == 1 and ref["train_sequences"] == 4
    assert ref["sequences_per_s"] == pytest.approx(4 / ref["wall_s"])
    assert train["cuda"]["status"] == "skipped"
    assert "End-to-end training" in (tmp_path / "cpu-train.md").read_text()


_HEAP_PROBE = """
import ctypes, sys
from ecgkern.bench.allocator import apply
print(apply(sys.argv[1])["mode"])
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
block = libc.malloc(64 << 20)
heap = [line.split()[0] for line in open("/proc/self/maps") if line.rstrip().endswith("[heap]")]
start, end = (int(v, 16) for v in heap[0].split("-")) if heap else (0, 0)
print(start <= block < end)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or not Path("/proc/self/maps").exists(),
                    reason="--malloc steady uses glibc's mallopt; the probe reads /proc/self/maps")
@pytest.mark.parametrize("mode, from_heap", [("default", "False"), ("steady", "True")])
def test_malloc_steady_keeps_big_blocks_off_mmap(mode, from_heap):
    # glibc maps a 64 MB block on its own by default (and unmaps it on free: page faults on
    # every call); under --malloc steady it comes from the heap, which is never trimmed.
    out = subprocess.run([sys.executable, "-c", _HEAP_PROBE, mode], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [mode, from_heap], f"--malloc {mode}: {out.stdout!r}"


def test_malloc_mode_is_checked():
    with pytest.raises(ValueError, match="unknown --malloc mode 'fast'"):
        apply_malloc("fast")


def test_bfloat16_cpu_run_is_autocast_with_float32_cpp_beside(tmp_path):
    """--dtype bfloat16 on CPU: layers under autocast (nn.LSTM too), float32 cpp timed beside,
    the ISA flags and the bf16 and fp32 peaks recorded, each row's % peak against its own dtype."""
    from ecgkern.backends import available_backends

    if available_backends("cpu")["cpp"].reason is not None:
        pytest.skip("the cpp backend cannot run here")
    argv = TINY + ["--dtype", "bfloat16", "--modes", "fwdbwd", "--backends", "cpp", "--out", str(tmp_path),
                   "--name", "bf16", "--no-plots"]
    assert main(argv) == 0
    data = load_json(tmp_path / "bf16.json")
    assert set(data["matmul_peak"]) == {"cpu/bfloat16", "cpu/float32"}
    assert data["environment"]["cpu_isa"] is None or "avx512_bf16" in data["environment"]["cpu_isa"]
    (case,) = data["cases"]
    b = case["backends"]
    assert list(b) == [TORCH, "reference", "cpp", "cpp float32"]
    assert all(b[n]["status"] == "ok" for n in b)
    assert b["cpp"]["peak_dtype"] == "bfloat16" and b["cpp float32"]["peak_dtype"] == "float32"
    peaks = {k: v["gflops_best"] for k, v in data["matmul_peak"].items()}
    for name in ("cpp", "cpp float32"):
        want = 100 * b[name]["gflops"] / peaks[f"cpu/{b[name]['peak_dtype']}"]
        assert b[name]["pct_of_peak"] == pytest.approx(want)
    md = (tmp_path / "bf16.md").read_text()
    assert "avx512_bf16" in md and "bfloat16 64² matmul peak" in md and "torch.autocast" in md


def test_a_16_bit_dtype_without_gemm_instructions_is_against_the_float32_peak(tmp_path, monkeypatch):
    # float16 on a CPU without AVX512-FP16: ATen's float16 GEMM is a loop under 1 GFLOP/s (a 2048²
    # "peak" of it took minutes) and ecgkern widens to float32; the rows are against float32's peak.
    from ecgkern import _build
    from ecgkern.backends import available_backends

    if available_backends("cpu")["cpp"].reason is not None:
        pytest.skip("the cpp backend cannot run here")
    monkeypatch.setattr(_build, "cpu_gemm_is_fast", lambda dtype: dtype != torch.float16)
    argv = TINY + ["--dtype", "float16", "--modes", "fwd", "--backends", "cpp", "--out", str(tmp_path), "--name", "f16",
                   "--no-plots", "--no-memory"]
    assert main(argv) == 0
    data = load_json(tmp_path / "f16.json")
    assert set(data["matmul_peak"]) == {"cpu/float32"}
    (case,) = data["cases"]
    assert {b["peak_dtype"] for b in case["backends"].values()} == {"float32"}
    assert all(b["pct_of_peak"] is not None for b in case["backends"].values() if b["status"] == "ok")
    md = (tmp_path / "f16.md").read_text()
    assert "float16 on cpu: no GEMM instructions for it on this CPU" in md and "float32 64² matmul peak" in md


def test_a_capped_isa_is_named_with_the_machine(monkeypatch):
    # ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA / MKL_ENABLE_INSTRUCTIONS make an AVX-512 machine
    # measure as an AVX2 one; the tables must not then read as the machine's own figures.
    from ecgkern.bench import env as bench_env
    from ecgkern.bench.report import machine_tag

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    assert bench_env.isa_caps() == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    result = {"environment": {"cpu_model": "Some CPU", "cpu_isa": {"avx512f": True}, "torch_cpu_capability": "AVX2",
                              "isa_caps": bench_env.isa_caps()}}
    assert machine_tag(result, "cpu") == ("Some CPU; avx512f yes; ISA capped (ONEDNN_MAX_CPU_ISA=AVX2): "
                                          "torch's CPU capability AVX2")
    result["environment"]["isa_caps"] = {}
    assert "capped" not in machine_tag(result, "cpu")


def test_autocast_runner_returns_the_autocast_dtype():
    case = Case("cpu", torch.bfloat16, "fwd", Shape(3, 5, 1, 4))
    seen = []
    orig = torch.nn.LSTM.forward

    def spy(self, *args, **kwargs):
        out = orig(self, *args, **kwargs)
        seen.append((out[0].dtype, self.weight_hh_l0.dtype))
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.nn.LSTM, "forward", spy)
        make_runner(TORCH, case, make_inputs(case))()
    assert seen == [(torch.bfloat16, torch.float32)]


def test_report_warns_of_the_unflattened_bf16_cudnn_baseline_on_gpu_runs_only():
    from ecgkern.bench.report import markdown

    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    gpu = markdown(load_json(results / "gpu-h200-bench.json"))
    cpu = markdown(load_json(results / "cpu-zen5-quick-bfloat16.json"))
    assert "torch never flattens bf16 cuDNN weights" in gpu
    assert "torch never flattens bf16 cuDNN weights" not in cpu
