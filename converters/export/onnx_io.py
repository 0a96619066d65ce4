"""Saving ONNX models the same way in every stage.

Protobuf cannot serialise a model over 2 GB (ViT-H-14's fp32 visual tower is
about 2.5 GB), so above a threshold the weights go to one `<model>.onnx.data`
file beside the graph; below it the model stays one file, which is simpler
for apps to ship.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from converters.app.layout import BundleLayout

EXTERNAL_DATA_ABOVE_BYTES = 1_800_000_000


def weights_bytes(model: onnx.ModelProto) -> int:
    return sum(t.ByteSize() for t in model.graph.initializer)


def save(model: onnx.ModelProto, path: Path) -> list[Path]:
    """Save `model` at `path`; return the files written, the graph first."""
    if weights_bytes(model) <= EXTERNAL_DATA_ABOVE_BYTES:
        onnx.save_model(model, path)
        return [path]
    data_name = BundleLayout.external_data_name(path)
    onnx.save_model(
        model, path, save_as_external_data=True, all_tensors_to_one_file=True, location=data_name, size_threshold=1024
    )
    return [path, path.parent / data_name]
