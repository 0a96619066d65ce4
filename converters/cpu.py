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


def cpu_description() -> str:
    """E.g. "AMD EPYC (x86_64, AVX-512 VNNI)"."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    # The first core's flags ("Features" on ARM) stand for all of them.
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith(("flags", "Features"))), [])
    best = next((name for flag, name in ISA_FLAGS if flag in flags), None)
    name = names[0] if names else platform.processor() or platform.machine()
    return f"{name} ({platform.machine()}{', ' + best if best else ''})"
