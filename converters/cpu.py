"""The CPU every timing and parity number was measured on.

int8 kernels differ by instruction set (AVX2 without VNNI saturates u8×s8
products where AVX-512 VNNI and ARM do not), so a report names it.
"""

from __future__ import annotations

import platform
from pathlib import Path

# The /proc/cpuinfo flags that change which ncnn and onnxruntime kernels run, most capable first.
ISA_FLAGS = (("avx512_vnni", "AVX-512 VNNI"), ("avx512f", "AVX-512"), ("avx_vnni", "AVX-VNNI"), ("avx2", "AVX2"),
             ("asimdhp", "ARMv8.2 fp16"), ("asimd", "NEON"))


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def cpu_name() -> str:
    for line in _cpuinfo():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_description() -> str:
    """E.g. "AMD EPYC (x86_64, AVX-512 VNNI)"."""
    flags = set()
    for line in _cpuinfo():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
            break
    best = next((name for flag, name in ISA_FLAGS if flag in flags), None)
    return f"{cpu_name()} ({platform.machine()}{', ' + best if best else ''})"
