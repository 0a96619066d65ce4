"""The torch-free preprocessing against cn_clip.clip.image_transform, which it must equal exactly."""

from __future__ import annotations

import io
import json
import struct
import tempfile
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from cn_clip.clip import image_transform
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import ExifTags, Image, ImageOps

from converters.app import preprocess as preprocess_module
from converters.app.preprocess import ImageError, Transform, load_image
from converters.data import PARITY_SET_DIR
from converters.errors import UserError

PARITY_DIR = PARITY_SET_DIR / "images"
PARITY_IMAGES = sorted(PARITY_DIR.glob("*.jpg"))
# The input sizes of cn_clip's released models.
RESOLUTIONS = (224, 336)
# Non-square photos, so that resizing to a square and ignoring EXIF rotation both show.
VARIANT_SOURCES = ("cat_chelsea.jpg", "greek_coins.jpg")


def reference(image: Image.Image, resolution: int) -> np.ndarray:
    return image_transform(resolution)(image).numpy()


def photo(name: str) -> Image.Image:
    return Image.open(PARITY_DIR / name).convert("RGB")


def test_parity_photos_are_there():
    assert len(PARITY_IMAGES) >= 10


@pytest.mark.parametrize("resolution", RESOLUTIONS)
def test_parity_photos_equal_cn_clip(resolution):
    for path in PARITY_IMAGES:
        got = Transform(resolution).pixels(load_image(path))
        assert got.dtype == np.float32 and got.shape == (3, resolution, resolution)
        np.testing.assert_array_equal(got, reference(Image.open(path), resolution), err_msg=path.name)


def test_batch_is_the_stacked_images():
    images = [load_image(path) for path in PARITY_IMAGES[:4]]
    batch = Transform(224).batch(images)
    assert batch.dtype == np.float32 and batch.shape == (4, 3, 224, 224)
    np.testing.assert_array_equal(batch, np.stack([Transform(224).pixels(image) for image in images]))


def with_alpha_gradient(image: Image.Image) -> Image.Image:
    """Alpha from 0 to 255 across the width, so premultiplied resizing shows in the result."""
    alpha = np.broadcast_to(np.linspace(0, 255, image.width).astype(np.uint8), (image.height, image.width))
    result = image.copy()
    result.putalpha(Image.fromarray(np.ascontiguousarray(alpha)))
    return result


def with_transparent_index(image: Image.Image) -> Image.Image:
    paletted = image.convert("P")
    paletted.info["transparency"] = 0
    return paletted


def sixteen_bit(image: Image.Image) -> Image.Image:
    return Image.fromarray(np.asarray(image.convert("L"), dtype=np.uint16) * 257).convert("I;16")


# File name → (how to derive it from an RGB photo, the mode it loads as).
FILE_VARIANTS = {
    "rgba.png": (with_alpha_gradient, "RGBA"),
    "la.png": (lambda im: with_alpha_gradient(im.convert("L")), "LA"),
    "palette.png": (lambda im: im.convert("P"), "P"),
    "palette_transparent.png": (with_transparent_index, "P"),
    "palette_transparent.gif": (with_transparent_index, "P"),
    "gray.png": (lambda im: im.convert("L"), "L"),
    "gray16.png": (sixteen_bit, "I;16"),
    "bilevel.png": (lambda im: im.convert("1"), "1"),
    "cmyk.jpg": (lambda im: im.convert("CMYK"), "CMYK"),
    "cmyk.tif": (lambda im: im.convert("CMYK"), "CMYK"),
}


@pytest.mark.parametrize("source", VARIANT_SOURCES)
@pytest.mark.parametrize("file_name", FILE_VARIANTS)
def test_image_modes_equal_cn_clip(tmp_path, source, file_name):
    derive, mode = FILE_VARIANTS[file_name]
    path = tmp_path / file_name
    derive(photo(source)).save(path)
    image = load_image(path)
    assert image.mode == mode
    for resolution in RESOLUTIONS:
        np.testing.assert_array_equal(Transform(resolution).pixels(image), reference(Image.open(path), resolution))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "1", "I", "I;16", "F", "CMYK", "YCbCr", "RGBX", "HSV"])
def test_in_memory_modes_equal_cn_clip(mode):
    # Smaller than the resolution, so that this is the upscaling path.
    image = photo(VARIANT_SOURCES[0]).resize((160, 120)).convert(mode)
    np.testing.assert_array_equal(Transform(224).pixels(image), reference(image, 224))


def test_animated_gif_gives_its_first_frame(tmp_path):
    first = photo(VARIANT_SOURCES[0]).convert("L")
    first.save(tmp_path / "two.gif", save_all=True, append_images=[Image.new("L", first.size, 255)])
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "two.gif").convert("L")), np.asarray(first))


def test_exif_orientation_is_not_applied_as_in_cn_clip(tmp_path):
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    stored = photo(VARIANT_SOURCES[0])
    stored.save(tmp_path / "rotated.jpg", exif=exif)
    image = load_image(tmp_path / "rotated.jpg")
    assert image.size == stored.size
    got = Transform(224).pixels(image)
    np.testing.assert_array_equal(got, reference(Image.open(tmp_path / "rotated.jpg"), 224))
    assert not np.array_equal(got, Transform(224).pixels(ImageOps.exif_transpose(image)))


def test_spec_is_json_and_states_the_facts():
    facts = json.loads(json.dumps(Transform(336).spec()))
    assert facts["resolution"] == 336 and facts["layout"] == "NCHW" and facts["dtype"] == "float32"
    assert facts["mean"] == [0.48145466, 0.4578275, 0.40821073]
    assert facts["std"] == [0.26862954, 0.26130258, 0.27577711]
    assert facts["scale"] == 1 / 255
    assert facts["interpolation"].startswith("bicubic (Pillow)")
    assert facts["exif_orientation"].startswith("not applied, matching cn_clip")
    assert facts["order"].startswith("resize")


def expect_image_error(path: Path, message: str) -> ImageError:
    with pytest.raises(ImageError, match=message) as caught:
        load_image(path)
    assert isinstance(caught.value, UserError) and isinstance(caught.value, ValueError)
    return caught.value


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    expect_image_error(tmp_path / "empty.jpg", "empty file")


def test_text_file_named_jpg(tmp_path):
    (tmp_path / "notes.jpg").write_text("这不是图片\n", encoding="utf-8")
    expect_image_error(tmp_path / "notes.jpg", "not an image")


def test_missing_file(tmp_path):
    expect_image_error(tmp_path / "missing.jpg", "No such file")


@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.6, 0.95])
@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_files(tmp_path, fraction, suffix):
    buffer = io.BytesIO()
    photo(VARIANT_SOURCES[0]).save(buffer, "JPEG" if suffix == ".jpg" else "PNG")
    data = buffer.getvalue()
    path = tmp_path / f"truncated{suffix}"
    path.write_bytes(data[: int(len(data) * fraction)])
    expect_image_error(path, "truncated or corrupt")


def write_blank_png(path: Path, width: int, height: int) -> None:
    """A real 1-bit PNG of any size, a few tens of kB on disk: rows of zeros compress about 1000:1."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))


def write_jpeg_claiming(path: Path, width: int, height: int) -> None:
    """A tiny JPEG whose frame header claims another size; refusing it must not need its pixels."""
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    frame_header = data.index(b"\xff\xc0")
    data[frame_header + 5 : frame_header + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))


def test_decompression_bomb_png_is_refused(tmp_path):
    write_blank_png(tmp_path / "bomb.png", 20_000, 20_000)
    assert (tmp_path / "bomb.png").stat().st_size < 200_000
    expect_image_error(tmp_path / "bomb.png", "400,000,000 pixels, above the limit of 89,478,485")


def test_image_just_above_the_limit_is_refused_without_warnings(tmp_path):
    write_jpeg_claiming(tmp_path / "large.jpg", 10_000, 9_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        expect_image_error(tmp_path / "large.jpg", "10000×9000 = 90,000,000 pixels")


def test_pixel_limit_boundary(tmp_path, monkeypatch):
    monkeypatch.setattr(preprocess_module, "MAX_PIXELS", 100 * 100)
    Image.new("RGB", (100, 100)).save(tmp_path / "at_limit.png")
    Image.new("RGB", (101, 100)).save(tmp_path / "over_limit.png")
    assert load_image(tmp_path / "at_limit.png").size == (100, 100)
    expect_image_error(tmp_path / "over_limit.png", "above the limit of 10,000")


def _encoded_samples() -> dict[str, bytes]:
    image = Image.open(PARITY_IMAGES[0]).convert("RGB").resize((24, 16))
    samples = {}
    for format in ("JPEG", "PNG", "GIF", "BMP", "TIFF", "PPM", "SGI", "TGA", "WEBP"):
        buffer = io.BytesIO()
        image.save(buffer, format=format)
        samples[format] = buffer.getvalue()
    return samples


SAMPLES = _encoded_samples()


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the damaged metadata it skips
@settings(max_examples=300, deadline=None)
@given(format=st.sampled_from(sorted(SAMPLES)), flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
       cut=st.integers(0, 10_000), suffix=st.sampled_from([".jpg", ".png"]))
def test_damaged_files_of_any_format_load_or_fail_with_one_error(format, flips, cut, suffix):
    """Real files of nine formats with bytes changed and tails cut: an image, or an ImageError, never anything else."""
    data = bytearray(SAMPLES[format])
    for position, value in flips:
        data[position % len(data)] = value
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"photo{suffix}"
        path.write_bytes(bytes(data[: max(1, len(data) - cut % len(data))]))
        try:
            Transform(32).pixels(load_image(path))
        except ImageError:
            pass
