"""Where every file of a bundle lives. No other module builds artifact paths."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS_ROOT = REPO_ROOT / "artifacts"
PARITY_SET_DIR = REPO_ROOT / "tests" / "data" / "parity"
CALIBRATION_SET_DIR = REPO_ROOT / "tests" / "data" / "calibration"


def default_bundle_dir(model: str) -> Path:
    return ARTIFACTS_ROOT / model


@dataclass(frozen=True)
class BundleLayout:
    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def parity_json(self) -> Path:
        return self.root / "parity.json"

    @property
    def parity_md(self) -> Path:
        return self.root / "parity.md"

    @property
    def bench_json(self) -> Path:
        return self.root / "bench.json"

    @property
    def bench_md(self) -> Path:
        return self.root / "bench.md"

    @property
    def reference(self) -> Path:
        """PyTorch embeddings of the parity set, cached per checkpoint."""
        return self.root / "reference.npz"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def staging(self) -> Path:
        """Stages write here first; files move into `root` only once complete."""
        return self.root / ".staging"

    @property
    def vocab(self) -> Path:
        return self.root / "vocab.txt"

    @property
    def tokenizer_spec(self) -> Path:
        return self.root / "tokenizer.json"

    @property
    def preprocess_spec(self) -> Path:
        return self.root / "preprocess.json"

    @property
    def golden(self) -> Path:
        """Expected inputs and embeddings for an app's own tests."""
        return self.root / "golden.json"

    @property
    def golden_images(self) -> Path:
        return self.root / "golden"

    def onnx_model(self, tower: str, tag: str) -> Path:
        return self.root / f"{tower}.{tag}.onnx"

    def ncnn_model(self, tower: str, tag: str) -> tuple[Path, Path]:
        return self.root / f"{tower}.{tag}.ncnn.param", self.root / f"{tower}.{tag}.ncnn.bin"

    @staticmethod
    def external_data_name(model_file: Path) -> str:
        return f"{model_file.name}.data"
