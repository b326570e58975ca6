"""What this machine's CPU is and can do: vendor, model, the vector and matrix extensions that
decide which kernels are fast (AVX2, AVX-512, AVX-512 BF16, AMX), and the BLAS that torch uses.

Fast paths are chosen by measuring (layers/path_choice.py), but two choices cannot wait for a
measurement: the precision a run starts in, and what a benchmark records so that figures from
different machines are never mixed up. Both read these facts. No torch import here: the facts come
from /proc/cpuinfo (Linux) or the platform module, and the BLAS from torch only when asked.
"""
from __future__ import annotations

import functools
import os
import platform
from typing import Any

# /proc/cpuinfo flag names of the extensions that matter for matrix products.
EXTENSIONS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
# Takes the CPU to have these extensions instead (comma-separated, may be empty): the test suite
# sets it so that precision="auto" computes the same numbers on every machine.
EXTENSIONS_ENVIRONMENT = "STRATALM_CPU_EXTENSIONS"


@functools.lru_cache(maxsize=1)
def cpu_facts() -> dict[str, Any]:
    """{"vendor", "model", "extensions": [...]} of the first CPU listed."""
    facts: dict[str, Any] = {"vendor": platform.processor() or platform.machine(),
                             "model": platform.processor() or platform.machine(), "extensions": []}
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "vendor_id":
                    facts["vendor"] = value
                elif key == "model name":
                    facts["model"] = value
                elif key == "flags":
                    flags = set(value.split())
                    facts["extensions"] = [name for name in EXTENSIONS if name in flags]
                    break  # one CPU is enough: the cores of a machine are alike
    except OSError:
        pass
    return facts


def has_amx() -> bool:
    """Whether the CPU has AMX tiles with bf16, where bf16 matrix products run about 3x fp32."""
    extensions = os.environ.get(EXTENSIONS_ENVIRONMENT)
    found = extensions.split(",") if extensions is not None else cpu_facts()["extensions"]
    return {"amx_tile", "amx_bf16"} <= set(found)


def blas() -> str:
    """The BLAS torch was built with (e.g. "mkl", "openblas"), from its build settings."""
    import re

    import torch

    found = re.search(r"BLAS_INFO=([\w.-]+)", torch.__config__.show())
    return found.group(1) if found else "unknown"


def describe() -> dict[str, Any]:
    """Everything a benchmark records about the machine's CPU."""
    return {**cpu_facts(), "amx": has_amx(), "blas": blas()}
