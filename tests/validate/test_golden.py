"""golden.json as an app author uses it: lossless inputs, a resize tolerance, each runtime's input form, a tolerance per row."""

from __future__ import annotations

import importlib.metadata
import json

import ncnn
import numpy as np
import pytest
from PIL import Image

from converters.app.bundle import Bundle
from converters.app.layout import BundleLayout
from converters.app.preprocess import load_image
from converters.app.runtimes.ncnn_runtime import NcnnTower
from converters.data import PARITY_SET_DIR
from converters.validate.golden import GOLDEN_COSINE_MIN


def golden(bundle) -> dict:
    return json.loads(BundleLayout(bundle).golden.read_text(encoding="utf-8"))


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_golden_photos_are_lossless_copies_of_what_pillow_decodes(tiny_bundle):
    for image in golden(tiny_bundle)["images"]:
        png = tiny_bundle / image["file"]
        assert png.suffix == ".png"
        original = PARITY_SET_DIR / "images" / f"{png.stem}.jpg"
        assert np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(original)))


def test_the_resized_image_is_given_and_a_near_miss_is_within_its_tolerance(tiny_bundle):
    bundle = Bundle.open(tiny_bundle)
    for image in golden(tiny_bundle)["images"]:
        expected = np.asarray(Image.open(tiny_bundle / image["resized_rgb_file"]), np.int16)
        ours = np.asarray(bundle.transform.resized_rgb(load_image(tiny_bundle / image["file"])), np.int16)
        assert np.array_equal(ours, expected)
        # An app whose bicubic rounds differently is off by one here and there: that passes, ±3 does not.
        off_by_one = ours + np.random.default_rng(0).integers(-1, 2, ours.shape)
        assert np.abs(off_by_one - expected).max() <= image["resized_rgb_tolerance"] < 3


def test_a_golden_photo_catches_a_resize_that_always_goes_rows_first(tiny_bundle):
    """Pillow 13 resizes a photo whose height shrinks by more than twice the width's pixels columns first.
    A port that resizes rows first (Pillow 12 and before, and most ports) misses the golden image's sha256,
    and at ViT's 224 misses its ±2 tolerance too."""
    photos = [tiny_bundle / image["file"] for image in golden(tiny_bundle)["images"]]
    tall = [p for p in photos if Image.open(p).height > 2 * Image.open(p).width]
    assert tall, "the golden photos need a portrait one"
    photo = Image.open(tall[0]).convert("RGB")
    for size in (Bundle.open(tiny_bundle).resolution, 224):
        pillow = np.asarray(photo.resize((size, size), Image.Resampling.BICUBIC), np.int16)
        # One-axis resizes are one pass each: this is the rows-first two-pass resize.
        rows_first = photo.resize((size, photo.height), Image.Resampling.BICUBIC).resize((size, size), Image.Resampling.BICUBIC)
        difference = np.abs(np.asarray(rows_first, np.int16) - pillow).max()
        assert difference > (0 if size != 224 else golden(tiny_bundle)["images"][0]["resized_rgb_tolerance"])


@pytest.mark.parametrize("tiny_bundle", ["tiny-vit"], indirect=True)
def test_ncnn_text_towers_reproduce_their_rows_from_the_unpadded_int32_form(tiny_bundle):
    data = golden(tiny_bundle)
    manifest = Bundle.open(tiny_bundle).manifest
    for stage in ("ncnn-fp32", "ncnn-fp16", "ncnn-int8"):
        tower = NcnnTower(manifest.artifact("text", stage), threads=1)
        row = data["embeddings"][stage]
        for caption, expected in zip(data["captions"], row["texts"]):
            assert caption["position_ids"] == list(range(len(caption["unpadded_ids"])))
            feed = {"in0": np.array(caption["unpadded_ids"], np.int32), "in1": np.array(caption["position_ids"], np.int32)}
            (got,) = tower.extract(feed, ["out0"])
            assert cosine(got.reshape(-1), expected) >= row["cosine_min"], (stage, caption["text"])
    # Fed the padded ids as they are (golden.json's first field), the fp32 graph misses its own row.
    tower, row = NcnnTower(manifest.artifact("text", "ncnn-fp32"), threads=1), data["embeddings"]["ncnn-fp32"]
    padded = np.array(data["captions"][0]["token_ids"], np.int32)
    (wrong,) = tower.extract({"in0": padded, "in1": np.arange(len(padded), dtype=np.int32)}, ["out0"])
    assert cosine(wrong.reshape(-1), row["texts"][0]) < row["cosine_min"]


def test_every_row_states_its_tolerance_by_precision(tiny_bundle):
    manifest = Bundle.open(tiny_bundle).manifest
    for stage, row in golden(tiny_bundle)["embeddings"].items():
        if stage == "pytorch":
            assert "cosine_min" not in row
        else:
            assert row["cosine_min"] == GOLDEN_COSINE_MIN[manifest.entry("visual", stage).artifact.precision]


def test_the_manifest_names_the_versions_that_made_the_files(tiny_bundle):
    tools = Bundle.open(tiny_bundle).manifest.tools
    assert tools["ncnn"] == importlib.metadata.version("ncnn") and ncnn.__version__
    assert tools["onnxruntime"] == importlib.metadata.version("onnxruntime")
    assert tools["pnnx"] == importlib.metadata.version("pnnx") and tools["cnclip-converters"]
