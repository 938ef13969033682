"""JIT builds under concurrency and without a compiler, in fresh processes and cache folders.

* Two processes that build an extension at the same moment into one fresh cache folder
  (``$ECGKERN_CACHE_DIR``) both succeed, give the same results, and share ONE build: exactly
  one of them compiles, the other waits on the lock and loads it; no scratch folder is left.
* With no C++ compiler (``CXX`` pointing at a file that does not exist), ``cpp`` is reported
  unavailable with the reason, asking for it raises that reason, ``auto`` falls back to the
  reference, and the layer and the functional API work.

The concurrent build compiles from scratch (about a minute on 2 cores): marked ``slow``, and
not parametrised over backends, so CI runs it once.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ecgkern.backends import cuda as cuda_backend

TIMEOUT_S = 540  # a cold build is about a minute; this only stops a hang

# Each process: import everything, meet the other at a file barrier, then build/load at once.
_CONCURRENT = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    import torch
    from ecgkern import _build
    from ecgkern.backends import get_backend
    from ecgkern.testing import random_recurrence_inputs

    barrier, me, extension, backend, device = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
    (barrier / me).touch()
    while len(list(barrier.iterdir())) < 2:
        time.sleep(0.002)
    start = time.perf_counter()
    impl = get_backend(backend, torch.device(device), torch.float64 if device == "cpu" else torch.float32)
    waited = time.perf_counter() - start
    inputs = random_recurrence_inputs(4, 3, 5, dtype=torch.float64 if device == "cpu" else torch.float32, device=device)
    hs, cs = impl.recurrence(*inputs)
    print(json.dumps({"built": extension in _build.BUILD_SECONDS, "build_s": _build.BUILD_SECONDS.get(extension),
                      "load_s": waited, "hs": hs.cpu().tolist(), "cs": cs.cpu().tolist()}))
""")


def _env(cache: Path, **extra) -> dict:
    env = dict(os.environ, ECGKERN_CACHE_DIR=str(cache), **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH")]))
    return env


def _compiler_reason() -> str | None:
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler {compiler!r} on PATH"
    from torch.utils import cpp_extension

    return None if cpp_extension.is_ninja_available() else "ninja is not installed"


def _cuda_build_reason() -> str | None:
    if torch.version.cuda is None:
        return f"torch {torch.__version__} was built without CUDA, so the CUDA extension cannot be built"
    if cuda_backend.find_nvcc() is None:
        return "no nvcc"
    if not torch.cuda.is_available():
        return "no CUDA device to run the built kernel on"
    return _compiler_reason()


@pytest.mark.slow
@pytest.mark.parametrize("extension, backend_name, device, skip_reason", [
    ("ecgkern_cpu", "cpp", "cpu", _compiler_reason()),
    ("ecgkern_cuda", "cuda", "cuda", _cuda_build_reason()),
], ids=["cpp", "cuda"])
def test_two_processes_building_at_once_share_one_build(tmp_path, extension, backend_name, device, skip_reason):
    if skip_reason:
        pytest.skip(skip_reason)
    cache, barrier = tmp_path / "cache", tmp_path / "barrier"
    barrier.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", _CONCURRENT, str(barrier), str(k), extension, backend_name, device],
                              env=_env(cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k in range(2)]
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=TIMEOUT_S)
            assert p.returncode == 0, f"a concurrent build failed (rc {p.returncode}):\n{err[-3000:]}"
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    built = [r["built"] for r in results]
    assert sorted(built) == [False, True], f"expected exactly one process to compile, got built={built}"
    assert results[0]["hs"] == results[1]["hs"] and results[0]["cs"] == results[1]["cs"]
    root = cache / "extensions"
    builds = [p.name for p in root.iterdir() if p.is_dir()]
    assert len(builds) == 1 and builds[0].startswith(f"{extension}-"), f"expected one shared build folder, found {builds}"
    print(f"\n{extension}: cold build {max(r['build_s'] or 0 for r in results):.1f}s; "
          f"the other process waited {[round(r['load_s'], 1) for r in results]}s")


_NO_COMPILER = textwrap.dedent("""
    import json
    import torch
    import ecgkern
    from ecgkern.backends import BackendUnavailableError, resolve_backend_name
    from ecgkern.functional import lstm

    status = {name: s.reason for name, s in ecgkern.available_backends().items()}
    try:
        ecgkern.LSTM(3, 4, backend="cpp")(torch.randn(5, 2, 3))
        explicit = None
    except BackendUnavailableError as exc:
        explicit = str(exc)
    torch.manual_seed(0)
    auto = ecgkern.LSTM(3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(5, 2, 3, requires_grad=True)
    out, (h, c) = auto(x, lengths=[5, 2])
    (out.sum() + h.sum()).backward()
    reference = ecgkern.LSTM(3, 4, num_layers=2, bidirectional=True, backend="reference")
    reference.load_state_dict(auto.state_dict())
    want, _ = reference(x.detach(), lengths=[5, 2])
    functional, _ = lstm(x.detach(), None, reference.layer_weights(), num_layers=2, bidirectional=True, lengths=[5, 2], backend="auto")
    print(json.dumps({"status": status, "explicit": explicit, "auto": resolve_backend_name("auto"),
                      "auto_equals_reference": bool(torch.equal(out, want)), "functional_equals": bool(torch.equal(functional, want)),
                      "grad_finite": bool(torch.isfinite(x.grad).all())}))
""")


@pytest.mark.parametrize("how", ["CXX names a missing file", "PATH without compilers"])
def test_no_compiler_reports_cpp_unavailable_and_auto_falls_back(tmp_path, how):
    if how == "CXX names a missing file":
        missing = str(tmp_path / "no-such-compiler" / "c++")
        env = _env(tmp_path / "cache", CXX=missing)
    else:
        missing = "c++"
        env = _env(tmp_path / "cache", PATH=str(Path(sys.executable).parent))
        env.pop("CXX", None)
        if any(shutil.which(c, path=env["PATH"]) for c in ("c++", "g++", "clang++")):
            pytest.skip(f"the Python folder {env['PATH']} itself holds a C++ compiler")
    proc = subprocess.run([sys.executable, "-c", _NO_COMPILER], env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    reason = r["status"]["cpp"]
    assert reason is not None and "no C++ compiler" in reason and repr(missing) in reason, reason
    assert r["explicit"] is not None and reason in r["explicit"], r["explicit"]
    assert r["status"]["reference"] is None
    assert r["auto"] == "reference"
    assert r["auto_equals_reference"] and r["functional_equals"] and r["grad_finite"], r
    extensions = tmp_path / "cache" / "extensions"
    leftovers = [p.name for p in extensions.iterdir() if p.is_dir()] if extensions.exists() else []
    assert not leftovers, f"build folders were left without a compiler: {leftovers}"
