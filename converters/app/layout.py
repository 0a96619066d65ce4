"""Where every file of a bundle lives. No other module builds artifact paths."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from converters.app.fsutil import exclusive
from converters.app.specs import stage_spec

# The files of one model in each runtime's format, after `<tower>.<file tag>`; bmodels, one per batch size,
# are named by `BundleLayout.bmodel`, .rknn files, one per platform, by `BundleLayout.rknn`.
MODEL_FILE_SUFFIXES = {"onnxruntime": (".onnx",), "ncnn": (".ncnn.param", ".ncnn.bin"), "bmruntime": (), "rknnrt": ()}


def default_bundle_dir(model: str) -> Path:
    """`artifacts/<model>` below the working directory (the repository root, for `make`)."""
    return (Path("artifacts") / model).absolute()


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
    def sensitivity_json(self) -> Path:
        return self.root / "sensitivity.json"

    @property
    def levers_json(self) -> Path:
        return self.root / "levers.json"

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

    def exclusive(self) -> AbstractContextManager[None]:
        """Hold the bundle's lock: one conversion or parity check writes into a bundle at a time."""
        self.root.mkdir(parents=True, exist_ok=True)
        return exclusive(
            self.lock,
            f"Another conversion or parity check is writing into {self.root} right now (lock {self.lock}). "
            "Wait for it to finish, or choose another output directory.",
        )

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
    def tokenizer_hf(self) -> Path:
        """The tokenizer as a Hugging Face `tokenizers` file."""
        return self.root / "tokenizer.hf.json"

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

    @property
    def logs(self) -> Path:
        """Logs of converters that failed (pnnx), kept for the user to read."""
        return self.root / "logs"

    def model_files(self, tower: str, stage: str) -> tuple[Path, ...]:
        """An artifact's files, the model first: `visual.sim.onnx`, or `text.fp16.ncnn.param` and `.bin`."""
        spec = stage_spec(stage)
        return tuple(self.root / f"{tower}.{spec.file_tag}{suffix}" for suffix in MODEL_FILE_SUFFIXES[spec.runtime])

    def bmodel(self, tower: str, stage: str, batch: int) -> Path:
        """A bm1684x stage's model for one batch size: `visual.bm1684x.f16.b8.bmodel`."""
        return self.root / f"{tower}.{stage_spec(stage).file_tag}.b{batch}.bmodel"

    def lowered_graph(self, tower: str, stage: str) -> tuple[Path, Path]:
        """The graph a bmodel is compiled from, as tpu-mlir's interpreter runs it, and its weights."""
        base = f"{tower}.{stage_spec(stage).file_tag}"
        return self.root / f"{base}.tpu.mlir", self.root / f"{base}.tpu_weights.npz"

    def rknn(self, tower: str, stage: str, platform: str) -> Path:
        """A rknn stage's model for one platform: `visual.rknn.fp16.rk3588.rknn`."""
        return self.root / f"{tower}.{stage_spec(stage).file_tag}.{platform}.rknn"

    def rknn_calibration(self, tower: str, stage: str) -> Path:
        """The calibration inputs an int8 .rknn was fitted to, kept so that parity can rebuild it."""
        return self.root / f"{tower}.{stage_spec(stage).file_tag}.calibration.npy"

    def rknn_error_analysis(self, tower: str, stage: str) -> Path:
        """rknn-toolkit2's per-layer cosine table, kept when an int8 tower misses its float-fallback target."""
        return self.root / f"{tower}.{stage_spec(stage).file_tag}.error_analysis.txt"

    @staticmethod
    def external_data_name(model_file: Path) -> str:
        return f"{model_file.name}.data"
