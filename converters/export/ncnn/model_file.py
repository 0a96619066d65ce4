"""An ncnn .param/.bin pair as data: layers with their params and weights, in file order.

The .bin has no index: which weights a layer stores, in what order and of
what size follows from its params, as the layer's `load_model` reads them.
So the weights are read by running the installed runtime's own `load_model`
of every layer against a recording ModelBin, which stays right for any layer
type of this ncnn version. They are written the way ncnn2int8 writes them
(its ModelWriter with storage_type=1): a weight read with a flag word is
stored as int8 when it is int8 and as fp16 otherwise; a weight read raw stays
float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import ncnn
import numpy as np

from converters.errors import ConversionError

MAGIC = "7767517"
# The flag words of ncnn's ModelBin (src/modelbin.cpp).
_FP32_TAG = 0
_FP16_TAG = 0x01306B47
_INT8_TAG = 0x000D4B38
# ModelBin load types: 0 reads a flag word first, 1 reads float32 as is.
TAGGED, RAW = 0, 1
# ncnn2int8's ModelWriter zeroes float32 weights this close to 0 (replace_denormals_with_zero).
_DENORMAL = 1e-30


@dataclass
class Weight:
    data: np.ndarray  # float32, or int8 once quantized; flat
    tagged: bool  # loaded with a flag word (type 0) rather than as raw float32 (type 1)


@dataclass
class Layer:
    type: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: dict[int, str]  # param id → its text in the .param (array ids are -23300 - id)
    weights: list[Weight] = field(default_factory=list)

    def int_param(self, key: int, default: int = 0) -> int:
        return int(self.params.get(key, default))


@dataclass
class NcnnModel:
    layers: list[Layer]
    blob_count: int

    def consumers(self, blob: str) -> list[Layer]:
        return [layer for layer in self.layers if blob in layer.bottoms]


def read_model(param: Path, binary: Path) -> NcnnModel:
    model = _read_param(param)
    net = ncnn.Net()
    if net.load_param(str(param)) != 0:
        raise ConversionError(f"ncnn cannot parse {param}.")
    recorder = _RecordingModelBin(binary.read_bytes(), binary)
    for layer, runtime_layer in zip(model.layers, net.layers(), strict=True):
        first = len(recorder.loads)
        status = runtime_layer.load_model(recorder)
        if recorder.problem or status != 0:
            raise ConversionError(
                f"{binary}: cannot read the weights of {layer.type} '{layer.name}' "
                f"({recorder.problem or f'load_model returned {status}'})."
            )
        layer.weights = recorder.loads[first:]
    if recorder.offset != len(recorder.data):
        raise ConversionError(
            f"{binary} holds {len(recorder.data) - recorder.offset} bytes after the last layer's weights: "
            f"it does not belong to {param.name}."
        )
    return model


def write_model(model: NcnnModel, param: Path, binary: Path) -> None:
    lines = [MAGIC, f"{len(model.layers)} {model.blob_count}"]
    for layer in model.layers:
        blobs = " ".join([*layer.bottoms, *layer.tops])
        params = " ".join(f"{key}={value}" for key, value in layer.params.items())
        counts = f"{len(layer.bottoms)} {len(layer.tops)}"
        lines.append(f"{layer.type:<24} {layer.name:<24} {counts} {blobs} {params}".rstrip())
    param.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with binary.open("wb") as out:
        for weight in (w for layer in model.layers for w in layer.weights):
            out.write(_encode(weight))


def _read_param(path: Path) -> NcnnModel:
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0].strip() != MAGIC:
        raise ConversionError(f"{path} is not an ncnn text .param (first line is not {MAGIC}).")
    layer_count, blob_count = map(int, lines[1].split())
    layers = []
    for line in filter(str.strip, lines[2:]):
        kind, name, bottom_count, top_count, *rest = line.split()
        bottoms, tops = int(bottom_count), int(top_count)
        params = dict(token.split("=", 1) for token in rest[bottoms + tops :])
        layers.append(
            Layer(kind, name, rest[:bottoms], rest[bottoms : bottoms + tops], {int(k): v for k, v in params.items()})
        )
    if len(layers) != layer_count:
        raise ConversionError(f"{path} announces {layer_count} layers but lists {len(layers)}.")
    return NcnnModel(layers, blob_count)


def _aligned(size: int) -> int:
    return (size + 3) & ~3


class _RecordingModelBin(ncnn.ModelBin):
    """Hands each layer the weights it asks for, as ncnn's ModelBinFromDataReader decodes them, and keeps a copy."""

    def __init__(self, data: bytes, path: Path):
        super().__init__()
        self.data, self.path = data, path
        self.offset = 0
        self.loads: list[Weight] = []
        self.problem = ""

    def load(self, *args):
        # The runtime's 2-, 3- and 4-d loads all come here flattened; the layer reshapes.
        *dims, kind = args
        try:
            weight = self._read(math.prod(dims), kind)
        except ValueError as error:
            self.problem = str(error)
            return ncnn.Mat()
        self.loads.append(weight)
        return ncnn.Mat(weight.data)

    def _read(self, count: int, kind: int) -> Weight:
        if kind == RAW:
            return Weight(self._take(np.float32, count, count * 4), tagged=False)
        if kind != TAGGED:
            raise ValueError(f"load type {kind} (block-quantized weights) is not supported")
        (tag,) = np.frombuffer(self.data, np.uint32, 1, self.offset)
        self.offset += 4
        if tag == _FP32_TAG:
            return Weight(self._take(np.float32, count, count * 4), tagged=True)
        if tag == _FP16_TAG:
            return Weight(self._take(np.float16, count, _aligned(count * 2)).astype(np.float32), tagged=True)
        if tag == _INT8_TAG:
            return Weight(self._take(np.int8, count, _aligned(count)), tagged=True)
        raise ValueError(f"weight storage flag {int(tag):#010x} is not fp32, fp16 or int8")

    def _take(self, dtype, count: int, size: int) -> np.ndarray:
        if self.offset + size > len(self.data):
            raise ValueError(f"{self.path.name} ends before the weights do")
        array = np.frombuffer(self.data, dtype, count, self.offset).copy()
        self.offset += size
        return array


def _encode(weight: Weight) -> bytes:
    data = weight.data
    if not weight.tagged:
        return np.where(np.abs(data) < _DENORMAL, np.float32(0), data).astype("<f4").tobytes()
    if data.dtype == np.int8:
        tag, payload = _INT8_TAG, data.tobytes()
    else:
        # ncnn's own cast, so the rounding is the runtime's.
        tag, payload = _FP16_TAG, np.array(ncnn.cast_float32_to_float16(ncnn.Mat(data))).tobytes()
    payload = np.uint32(tag).tobytes() + payload
    return payload + bytes(_aligned(len(payload)) - len(payload))
