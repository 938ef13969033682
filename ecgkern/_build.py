"""JIT build of the C++/CUDA sources in ``csrc/``: cache folder, flags, clear errors.

``load_extension`` compiles with ``torch.utils.cpp_extension`` and ninja, once per hash of
(sources, headers beside them, flags, compiler, torch and Python versions), into a per-user
cache: ``$ECGKERN_CACHE_DIR``, else ``$XDG_CACHE_HOME/ecgkern``, else ``~/.cache/ecgkern``.

Concurrency: one process builds a given hash at a time (an ``flock`` on a lock file beside the
build, released by the OS even if the builder dies); the build happens in a private temporary
folder that is renamed into place only when complete, so no process ever loads a half-written
library. The compiler is ``$CXX`` (default ``c++``), as for torch itself.

``CPU_EXTENSION`` and ``CUDA_EXTENSION`` are the two extensions (sources and flags); each is a
``LazyExtension``: built or loaded on first use, once per process. ``missing_tools()`` says,
without building anything or touching the environment, why it could not be built here.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import re
import shutil
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import torch

from ._errors import BackendUnavailableError

try:
    import fcntl
except ImportError:  # Windows: no flock; the atomic rename alone still keeps the cache sound
    fcntl = None

# Seconds each extension took to build in this process (absent when it came from the cache).
BUILD_SECONDS: dict[str, float] = {}

_HEADER_SUFFIXES = (".h", ".hpp", ".cuh")


class ExtensionBuildError(BackendUnavailableError):
    """The extension could not be built or loaded; the message is one sentence saying why."""


def csrc_dir() -> Path:
    """The folder holding the C++/CUDA sources (the repo's top-level ``csrc/``)."""
    package = Path(__file__).resolve().parent
    bundled = package / "csrc"  # a wheel that ships the sources inside the package
    return bundled if bundled.is_dir() else package.parent / "csrc"


def cache_dir() -> Path:
    root = os.environ.get("ECGKERN_CACHE_DIR")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = os.path.join(xdg, "ecgkern") if xdg else os.path.join(Path.home(), ".cache", "ecgkern")
    return Path(root).expanduser() / "extensions"


def cpu_capability_flags(capability: str | None = None) -> list[str]:
    """Vector ISA flags for the CPU this process runs on, as torch itself detected it (or for
    ``capability``, "AVX512", "AVX2" or "DEFAULT", which this CPU must be able to run).

    ATen's ``at::vec`` only vectorises (and calls the Sleef exp/tanh that libtorch exports)
    when ``CPU_CAPABILITY_AVX2``/``AVX512`` is defined together with the matching ``-m`` flags.
    torch honours ``ATEN_CPU_CAPABILITY`` (e.g. ``default``), so that also selects the build.
    """
    capability = (capability or torch.backends.cpu.get_cpu_capability()).upper()
    if capability == "AVX512":
        flags = ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX512"]
        # bfloat16 dot products (vdpbf16ps) for the bf16 recurrent GEMMs, only where this CPU
        # executes them: the build is cached per flag set, so each machine gets its own.
        if cpu_has_avx512_bf16():
            flags.append("-mavx512bf16")
        return flags
    if capability == "AVX2":
        return ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2"]
    return []


def portable_x86_build() -> bool:
    """True on an x86 CPU where torch detects neither AVX2 nor AVX-512 (or ATEN_CPU_CAPABILITY=default
    asks for neither): the kernels then build without vector instructions and their activations call
    the scalar libm, several times slower than the reference loop's ATen kernels."""
    return not cpu_capability_flags() and platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


def cpu_kernel_summary() -> str:
    """One line for ``ecgkern info``: the ISA the C++ kernels build for here, how their bf16
    recurrent GEMMs run, and which 16-bit GEMMs run in float32 (``cpu_gemm_is_fast``)."""
    isa = {"AVX512": "AVX-512", "AVX2": "AVX2"}.get(torch.backends.cpu.get_cpu_capability(), "no vector ISA (portable)")
    bf16 = "AVX512-BF16 dot products" if "-mavx512bf16" in cpu_capability_flags() else "float32 tiles on widened values"
    widened = [name for name, dtype in (("bfloat16", torch.bfloat16), ("float16", torch.float16)) if not cpu_gemm_is_fast(dtype)]
    return (f"C++ kernels built for {isa}; bf16 recurrent GEMMs: {bf16}"
            + (f"; {' and '.join(widened)} GEMMs in float32 (no instructions for them)" if widened else ""))


def cpu_has_avx512_bf16() -> bool:
    """Whether this CPU executes AVX512-BF16 (vdpbf16ps), as torch detects it."""
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(probe and probe())


@torch.compiler.assume_constant_result  # torch.compile cannot trace the CPU probes; fixed per process
def cpu_gemm_is_fast(dtype: torch.dtype) -> bool:
    """Whether ATen's CPU GEMM of ``dtype`` runs at float32 speed or better here.

    bfloat16 does with AVX-512 (oneDNN); float16 only with AVX512-FP16 or AMX-FP16. Elsewhere ATen
    falls back to loops 15-50x slower than its float32 GEMM (measured on an AVX-512 CPU without
    AVX512-FP16, and with the ISA capped at AVX2): widen, multiply in float32 and round once,
    which is what a bfloat16/float16 GEMM computes anyway (float32 accumulation).
    """
    if dtype not in (torch.bfloat16, torch.float16):
        return True
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        return False
    if dtype == torch.bfloat16:
        return True
    return any(bool(getattr(torch.cpu, probe, lambda: False)()) for probe in ("_is_avx512_fp16_supported", "_is_amx_fp16_supported"))


def _compiler() -> str:
    return os.environ.get("CXX", "c++")


def _build_key(name: str, sources: list[Path], flags: list, with_cuda: bool) -> str:
    digest = hashlib.sha256()
    files = set(sources)
    for folder in {s.parent for s in sources}:
        files.update(p for p in folder.iterdir() if p.suffix in _HEADER_SUFFIXES)
    for path in sorted(files):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    compiler = _compiler()
    parts = [name, repr(flags), str(with_cuda), torch.__version__, str(torch.version.cuda),
             sys.version, compiler, str(shutil.which(compiler))]
    digest.update("\0".join(parts).encode())
    return digest.hexdigest()[:16]


@contextmanager
def _locked(path: Path):
    with open(path, "a+") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)  # blocks while another process builds this hash
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _first_error_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for pattern in (r"\berror\b", r"not found|No such file|cannot execute"):
        for line in lines:
            if line.startswith("Error building extension"):
                line = line.split(":", 1)[-1].strip()
            if line and re.search(pattern, line, re.IGNORECASE):
                return line
    return lines[-1] if lines else "no compiler output"


def _is_python_module(sources: list[Path]) -> bool:
    # Sources that only register ops (TORCH_LIBRARY*) have no Python init function to import.
    return any("PYBIND11_MODULE" in s.read_text(errors="replace") for s in sources)


def _load_built(name: str, folder: Path, python_module: bool) -> ModuleType | None:
    libraries = sorted(folder.glob("*.so")) + sorted(folder.glob("*.pyd"))
    if not libraries:
        raise ExtensionBuildError(f"the cached build of {name!r} in {folder} holds no library; delete that folder to rebuild")
    library = libraries[0]
    if not python_module:
        torch.ops.load_library(str(library))
        return None
    spec = importlib.util.spec_from_file_location(library.name.split(".")[0], library)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _compile(name, sources, folder: Path, cflags, cuda_cflags, ldflags, with_cuda, python_module):
    from torch.utils import cpp_extension

    compiler = _compiler()
    if shutil.which(compiler) is None:
        raise ExtensionBuildError(
            f"cannot build the {name!r} extension: no C++ compiler {compiler!r} was found "
            "(install g++ or clang++, or point $CXX at one)"
        )
    if not cpp_extension.is_ninja_available():
        raise ExtensionBuildError(f"cannot build the {name!r} extension: ninja is not installed (pip install ninja)")
    try:
        return cpp_extension.load(
            name, [str(s) for s in sources], extra_cflags=cflags, extra_cuda_cflags=cuda_cflags,
            extra_ldflags=ldflags, build_directory=str(folder), with_cuda=with_cuda,
            is_python_module=python_module, verbose=False,
        )
    except Exception as exc:  # the compiler's output arrives inside a RuntimeError/OSError
        raise ExtensionBuildError(
            f"building the {name!r} extension failed: {_first_error_line(str(exc))}"
        ) from exc


# Where a toolchain links the static libstdc++ into a shared object (seen on the H200 image:
# its copy's symbols were exported, half of a stream's calls then bound to the process's
# libstdc++.so and every integer in an error message segfaulted), keep that copy private.
# A no-op with the usual shared libstdc++; tests/test_cpp_backend.py builds the static case.
_LINK_FLAGS = ["-Wl,--exclude-libs,ALL"] if sys.platform.startswith("linux") else []


def load_extension(
    name: str,
    sources: list[Path],
    *,
    extra_cflags=(),
    extra_cuda_cflags=(),
    extra_ldflags=(),
    with_cuda: bool = False,
    capability: str | None = None,
) -> ModuleType | None:
    """Build (once, cached) and load an extension; returns the module, or None for sources
    that only register ``torch.library`` ops (no ``PYBIND11_MODULE``).

    C++ flags always include ``-O3`` and the running CPU's vector flags
    (``cpu_capability_flags(capability)``); never ``-ffast-math``. Raises ``ExtensionBuildError``.
    """
    sources = [Path(s).resolve() for s in sources]
    for source in sources:
        if not source.is_file():
            raise ExtensionBuildError(f"cannot build the {name!r} extension: source file {source} does not exist")
    cflags = ["-O3", *cpu_capability_flags(capability), *extra_cflags]
    cuda_cflags = ["-O3", *extra_cuda_cflags]
    ldflags = [*_LINK_FLAGS, *extra_ldflags]
    python_module = _is_python_module(sources)
    key = _build_key(name, sources, [cflags, cuda_cflags, ldflags], with_cuda)
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{name}-{key}"
    with _locked(root / f"{name}-{key}.lock"):
        if not final.is_dir():
            what = "CUDA kernels (once, a few minutes)" if with_cuda else "C++ kernels (once, ~20 s)"
            print(f"ecgkern: building the {what}", file=sys.stderr, flush=True)
            scratch = Path(tempfile.mkdtemp(prefix=f".{name}-{key}-", dir=root))
            start = time.perf_counter()
            try:
                # cpp_extension.load also loads the library (from the scratch path, which stays
                # valid: the rename below keeps the inode).
                loaded = _compile(name, sources, scratch, cflags, cuda_cflags, ldflags, with_cuda, python_module)
                os.rename(scratch, final)  # atomic: others see all of the build or none of it
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            BUILD_SECONDS[name] = time.perf_counter() - start
            return loaded if python_module else None
    try:
        return _load_built(name, final, python_module)
    except OSError as exc:
        raise ExtensionBuildError(f"loading the {name!r} extension from {final} failed: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# CUDA toolchain


def find_nvcc() -> str | None:
    """The nvcc that torch's extension builder will use: $CUDA_HOME (or $CUDA_PATH), then PATH,
    then /usr/local/cuda."""
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(variable)
        if root:
            candidate = Path(root) / "bin" / "nvcc"
            return str(candidate) if candidate.is_file() else None
    found = shutil.which("nvcc")
    if found:
        return found
    candidate = Path("/usr/local/cuda/bin/nvcc")
    return str(candidate) if candidate.is_file() else None


def arch_flags(arch_list: str) -> list[str]:
    """nvcc -gencode flags for a TORCH_CUDA_ARCH_LIST-style string such as "8.0;9.0a+PTX".

    An "a" (architecture-specific, e.g. 9.0a) or "f" (family, e.g. 10.0f) suffix is kept, as
    torch's own builder keeps it: the GPU image of our H200 runs sets TORCH_CUDA_ARCH_LIST=9.0a.
    Passed explicitly (torch then adds none of its own), so the architecture is part of the
    build cache key.
    """
    flags = []
    for item in arch_list.replace(",", ";").replace(" ", ";").split(";"):
        if not item:
            continue
        ptx = item.endswith("+PTX")
        number = item.removesuffix("+PTX").replace(".", "")
        if not re.fullmatch(r"\d+[af]?", number):
            raise ValueError(f"cannot read CUDA architecture {item!r} in {arch_list!r}; expected e.g. '8.0;9.0'")
        flags.append(f"-gencode=arch=compute_{number},code=sm_{number}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{number},code=compute_{number}")
    if not flags:
        raise ValueError(f"no CUDA architecture in {arch_list!r}")
    return flags


def device_arch_list() -> str:
    """$TORCH_CUDA_ARCH_LIST when set, else the current GPU's compute capability."""
    explicit = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if explicit:
        return explicit
    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}"


# ---------------------------------------------------------------------------------------------
# The extensions, built on first use


class LazyExtension:
    """One extension of ``csrc/``: built (or loaded from the cache) on first use, once per
    process; never at import and never by an availability check."""

    def __init__(self, name: str, sources: tuple[str, ...], *, extra_cflags=(), extra_cuda_cflags=(),
                 with_cuda: bool = False):
        self.name = name
        self.sources = sources
        self.extra_cflags = tuple(extra_cflags)
        self.extra_cuda_cflags = tuple(extra_cuda_cflags)
        self.with_cuda = with_cuda
        self._lock = threading.Lock()
        self._state: dict = {}  # "reason": None once loaded, else the build error (tried once)

    @property
    def loaded(self) -> bool:
        return self._state.get("reason", "") is None

    def failure(self) -> str | None:
        """Why the one build attempt of this process failed; None if it succeeded or none ran."""
        return self._state.get("reason")

    def missing_tools(self) -> str | None:
        """Why this extension cannot be built here (sources, compiler, ninja, nvcc), cheaply:
        no build, no environment change. None when it can be (or already is) built."""
        if self.loaded:
            return None
        for source in self.sources:
            if not (csrc_dir() / source).is_file():
                return f"its source file {csrc_dir() / source} is missing (an install without csrc/)"
        if shutil.which(_compiler()) is None:
            return f"no C++ compiler {_compiler()!r} was found to build it (install g++ or clang++, or point $CXX at one)"
        from torch.utils import cpp_extension

        if not cpp_extension.is_ninja_available():
            return "ninja, needed to build it, is not installed (pip install ninja)"
        return None

    def build(self, arch_list: str | None = None) -> None:
        """Build (cached on disk) and load it now; raises ``ExtensionBuildError``."""
        cuda_flags = [*self.extra_cuda_cflags]
        if self.with_cuda:
            try:
                cuda_flags += arch_flags(arch_list or device_arch_list())
            except ValueError as exc:  # a bad $TORCH_CUDA_ARCH_LIST: the backend is unavailable, with why
                raise ExtensionBuildError(f"cannot build the {self.name!r} extension: {exc}") from exc
        load_extension(self.name, [csrc_dir() / s for s in self.sources], extra_cflags=self.extra_cflags,
                       extra_cuda_cflags=cuda_flags, with_cuda=self.with_cuda)

    def ensure_loaded(self) -> None:
        """Build/load once per process; raises ``ExtensionBuildError`` (every call, same reason)."""
        if "reason" not in self._state:
            with self._lock:
                if "reason" not in self._state:
                    try:
                        self.build()
                        self._state["reason"] = None
                    except ExtensionBuildError as exc:
                        self._state["reason"] = str(exc)
        if self._state["reason"] is not None:
            raise ExtensionBuildError(self._state["reason"])


# -fopenmp: at::parallel_for is inline OpenMP, without the flag it silently runs on one thread.
# No -lgomp: the GOMP symbols resolve to the libgomp libtorch_cpu already loaded (one pool).
# -ffp-contract=off: no compiler-chosen FMAs, so every instantiation (training/inference
# forward) rounds identically; the GEMMs use explicit fmadd and lose nothing.
CPU_EXTENSION = LazyExtension("ecgkern_cpu", ("lstm_cpu.cpp", "lstm_cpu_proj.cpp"), extra_cflags=("-fopenmp", "-ffp-contract=off"))
# Line info lets compute-sanitizer name source lines; it does not change the generated code.
# No fast-math, on purpose. The architecture flags are added at build time (this GPU's own).
CUDA_EXTENSION = LazyExtension("ecgkern_cuda", ("lstm_cuda.cpp", "lstm_cuda_kernels.cu"),
                               extra_cuda_cflags=("-lineinfo",), with_cuda=True)
