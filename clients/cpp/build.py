"""Build the C++ reference client (`cnclip-embed`) for x86_64 or, cross-compiled, for aarch64.

    python clients/cpp/build.py [--arch x86_64|aarch64] [--out build/client/ARCH]

ncnn comes from its sdist on PyPI, the same version as the `ncnn` wheel the
converter checks its artifacts with, so the client runs the ncnn that made
the parity rows. `pip download` cannot fetch that sdist (it stamps its
version from the build date and pip refuses it as inconsistent), so the file
is taken from the registry's simple index and checked against the sha256 the
index gives. The built library is cached outside the checkout, keyed by
version, architecture and build flags ($CNCLIP_BUILD_CACHE, default
~/.cache/cnclip), because compiling it takes minutes.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIMPLE_INDEX = os.environ.get("CNCLIP_PYPI_SIMPLE", "https://pypi.org/simple")
ARCHES = ("x86_64", "aarch64")
# What ncnn's library needs for two CLIP towers on a CPU: no GPU, no tools, no Python module.
NCNN_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DNCNN_VULKAN=OFF",
    "-DNCNN_BUILD_TOOLS=OFF",
    "-DNCNN_BUILD_EXAMPLES=OFF",
    "-DNCNN_BUILD_BENCHMARK=OFF",
    "-DNCNN_BUILD_TESTS=OFF",
    "-DNCNN_PYTHON=OFF",
    "-DNCNN_SHARED_LIB=OFF",
)
# Which of ncnn's kernels each client carries. The x86 client checks the client's own logic and gives parity an
# x86 row; it ships nowhere, so its kernels are SSE2 alone (AVX and its successors off): it runs on any x86-64 and
# its ncnn compiles in a fraction of the time, which a fresh CI machine pays. The aarch64 client stands in for a
# phone or an RK3588 board (Cortex-A76/A55: ARMv8.2 with fp16 and dot product): those kernels, not ARMv8.4/8.6's
# bf16, i8mm and SVE ones, which `qemu-aarch64 -cpu max` would otherwise run instead.
KERNELS = {
    "x86_64": ("-DNCNN_AVX=OFF",),
    "aarch64": ("-DNCNN_ARM84BF16=OFF", "-DNCNN_ARM84I8MM=OFF", "-DNCNN_ARM86SVE=OFF"),
}
# Debian's cross compiler and the arm64 multiarch libraries (dpkg --add-architecture arm64).
CROSS = {
    "aarch64": (
        "-DCMAKE_SYSTEM_NAME=Linux",
        "-DCMAKE_SYSTEM_PROCESSOR=aarch64",
        "-DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc",
        "-DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++",
        "-DCMAKE_FIND_ROOT_PATH=/usr/aarch64-linux-gnu",
        "-DCMAKE_LIBRARY_ARCHITECTURE=aarch64-linux-gnu",
        "-DCMAKE_FIND_ROOT_PATH_MODE_PROGRAM=NEVER",
        "-DCMAKE_FIND_ROOT_PATH_MODE_LIBRARY=BOTH",
        "-DCMAKE_FIND_ROOT_PATH_MODE_INCLUDE=BOTH",
        "-DCMAKE_FIND_ROOT_PATH_MODE_PACKAGE=BOTH",
    ),
}
# pkg-config (which FindOpenSSL asks first) must list the arm64 libraries, not this machine's.
CROSS_ENV = {"aarch64": {"PKG_CONFIG_LIBDIR": "/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig"}}
# The Debian packages are listed once, in the Makefile (CLIENT_PACKAGES_<arch>).
APT_HINT = "make client-packages ARCH={arch} (as root: Debian's packages)"


class BuildError(Exception):
    pass


def ncnn_version() -> str:
    try:
        return importlib.metadata.version("ncnn")
    except importlib.metadata.PackageNotFoundError:
        raise BuildError("The ncnn wheel is not installed in this Python; run `make venv` first.") from None


def cache_root() -> Path:
    return Path(os.environ.get("CNCLIP_BUILD_CACHE") or Path.home() / ".cache" / "cnclip")


def _flags(arch: str) -> tuple[str, ...]:
    return NCNN_FLAGS + KERNELS[arch] + CROSS.get(arch, ())


def _run(command: list[str], log: Path, what: str, arch: str) -> None:
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(command)}\n".encode())
        out.flush()
        env = os.environ | CROSS_ENV.get(arch, {})
        status = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    if status != 0:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        raise BuildError(f"{what} failed (exit {status}); the end of {log}:\n" + "\n".join(tail))


def _sdist(version: str, into: Path) -> Path:
    """Download ncnn-VERSION.tar.gz from the simple index and check its sha256."""
    request = urllib.request.Request(f"{SIMPLE_INDEX}/ncnn/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    name = f"ncnn-{version}.tar.gz"
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            files = json.load(response)["files"]
        entry = next((f for f in files if f["filename"] == name), None)
        if entry is None:
            raise BuildError(f"{SIMPLE_INDEX}/ncnn/ lists no {name}: ncnn {version} has no sdist to build from.")
        target = into / name
        with urllib.request.urlopen(entry["url"], timeout=300) as response, target.open("wb") as out:
            shutil.copyfileobj(response, out)
    except OSError as error:
        raise BuildError(f"Cannot download {name} from {SIMPLE_INDEX} ({error}); the registry must be reachable.") from error
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    if digest != entry["hashes"]["sha256"]:
        raise BuildError(f"{name} has sha256 {digest}, but the index says {entry['hashes']['sha256']}; try again.")
    return target


def ensure_ncnn(arch: str, jobs: int) -> Path:
    """The installed ncnn for `arch` (its cmake package folder), built on first use."""
    version = ncnn_version()
    key = hashlib.sha256("\n".join(_flags(arch)).encode()).hexdigest()[:12]
    prefix = cache_root() / "ncnn" / f"{version}-{arch}-{key}"
    package = prefix / "lib" / "cmake" / "ncnn"
    if (package / "ncnnConfig.cmake").is_file():
        return package
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=prefix.parent, prefix=f".{prefix.name}.") as scratch:
        scratch = Path(scratch)
        log = scratch / "build.log"
        print(f"building ncnn {version} for {arch} from its sdist (a few minutes; cached in {prefix})", file=sys.stderr)
        with tarfile.open(_sdist(version, scratch)) as archive:
            archive.extractall(scratch, filter="data")
        source = scratch / f"ncnn-{version}"
        staged = scratch / "install"
        _run(["cmake", "-S", str(source), "-B", str(scratch / "build"), f"-DCMAKE_INSTALL_PREFIX={staged}",
              *_flags(arch)], log, f"Configuring ncnn {version} for {arch}", arch)
        _run(["cmake", "--build", str(scratch / "build"), "-j", str(jobs), "--target", "install"], log,
             f"Compiling ncnn {version} for {arch}", arch)
        # Installed in one rename: an interrupted build never leaves a cache entry that looks finished.
        staged.rename(prefix)
    return package


def build_client(arch: str, out: Path, jobs: int) -> Path:
    missing = [tool for tool in ("cmake", "g++" if arch == "x86_64" else "aarch64-linux-gnu-g++") if not shutil.which(tool)]
    if missing:
        raise BuildError(f"{', '.join(missing)} not found; install the build tools: {APT_HINT.format(arch=arch)}")
    package = ensure_ncnn(arch, jobs)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "build.log"
    log.write_text("")
    _run(["cmake", "-S", str(HERE), "-B", str(out / "cmake"), f"-Dncnn_DIR={package}",
          f"-DCMAKE_RUNTIME_OUTPUT_DIRECTORY={out.resolve()}", *CROSS.get(arch, ())], log,
         f"Configuring the client for {arch} (missing libraries? {APT_HINT.format(arch=arch)})", arch)
    _run(["cmake", "--build", str(out / "cmake"), "-j", str(jobs)], log, f"Compiling the client for {arch}", arch)
    return out / "cnclip-embed"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=ARCHES, default=platform.machine())
    parser.add_argument("--out", type=Path, help="default: build/client/ARCH")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    if args.arch not in ARCHES:
        parser.error(f"cannot build for {args.arch}; choose one of {', '.join(ARCHES)}")
    try:
        binary = build_client(args.arch, args.out or Path("build/client") / args.arch, args.jobs)
    except BuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(binary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
