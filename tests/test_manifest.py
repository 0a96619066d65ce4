import json
from importlib import resources

import jsonschema
import pytest

from converters.errors import ArtifactError
from converters.layout import BundleLayout
from converters.manifest import Manifest


def schema() -> dict:
    return json.loads(resources.files("converters").joinpath("schemas/manifest.schema.json").read_text())


def test_manifest_validates_against_its_published_schema(tiny_bundle):
    jsonschema.validate(json.loads(BundleLayout(tiny_bundle).manifest.read_text()), schema())


def test_schema_rejects_a_broken_manifest(tiny_bundle):
    data = json.loads(BundleLayout(tiny_bundle).manifest.read_text())
    data["artifacts"]["text.int8"]["inputs"][0]["role"] = "tokens"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, schema())


def test_every_listed_file_verifies(tiny_bundle):
    manifest = Manifest.load(BundleLayout(tiny_bundle).manifest)
    for entry in [*manifest.artifacts.values(), {"files": list(manifest.data["files"].values())}]:
        manifest.verify(entry)


def test_changed_file_is_detected_before_use(tiny_bundle, tmp_path):
    import shutil

    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    model = BundleLayout(bundle).onnx_model("visual", "int8")
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="changed after conversion"):
        Manifest.load(BundleLayout(bundle).manifest).artifact("visual", "int8")
    model.unlink()
    with pytest.raises(ArtifactError, match="missing"):
        Manifest.load(BundleLayout(bundle).manifest).artifact("visual", "int8")


@pytest.mark.parametrize("content, message", [("{not json", "not valid JSON"), ('{"schema_version": 99}', "schema version 99")])
def test_unreadable_manifest(tmp_path, content, message):
    path = tmp_path / "manifest.json"
    path.write_text(content)
    with pytest.raises(ArtifactError, match=message):
        Manifest.load(path)


def test_missing_manifest_says_how_to_make_one(tmp_path):
    with pytest.raises(ArtifactError, match="make convert"):
        Manifest.load(tmp_path / "manifest.json")
