"""What `serve` asks of glibc's allocator: large blocks mapped apart, so that the arrays a reload frees go back to
the system instead of leaving holes in the heap (the server's memory grew by a seventh in four minutes)."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import ctypes, sys
from converters.search.library import map_large_blocks_apart

class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype, libc.malloc.restype, libc.free.argtypes = Mallinfo2, ctypes.c_void_p, [ctypes.c_void_p]
if sys.argv[1] == "apart":
    map_large_blocks_apart()
libc.free(libc.malloc(4 << 20))  # a mapped block freed: left alone, glibc raises its threshold past its size
mapped = libc.mallinfo2().hblkhd
block = libc.malloc(4 << 20)
print(libc.mallinfo2().hblkhd - mapped >= 4 << 20)
libc.free(block)
"""


def mapped_after_a_free(mode: str) -> bool:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip() == "True"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's; elsewhere serve leaves the allocator as it is")
def test_a_large_block_is_mapped_apart_even_after_one_was_freed():
    assert mapped_after_a_free("apart")
    assert not mapped_after_a_free("default")  # glibc's own way, which the setting changes
