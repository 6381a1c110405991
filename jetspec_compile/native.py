"""Build (once per machine, cached) and load the native library: `jetspec::tree_attention`, `jetspec::linear`.

The op's schema and its CPU kernel live in C++ (`csrc/tree_attention.cpp`, TORCH_LIBRARY), so graphs
compiled by AOTInductor call the kernel through the dispatcher without entering the Python interpreter.
The library is compiled with the machine's C++ compiler on first use by `torch.utils.cpp_extension`
(about a minute), cached under ``$JETSPEC_NATIVE_DIR`` or torch's extensions folder, and rebuilt when
the source changes. Without a compiler, the first use fails with one error saying what to install.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from .errors import JetSpecError

SOURCES = [Path(__file__).parent / "csrc" / f for f in ("tree_attention.cpp", "linear.cpp", "panel_gemm.cpp")]
NAMES = ", ".join(s.name for s in SOURCES)
_LOADED: list[str] = []


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


def _build_flags() -> tuple[str, list[str]]:
    """(name suffix, compiler flags): AVX2+FMA where the CPU has them, portable code otherwise."""
    if {"avx2", "fma"} <= _cpu_flags():
        return "avx2", ["-O3", "-mavx2", "-mfma"]
    return "generic", ["-O3"]


def _check_toolchain() -> None:
    cxx = os.environ.get("CXX", "c++")
    missing = [what for what, ok in ((f"a C++ compiler ({cxx})", shutil.which(cxx)),
                                     ("ninja", shutil.which("ninja"))) if not ok]
    if missing:
        raise JetSpecError(
            f"the native jetspec kernels ({NAMES}) must be compiled once on this machine, "
            f"but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing (expected on PATH; "
            "install g++ and ninja, e.g. the build-essential and ninja-build system packages)")


def load_native() -> str:
    """Load the native library (building it first if needed); returns the loaded library's path."""
    if _LOADED:
        return _LOADED[0]
    import torch.utils.cpp_extension as cpp

    suffix, flags = _build_flags()
    name = f"jetspec_native_{suffix}"
    build_dir = os.environ.get("JETSPEC_NATIVE_DIR")
    if build_dir:
        Path(build_dir).mkdir(parents=True, exist_ok=True)
    _check_toolchain()
    so = Path(build_dir or cpp._get_build_directory(name, verbose=False)) / f"{name}.so"
    if not so.is_file():
        print(f"building the native tree-attention kernel ({suffix}) once for this machine -> {so.parent} ...",
              file=sys.stderr, flush=True)
    try:
        cpp.load(name=name, sources=[str(s) for s in SOURCES], extra_cflags=flags, build_directory=build_dir,
                 is_python_module=False, verbose=False)
    except (RuntimeError, OSError, ImportError) as e:
        raise JetSpecError(f"building or loading the native kernels ({NAMES}) failed: {str(e).strip()[-800:]}") from None
    _LOADED.append(str(so))
    return str(so)
