"""A bundle's ONNX towers as a model folder for Immich's machine-learning service (`docs/immich.md`).

Immich feeds the text model `text` int32 [1, context_length] and the image model `image` float32 [1, 3, S, S], and
stores output 0 as it comes; its own exports L2-normalize inside the graph. The bundle's towers take `token_ids`
int64 and `pixels` and give unnormalized embeddings, so each graph is wrapped: a Cast int32 → int64 in front of
the text tower, the input renamed for the visual one, and an LpNormalization after both. The layers in between
are the bundle's, byte for byte, so the bundle's parity still speaks for them; the folder's own check
(`converters.export.immich_check`) runs them as Immich does.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from converters.app.fsutil import sha256_file
from converters.app.immich import MARKER, ImmichFolder
from converters.app.manifest import Manifest
from converters.errors import UserError

# Protobuf cannot hold more than 2 GiB in one message; ViT-H's fp32 visual tower needs its weights beside it.
EXTERNAL_DATA_FROM = 1_800_000_000


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.name == old:
            value.name = new


def _set_shape(value: onnx.ValueInfoProto, shape: list[int]) -> None:
    dims = value.type.tensor_type.shape.dim
    del dims[:]
    for size in shape:
        dims.add().dim_value = size


def _normalized_output(graph: onnx.GraphProto, dim: int) -> None:
    """Output 0 becomes float32 [1, dim], L2-normalized, under its old name."""
    output = graph.output[0]
    name, raw = output.name, f"{output.name}_unnormalized"
    _rename(graph, name, raw)
    output.name = name
    source = raw
    if output.type.tensor_type.elem_type != TensorProto.FLOAT:
        graph.node.append(helper.make_node("Cast", [raw], [f"{raw}_float"], to=TensorProto.FLOAT))
        source = f"{raw}_float"
        output.type.tensor_type.elem_type = TensorProto.FLOAT
    graph.node.append(helper.make_node("LpNormalization", [source], [name], axis=1, p=2))
    _set_shape(output, [1, dim])


def wrap_text(source: Path, destination: Path, context_length: int, dim: int) -> None:
    model = onnx.load(str(source))
    graph = model.graph
    original = graph.input[0]
    _rename(graph, original.name, "text_int64")
    graph.node.insert(0, helper.make_node("Cast", ["text"], ["text_int64"], to=TensorProto.INT64))
    graph.input.remove(original)
    graph.input.insert(0, helper.make_tensor_value_info("text", TensorProto.INT32, [1, context_length]))
    _normalized_output(graph, dim)
    _save(model, destination)


def wrap_visual(source: Path, destination: Path, resolution: int, dim: int) -> None:
    model = onnx.load(str(source))
    graph = model.graph
    _rename(graph, graph.input[0].name, "image")
    _set_shape(graph.input[0], [1, 3, resolution, resolution])
    _normalized_output(graph, dim)
    _save(model, destination)


def _save(model: onnx.ModelProto, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    external = model.ByteSize() > EXTERNAL_DATA_FROM
    onnx.save_model(model, str(destination), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=f"{destination.name}.data")


def write_folder(manifest: Manifest, stage: str, name: str, root: Path) -> ImmichFolder:
    """Immich's files for `stage` of the bundle, in `root` (a staging folder)."""
    folder = ImmichFolder(root)
    dim, resolution = manifest.embedding.dim, manifest.preprocess["resolution"]
    context_length = manifest.tokenizer["context_length"]
    wrap_text(manifest.artifact("text", stage).files[0], folder.text_model, context_length, dim)
    wrap_visual(manifest.artifact("visual", stage).files[0], folder.visual_model, resolution, dim)
    _write_json(folder.config, {
        "embed_dim": dim,
        "vision_cfg": {"image_size": resolution},
        "text_cfg": {"context_length": context_length, "vocab_size": manifest.tokenizer["vocab_size"]},
    })
    # The bundle's Hugging Face file: the same ids as cn_clip on ordinary text (tests/app/test_tokenizer.py).
    shutil.copyfile(manifest.file("tokenizer_hf"), folder.tokenizer)
    special = manifest.tokenizer["special_token_ids"]
    if special["[PAD]"] != manifest.tokenizer["padding_id"]:
        raise UserError(f"{manifest.path}: [PAD] is id {special['[PAD]']}, but cn_clip pads with "
                        f"{manifest.tokenizer['padding_id']}; Immich pads with the pad token's id.")
    _write_json(folder.tokenizer_config, {
        "pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
        "mask_token": "[MASK]", "model_max_length": context_length, "do_lower_case": True,
        "tokenizer_class": "BertTokenizer",
    })
    transform = manifest.image_transform()
    _write_json(folder.preprocess_cfg, {
        "size": [resolution, resolution], "mode": "RGB", "mean": list(transform.mean), "std": list(transform.std),
        "interpolation": "bicubic",
        # open_clip's key; Immich versions that read it squash as cn_clip does, the others crop (docs/immich.md).
        "resize_mode": "squash" if transform.resize == "square" else "shortest",
    })
    folder.readme.write_text(readme(manifest, stage, name), "utf-8")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    _write_json(folder.marker, {
        "written_by": "cnclip-converters (python -m converters immich)",
        "model": manifest.model, "stage": stage, "name": name,
        "checkpoint": manifest.checkpoint.description, "checkpoint_sha256": manifest.checkpoint.sha256,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "files": {str(p.relative_to(root)): sha256_file(p) for p in files},
    })
    return folder


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", "utf-8")


def readme(manifest: Manifest, stage: str, name: str) -> str:
    return f"""This folder is NOT the model its name says.

It is Chinese-CLIP {manifest.model} ({manifest.checkpoint.description}), stage {stage}, made by
cnclip-converters for Immich's machine-learning service. It sits under the name {name} only because Immich
accepts no model name outside its allow-list; {name} has the same embedding size ({manifest.embedding.dim}).
Search in Chinese (and English) works; the vectors are not comparable with OpenAI's {name}.

Keep Immich from replacing it: HF_HUB_OFFLINE=1, MACHINE_LEARNING_RKNN=false and MACHINE_LEARNING_ANN=false in
the machine-learning container's environment (a missing file makes Immich download {name} over it).

immich-check.md says how it was checked as Immich runs it. After installing it, run the Smart Search job for
all photos (Administration > Jobs) so every photo is embedded with this model.

To switch back: delete this folder (or restore the backup the installer kept, {name}.cnclip-previous), and run
Smart Search for all photos again; Immich downloads the real {name} when the folder is missing.
"""


def publish(staging: Path, out: Path, passed: bool) -> Path:
    """Move a checked staging folder to `out` (or `out.failed` when its check failed), replacing only what we wrote."""
    target = out if passed else out.with_name(out.name + ".failed")
    refuse_foreign(target)
    if target.exists():
        shutil.rmtree(target)
    os.chmod(staging, 0o755)  # mkdtemp's 0700 would hide it from an Immich running as another user
    os.replace(staging, target)
    return target


def refuse_foreign(target: Path) -> None:
    if target.exists() and not (target / MARKER).is_file():
        raise UserError(
            f"{target} exists and was not written by this tool (no {MARKER} in it); it is left alone. Move it away "
            f"first, e.g. mv {target} {target}.backup"
        )


def install(folder: Path, cache: Path, name: str) -> Path:
    """Copy a checked folder into Immich's cache as `<cache>/clip/<name>`: a folder there that this tool did not
    write is refused; one it wrote is kept as `<name>.cnclip-previous`; the copy is renamed into place whole."""
    if not ImmichFolder(folder).marker.is_file():
        raise UserError(f"{folder} has no {MARKER}: only a folder made by `immich` (and passing its check) is installed.")
    clip = cache / "clip"
    target = clip / name
    refuse_foreign(target)
    clip.mkdir(parents=True, exist_ok=True)
    incoming = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=clip))
    try:
        shutil.copytree(folder, incoming, dirs_exist_ok=True)
        os.chmod(incoming, 0o755)
        if target.exists():
            backup = clip / f"{name}.cnclip-previous"
            if backup.exists():
                shutil.rmtree(backup)
            os.replace(target, backup)
        os.replace(incoming, target)
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
    return target
