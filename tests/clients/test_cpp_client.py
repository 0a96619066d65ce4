"""The C++ reference client (clients/cpp), built for this machine, against cn_clip, Pillow, the ncnn wheel and PyTorch."""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import json
import os
import platform
import random
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cn_clip.clip import tokenize as cn_clip_tokenize
from PIL import Image

from converters.app.bundle import Bundle
from converters.app.layout import BundleLayout
from converters.app.manifest import Manifest
from converters.app.preprocess import Transform, load_image
from converters.app.tokenizer import Tokenizer
from converters.data import PARITY_SET_DIR
from converters.export.config import load_config
from converters.validate.client import (
    CLIENT_STAGES,
    ClientError,
    CppClient,
    client_parity,
    resized_rgb_differences,
)
from converters.validate.golden import GOLDEN_COSINE_MIN
from converters.export.bundle_parity import run_parity
from converters.validate.parity import parity_set_for, reference_embeddings
from tests.app.test_tokenizer import EDGE_CASES

pytestmark = pytest.mark.client
CLIENT_DIR = Path(__file__).resolve().parents[2] / "clients" / "cpp"
ARCH = platform.machine()


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, CLIENT_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def client() -> CppClient:
    """The client as `make client` builds it (ncnn from its sdist, cached; the client itself incrementally)."""
    build = _module("build")
    binary = build.build_client(ARCH, CLIENT_DIR.parents[1] / "build" / "client" / ARCH, os.cpu_count() or 1)
    return CppClient(binary, ARCH)


@pytest.fixture(scope="session")
def vocab_bundle(tmp_path_factory) -> Path:
    """The least a bundle holds for the client to tokenize: a manifest naming cn_clip's own vocab.txt.
    The tokenizer does not depend on the model, so its long sweeps run once, not per tiny model."""
    bundle = tmp_path_factory.mktemp("vocab-only")
    vocab = bundle / "vocab.txt"
    vocab.write_bytes((importlib.resources.files("cn_clip.clip") / "vocab.txt").read_bytes())
    manifest = {
        "preprocess": Transform(224).spec(),
        "tokenizer": Tokenizer.from_vocab(vocab).spec(),
        "files": {"vocab": {"path": "vocab.txt", "sha256": hashlib.sha256(vocab.read_bytes()).hexdigest()}},
        "artifacts": {},
    }
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


def run(client: CppClient, bundle: Path, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(client.binary), str(bundle), *arguments], capture_output=True, text=True)


def records(done: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in done.stdout.split("\n") if line]


def cn_clip_ids(texts: list[str]) -> list[list[int]]:
    return [row[row != 0].tolist() for row in cn_clip_tokenize(texts).numpy()]


# --- tokenizer -------------------------------------------------------------------------------------------


def test_unicode_tables_are_what_the_generator_writes_from_this_python():
    generated = subprocess.run([sys.executable, str(CLIENT_DIR / "gen_unicode_tables.py")], capture_output=True, text=True, check=True)
    assert generated.stdout == (CLIENT_DIR / "src" / "unicode_tables.inc").read_text(), (
        "clients/cpp/src/unicode_tables.inc is stale: regenerate it with clients/cpp/gen_unicode_tables.py"
    )


@pytest.mark.parametrize("before, after", [("一", "丁"), ("Σ", "Σ\u0301a")], ids=["between CJK", "between sigmas"])
def test_token_ids_equal_cn_clip_for_every_code_point(client, vocab_bundle, before, after):
    """Every code point but the line break (it ends the line) and surrogates (not UTF-8), in context:
    between two ideographs it is its own word; between two 'Σ' it decides their case and meets an accent."""
    texts = [before + chr(p) + after for p in range(sys.maxunicode + 1) if p != 10 and not 0xD800 <= p <= 0xDFFF]
    got = [r["token_ids"] for r in client.texts(vocab_bundle, texts, None)]
    expected = cn_clip_ids(texts)
    differing = [hex(ord(text[len(before)])) for text, a, b in zip(texts, got, expected) if a != b]
    assert len(got) == len(texts) and not differing, f"{len(differing)} code points differ, e.g. {differing[:10]}"


def test_token_ids_equal_cn_clip_on_words_sentences_and_edge_cases(client, vocab_bundle):
    words = [line.split(" ")[0] for line in (importlib.resources.files("jieba") / "dict.txt").read_text("utf-8").splitlines()]
    rng = random.Random(0)
    sample = rng.sample(words, 20_000)
    sentences = ["".join(rng.choice(words) + rng.choice(["", " ", "，", "。", "2025年", "ABC", "\u3000"])
                         for _ in range(rng.randint(1, 40))) for _ in range(2_000)]
    # A line cannot hold "\n", and a lone surrogate is not UTF-8: those edge cases cannot reach a text file.
    edges = [t for t in EDGE_CASES.values() if "\n" not in t and not any(0xD800 <= ord(c) <= 0xDFFF for c in t)]
    texts = [*sample, *sentences, *edges]
    got = [r["token_ids"] for r in client.texts(vocab_bundle, texts, None)]
    assert got == cn_clip_ids(texts)


def test_an_invalid_utf8_line_is_an_error_for_that_line_only(client, vocab_bundle, tmp_path):
    lines = tmp_path / "texts.txt"
    lines.write_bytes("猫\n".encode() + b"\xff\xfe bad\n" + "狗\n".encode())
    done = run(client, vocab_bundle, "--no-embed", "--texts", str(lines))
    out = records(done)
    assert done.returncode == 1 and [("error" in r) for r in out] == [False, True, False]
    assert "line 2" in out[1]["error"] and "UTF-8" in out[1]["error"]


# --- images ----------------------------------------------------------------------------------------------


def resized_sha(transform: Transform, path: Path) -> str:
    return hashlib.sha256(np.asarray(transform.resized_rgb(load_image(path))).tobytes()).hexdigest()


def pixels_sha(transform: Transform, path: Path) -> str:
    return hashlib.sha256(transform.pixels(load_image(path)).astype("<f4").tobytes()).hexdigest()


def test_pixels_equal_pillows_on_every_parity_photo_and_golden_png(client, tiny_bundle):
    transform = Bundle.open(tiny_bundle).transform
    files = sorted((PARITY_SET_DIR / "images").iterdir()) + sorted((tiny_bundle / "golden").glob("*[!d].png"))
    got = client.images(tiny_bundle, files, None)
    assert [r["resized_rgb_sha256"] for r in got] == [resized_sha(transform, f) for f in files]
    assert [r["pixels_sha256"] for r in got] == [pixels_sha(transform, f) for f in files]


def _write_png16(path: Path, rgb: np.ndarray) -> None:
    """A 16-bit RGB PNG, which Pillow cannot write (it reads it as 8-bit RGB, keeping each sample's high byte)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width, _ = rgb.shape
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in rgb)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def _synthetic_images(folder: Path) -> list[Path]:
    """Every PNG mode Pillow opens differently, up- and down-scaled, and a grayscale JPEG."""
    rng = np.random.default_rng(0)
    files = []
    # Landscape and portrait, up- and down-scaled.
    for width, height in ((37, 23), (300, 211), (117, 253), (23, 37)):
        rgba = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
        rgba[..., 3][rgba[..., 3] < 60] = 0  # fully transparent pixels, where Pillow's unpremultiply differs by mode
        base = Image.fromarray(rgba, "RGBA")
        variants = {
            "rgb": base.convert("RGB"), "rgba": base, "l": base.convert("L"), "la": base.convert("LA"),
            "p": base.convert("RGB").quantize(64), "1bit": base.convert("1"),
        }
        for name, image in variants.items():
            files.append(folder / f"{name}-{width}.png")
            image.save(files[-1])
        transparent = variants["p"].copy()
        transparent.info["transparency"] = 3
        files.append(folder / f"p-trns-{width}.png")
        transparent.save(files[-1], transparency=3)
        files.append(folder / f"rgb16-{width}.png")
        _write_png16(files[-1], rng.integers(0, 65536, (height, width, 3), dtype=np.uint16))
        for bits in (2, 4):
            files.append(folder / f"l{bits}-{width}.png")
            variants["l"].save(files[-1], bits=bits)
        files.append(folder / f"gray-{width}.jpg")
        variants["l"].save(files[-1], quality=90)
        files.append(folder / f"rgb-{width}.jpg")
        variants["rgb"].save(files[-1], quality=90, subsampling=2)
    return files


def _with_preprocess(bundle: Path, target: Path, **changes) -> Path:
    shutil.copytree(bundle, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["preprocess"].update(changes)
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


@pytest.mark.parametrize("changes", [
    {"resolution": 224}, {"resolution": 7},
    {"resolution": 32, "resize_mode": "shortest_edge_center_crop", "shortest_edge": 40},
], ids=["224", "7", "hugging face crop"])
def test_resize_equals_pillows_in_every_mode(client, tiny_bundle, tmp_path, changes):
    """Bit for bit, landscape and portrait: Pillow 13 takes the columns first when the height shrinks by more
    than twice as many pixels as the width (python-pillow/Pillow#9549), and so must the client. The
    random pixels make the pass order show (8-bit intermediate rows clip the bicubic's overshoot)."""
    bundle = _with_preprocess(tiny_bundle, tmp_path / "bundle", **changes)
    files = _synthetic_images(tmp_path)
    transform = Transform.from_spec(json.loads((bundle / "manifest.json").read_text())["preprocess"])
    differences = dict(zip((f.name for f in files), resized_rgb_differences(client, bundle, files, transform)))
    assert not any(differences.values()), differences


@pytest.mark.parametrize("edge, resolution", [(24, 32), (0, 32)])
def test_a_crop_larger_than_the_resized_image_is_refused(client, tiny_bundle, tmp_path, edge, resolution):
    bundle = _with_preprocess(tiny_bundle, tmp_path / "bundle", resolution=resolution,
                              resize_mode="shortest_edge_center_crop", shortest_edge=edge)
    done = run(client, bundle, "--no-embed", "--images", str(PARITY_SET_DIR / "images" / "cat_chelsea.jpg"))
    assert done.returncode == 2 and "preprocess.shortest_edge" in done.stderr


@pytest.mark.parametrize("changes, message", [
    ({"resolution": 0}, "preprocess.resolution is 0"), ({"resolution": 32.5}, "preprocess.resolution is 32.5"),
    ({"resize_mode": "centre_crop"}, "resize_mode is 'centre_crop'"), ({"std": [0.2, 0, 0.2]}, "std above 0"),
])
def test_preprocessing_the_client_cannot_do_is_refused_naming_the_key(client, tiny_bundle, tmp_path, changes, message):
    bundle = _with_preprocess(tiny_bundle, tmp_path / "bundle", **changes)
    done = run(client, bundle, "--no-embed", "--texts", "-")
    assert done.returncode == 2 and message in done.stderr


def test_a_resolution_the_visual_tower_does_not_take_is_refused_before_any_photo(client, tiny_bundle, tmp_path):
    bundle = _with_preprocess(tiny_bundle, tmp_path / "bundle", resolution=40)
    done = run(client, bundle, "--stage", "ncnn-fp32", "--images", str(PARITY_SET_DIR / "images" / "cat_chelsea.jpg"))
    assert done.returncode == 2 and not done.stdout and "another size than preprocess.resolution 40" in done.stderr


def test_a_non_finite_embedding_is_an_error_not_a_vector(client, tiny_bundle, tmp_path):
    """NaN weights at the end of the text tower's .bin (the output projection), the manifest's sha256 updated
    to match: ncnn computes, and the client must refuse to print the result as an embedding."""
    bundle = _copy(tiny_bundle, tmp_path / "bundle")
    weights = bundle / "text.fp32.ncnn.bin"
    data = bytearray(weights.read_bytes())
    data[-4096:] = b"\xff" * 4096
    weights.write_bytes(bytes(data))
    manifest = json.loads((bundle / "manifest.json").read_text())
    for entry in manifest["artifacts"]["text.ncnn-fp32"]["files"]:
        if entry["path"] == weights.name:
            entry["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    done = subprocess.run([str(client.binary), str(bundle), "--stage", "ncnn-fp32", "--texts", "-"],
                          input="海边的日落\n", capture_output=True, text=True)
    (record,) = records(done)
    assert done.returncode == 1 and "not finite" in record["error"] and "embedding" not in record


def test_unusable_images_are_errors_and_the_rest_still_embed(client, tiny_bundle, tmp_path):
    good = PARITY_SET_DIR / "images" / "cat_chelsea.jpg"
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    gray16 = tmp_path / "gray16.png"
    Image.fromarray(np.zeros((8, 8), np.uint16)).save(gray16)
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8)).save(cmyk)
    header_only = tmp_path / "header.png"
    header_only.write_bytes((tmp_path / "gray16.png").read_bytes()[:40])
    files = [truncated, empty, text, gray16, cmyk, good, tmp_path / "missing.jpg", header_only]
    done = run(client, tiny_bundle, "--stage", "ncnn-fp32", "--images", *map(str, files))
    out = records(done)
    assert done.returncode == 1 and len(out) == len(files)
    errors = [r.get("error", "") for r in out]
    for expected, error in zip(["truncated", "empty", "neither a JPEG nor a PNG", "16-bit grayscale", "CMYK", "", "cannot open", "truncated"], errors):
        assert expected in error if expected else not error
    assert len(out[5]["embedding"]) == Bundle.open(tiny_bundle).embedding_dim


# --- embeddings ------------------------------------------------------------------------------------------


def test_client_rows_pass_parity_and_are_reported(client, tiny_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    config = load_config(Manifest.load(BundleLayout(bundle).manifest).model)
    report = run_parity(config, BundleLayout(bundle), lambda event: None, [client])
    assert [row.stage for row in report.clients] == list(CLIENT_STAGES) and report.passed
    assert all(row.token_ids_identical == row.text.samples == 35 for row in report.clients)
    assert all(d == 0 for row in report.clients for d in row.resized_rgb_max_differences)
    assert not any(row.outputs_in_fp16 for row in report.clients)  # x86 has no fp16 kernels in ncnn
    saved = json.loads(BundleLayout(bundle).parity_json.read_text())
    assert [row["passed"] for row in saved["clients"]] == [True] * 3
    assert "## C++ reference client" in BundleLayout(bundle).parity_md.read_text()


def test_client_meets_golden_json_as_an_app_test_would(client, tiny_bundle, tmp_path):
    golden = json.loads(BundleLayout(tiny_bundle).golden.read_text(encoding="utf-8"))
    images = [tiny_bundle / image["file"] for image in golden["images"]]
    texts = [caption["text"] for caption in golden["captions"]]
    manifest = Manifest.load(BundleLayout(tiny_bundle).manifest)
    for stage in CLIENT_STAGES:
        rows = golden["embeddings"][stage]
        got_images = client.images(tiny_bundle, images, stage)
        got_texts = client.texts(tiny_bundle, texts, stage)
        assert [r["resized_rgb_sha256"] for r in got_images] == [i["resized_rgb_sha256"] for i in golden["images"]]
        assert [r["pixels_sha256"] for r in got_images] == [i["pixels_sha256"] for i in golden["images"]]
        assert [r["token_ids"] for r in got_texts] == [c["unpadded_ids"] for c in golden["captions"]]
        minimum = GOLDEN_COSINE_MIN[manifest.entry("text", stage).artifact.precision]
        for got, expected in [*zip(got_images, rows["images"]), *zip(got_texts, rows["texts"])]:
            a, b = np.array(got["embedding"]), np.array(expected)
            assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) >= minimum


@pytest.fixture
def perturbing_client(client, tmp_path):
    """A stand-in binary that runs the real client and then damages its answers the way `how` says."""

    def make(how: str) -> CppClient:
        script = tmp_path / "cnclip-embed"
        script.write_text(f"""#!{sys.executable}
import json, subprocess, sys
done = subprocess.run([{str(client.binary)!r}, *sys.argv[1:]], capture_output=True, text=True)
for line in done.stdout.split("\\n")[:-1]:
    record = json.loads(line)
    {how}
    print(json.dumps(record))
sys.exit(done.returncode)
""")
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
        return CppClient(script, ARCH)

    return make


@pytest.mark.parametrize("how, failure", [
    ("if 'embedding' in record: record['embedding'] = [float('nan')] * len(record['embedding'])", "not finite"),
    ("if 'embedding' in record: record['embedding'] = [v * 1000 for v in record['embedding']]", "norm"),
    ("if 'embedding' in record: record['embedding'] = [0.0] * len(record['embedding'])", "zero"),
    ("if 'token_ids' in record: record['token_ids'][1] += 1", "token ids differ"),
    ("if 'image' in record and '--save-resized' in sys.argv: from PIL import Image; import numpy as np; "
     "saved = f\"{sys.argv[sys.argv.index('--save-resized') + 1]}/{sys.argv.index(record['image']) - 3}.png\"; "
     "a = np.array(Image.open(saved)); a[0, 0, 0] = (int(a[0, 0, 0]) + 128) % 256; Image.fromarray(a).save(saved)",
     "resized RGB differs"),
], ids=["nan", "x1000", "zeros", "one token id", "one resized image"])
def test_a_client_that_gets_it_wrong_fails_parity(perturbing_client, tiny_bundle, how, failure):
    manifest = Manifest.load(BundleLayout(tiny_bundle).manifest)
    config = load_config(manifest.model)
    parity_set = parity_set_for(manifest)
    reference = reference_embeddings(manifest, parity_set, lambda _: pytest.fail("the reference is cached"), lambda e: None)
    rows = client_parity(perturbing_client(how), config.parity_settings(), manifest, parity_set, reference, 1, lambda event: None)
    assert rows and all(not row.passed for row in rows)
    assert all(any(failure in f for f in row.failures) for row in rows), [row.failures for row in rows]


# --- bundle checks and the command line ------------------------------------------------------------------


def _copy(bundle: Path, target: Path) -> Path:
    shutil.copytree(bundle, target)
    return target


def test_a_changed_model_file_is_refused_before_it_is_loaded(client, tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path / "bundle")
    model = next(bundle.glob("text.fp32.ncnn.bin"))
    data = bytearray(model.read_bytes())
    data[100] ^= 1
    model.write_bytes(bytes(data))
    done = run(client, bundle, "--stage", "ncnn-fp32", "--texts", "-")
    assert done.returncode == 2 and "text.fp32.ncnn.bin has sha256" in done.stderr and "convert again" in done.stderr


@pytest.mark.parametrize("path, message", [("../vocab.txt", "leaves the bundle"), ("/etc/passwd", "absolute"),
                                           ("link.txt", "resolves outside the bundle")])
def test_manifest_paths_must_stay_inside_the_bundle(client, tiny_bundle, tmp_path, path, message):
    bundle = _copy(tiny_bundle, tmp_path / "bundle")
    shutil.copy(bundle / "vocab.txt", tmp_path / "vocab.txt")
    (bundle / "link.txt").symlink_to(tmp_path / "vocab.txt")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["vocab"]["path"] = path
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    done = run(client, bundle, "--no-embed", "--texts", "-")
    assert done.returncode == 2 and message in done.stderr


def test_an_unknown_stage_names_those_the_bundle_has(client, tiny_bundle):
    done = run(client, tiny_bundle, "--stage", "onnx-int8", "--texts", "-")
    assert done.returncode == 2 and "no ncnn artifact for text onnx-int8" in done.stderr and "ncnn-fp16" in done.stderr


def test_an_ncnn_option_the_client_cannot_set_is_refused(client, tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["artifacts"]["text.ncnn-fp16"]["runtime_options"]["use_magic"] = True
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    done = run(client, bundle, "--stage", "ncnn-fp16", "--texts", "-")
    assert done.returncode == 2 and "no ncnn Option named use_magic" in done.stderr


@pytest.mark.parametrize("arguments, message", [
    ([], "name the bundle folder"), (["B"], "either --texts"), (["B", "--texts", "t"], "--stage is needed"),
    (["B", "--bogus"], "unknown option --bogus"), (["B", "--threads", "x", "--texts", "t"], "whole number"),
    (["B", "--threads", "4x", "--texts", "t"], "whole number"),
])
def test_command_line_mistakes_print_the_usage(client, arguments, message):
    done = subprocess.run([str(client.binary), *arguments], capture_output=True, text=True)
    assert done.returncode == 2 and message in done.stderr and "usage: cnclip-embed" in done.stderr


def test_help_answers_what_the_outputs_are(client):
    done = subprocess.run([str(client.binary), "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "pixels_sha256" in done.stdout and "unpadded" in done.stdout
    assert "--save-resized" in done.stdout


def test_a_missing_client_says_how_to_build_it(tmp_path):
    with pytest.raises(ClientError, match="make client ARCH=aarch64"):
        CppClient(tmp_path / "cnclip-embed", "aarch64")


def test_a_text_with_a_line_break_is_refused_before_the_client_runs(client, vocab_bundle):
    with pytest.raises(ClientError, match="one text per line"):
        client.texts(vocab_bundle, ["猫\n狗"], None)


def test_the_build_names_the_packages_to_install_when_tools_are_missing(tmp_path, monkeypatch):
    build = _module("build")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(build.BuildError, match="aarch64-linux-gnu-g\\+\\+ not found.*make client-packages ARCH=aarch64"):
        build.build_client("aarch64", tmp_path / "out", 1)
