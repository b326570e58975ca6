"""Compiled CPU kernels for products of few rows (kernels/few_rows.c), built on first use: float32
weights, and the int8 first pass of generate/shortlist.py.

A decoding step at batch 1 multiplies one vector by every weight matrix, so it takes as long as
reading them. MKL reads a GPT-2 block's matrices (0.6-2.4 MB) at 6-8 GB/s on an AMD EPYC with AVX2:
one core, by a slow matrix-vector path it takes on AMD CPUs. The kernel streams each matrix once
on all of torch's threads: the 24 block products of a 6 x 384 GPT-2 took 2.6-3.4 ms this way
against 4.5-6.6 ms by the best MKL path (the 24 in a row, caches evicted by the head in between;
20 GB/s is the machine's read rate on 2 threads). Where MKL is fast (Intel), it stays the faster
path, and layers/linear.py only uses what measures faster on the machine it runs on.

The kernel is C with AVX2 and FMA intrinsics, compiled with the system's C compiler (`CC`, else
gcc or cc) in about a second, and kept in a cache folder (STRATALM_KERNEL_CACHE, else
~/.cache/stratalm/kernels) under a name that hashes the source, the flags and the compiler, so
an edit or another compiler builds anew. It is there only on x86-64 Linux with AVX2 and FMA
(torch's own CPU capability says so), with torch's OpenMP thread pool (the kernel's OpenMP calls
then resolve to the libgomp torch has loaded: one pool, torch's thread count) and a compiler
that builds it; anywhere else `available()` is False and `unavailable_reason()` says why, and
decoding keeps torch's paths.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import torch

SOURCE = Path(__file__).with_name("kernels") / "few_rows.c"
FLAGS = ("-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC")
CACHE_ENVIRONMENT = "STRATALM_KERNEL_CACHE"
COMPILE_SECONDS = 120  # a first build takes about a second; a stuck compiler must not hang decoding


@functools.lru_cache(maxsize=1)
def _load() -> tuple[Optional[ctypes.CDLL], str]:
    """(the kernels' library, "") or (None, why it is not there)."""
    if not (sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")):
        return None, f"the kernel is for x86-64 Linux, not {sys.platform} on {platform.machine()}"
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ("AVX2", "AVX512"):
        return None, f"the CPU lacks AVX2 and FMA (torch's CPU capability is {capability})"
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None, "torch does not use OpenMP threads here, which the kernel shares"
    compiler = _compiler()
    if not compiler:
        return None, "no C compiler found (set CC, or install gcc)"
    try:
        library = ctypes.CDLL(str(_build(compiler)))
    except (OSError, subprocess.SubprocessError) as error:
        return None, f"building the kernel with {compiler} failed: {str(error).strip().splitlines()[-1][:300]}"
    for function in (library.few_rows_linear, library.int8_rows_linear):
        function.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long] * 3
        function.restype = None
    return library, ""


def _compiler() -> Optional[str]:
    return os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")


def _build(compiler: str) -> Path:
    """The compiled library, from the cache or compiled now (into a temporary name, then renamed,
    so processes starting together never load a half-written file)."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    digest = hashlib.sha256("\0".join([SOURCE.read_text(), *FLAGS, compiler, version]).encode()).hexdigest()[:16]
    folder = Path(os.environ.get(CACHE_ENVIRONMENT) or Path.home() / ".cache" / "stratalm" / "kernels")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        folder = Path(tempfile.gettempdir()) / "stratalm-kernels"
        folder.mkdir(parents=True, exist_ok=True)
    library = folder / f"few_rows-{digest}.so"
    if not library.exists():
        handle, partial = tempfile.mkstemp(dir=folder, suffix=".so.partial")
        os.close(handle)
        try:
            done = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", partial], capture_output=True, text=True,
                                  timeout=COMPILE_SECONDS)
            if done.returncode != 0:
                raise OSError(done.stderr or f"{compiler} exited with status {done.returncode}")
            os.replace(partial, library)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
    return library


def available() -> bool:
    """Whether the kernel runs here (builds it on the first call)."""
    return _load()[0] is not None


def unavailable_reason() -> str:
    """Why the kernel does not run here ("" when it does)."""
    return _load()[1]


def few_rows_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """F.linear(x, weight, bias) by the kernel, for 2-D float32 CPU tensors, x and weight (and bias)
    contiguous; callers check `available()` first."""
    rows, width = x.shape
    out = torch.empty(rows, weight.shape[0], dtype=x.dtype)
    _load()[0].few_rows_linear(x.data_ptr(), weight.data_ptr(), None if bias is None else bias.data_ptr(),
                               out.data_ptr(), rows, width, weight.shape[0])
    return out


def int8_rows_linear(x: torch.Tensor, quantized: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(x @ quantized^T) * scale, for x (rows, in) float32, `quantized` (out, in) int8 and `scale`
    (out,) float32, all contiguous on the CPU; callers check `available()` first."""
    rows, width = x.shape
    out = torch.empty(rows, quantized.shape[0], dtype=torch.float32)
    _load()[0].int8_rows_linear(x.data_ptr(), quantized.data_ptr(), scale.data_ptr(), out.data_ptr(),
                                rows, width, quantized.shape[0])
    return out
