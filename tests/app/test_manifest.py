import json
import shutil
import tempfile
from pathlib import Path

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from converters.app.layout import BundleLayout
from converters.app.manifest import Manifest, schema
from converters.errors import ArtifactError


def test_manifest_validates_against_its_published_schema(tiny_bundle):
    jsonschema.validate(json.loads(BundleLayout(tiny_bundle).manifest.read_text()), schema())


def test_schema_rejects_a_broken_manifest(tiny_bundle):
    data = json.loads(BundleLayout(tiny_bundle).manifest.read_text())
    data["artifacts"]["text.onnx-int8"]["inputs"][0]["role"] = "tokens"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, schema())


def test_every_listed_file_verifies(tiny_bundle):
    manifest = Manifest.load(BundleLayout(tiny_bundle).manifest)
    for entry in manifest.artifacts.values():
        manifest.verify(entry.files)
    manifest.verify(manifest.files.values())


def test_changed_file_is_detected_before_use(tiny_bundle, tmp_path):
    import shutil

    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    model = BundleLayout(bundle).model_files("visual", "onnx-int8")[0]
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="changed after conversion"):
        Manifest.load(BundleLayout(bundle).manifest).artifact("visual", "onnx-int8")
    model.unlink()
    with pytest.raises(ArtifactError, match="missing"):
        Manifest.load(BundleLayout(bundle).manifest).artifact("visual", "onnx-int8")


@pytest.mark.parametrize("content, message", [("{not json", "not valid JSON"), ('{"schema_version": 99}', "schema version 99"), ('{"schema_version": 1}', "schema version 1.*convert")])
def test_unreadable_manifest(tmp_path, content, message):
    path = tmp_path / "manifest.json"
    path.write_text(content)
    with pytest.raises(ArtifactError, match=message):
        Manifest.load(path)


def test_missing_manifest_says_how_to_make_one(tmp_path):
    with pytest.raises(ArtifactError, match="make convert"):
        Manifest.load(tmp_path / "manifest.json")


def edited_manifest(tiny_bundle, tmp_path, edit) -> Path:
    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    path = BundleLayout(bundle).manifest
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("edit, where", [
    (lambda d: d.pop("tokenizer"), "(top level)"),
    (lambda d: d["embedding"].update(dim="512"), "embedding/dim"),
    (lambda d: d["artifacts"]["visual.onnx-sim"].update(files="visual.sim.onnx"), "artifacts/visual.onnx-sim/files"),
    (lambda d: d["artifacts"]["visual.onnx-sim"].update(runtime="tflite"), "artifacts/visual.onnx-sim/runtime"),
    (lambda d: d["artifacts"]["visual.onnx-sim"]["files"][0].update(path="../outside/visual.sim.onnx"), "files/0/path"),
    (lambda d: d["artifacts"]["visual.onnx-sim"]["files"][0].update(path="/tmp/x/visual.sim.onnx"), "files/0/path"),
    (lambda d: d["files"]["vocab"].pop("sha256"), "files/vocab"),
])
@pytest.mark.parametrize("tiny_bundle", ["tiny-vit"], indirect=True)
def test_a_malformed_manifest_is_one_error_naming_the_key(tiny_bundle, tmp_path, edit, where):
    path = edited_manifest(tiny_bundle, tmp_path, edit)
    with pytest.raises(ArtifactError, match="not a valid manifest") as error:
        Manifest.load(path)
    assert where in str(error.value) and str(path) in str(error.value)


@pytest.mark.parametrize("tiny_bundle", ["tiny-vit"], indirect=True)
def test_a_symlink_out_of_the_bundle_is_refused(tiny_bundle, tmp_path):
    path = edited_manifest(tiny_bundle, tmp_path, lambda d: None)
    model = path.parent / "visual.sim.onnx"
    outside = tmp_path / "outside.onnx"
    model.rename(outside)
    model.symlink_to(outside)
    with pytest.raises(ArtifactError, match="outside the bundle"):
        Manifest.load(path).artifact("visual", "onnx-sim")


def mutations():
    """A path into a manifest (keys and list indexes, chosen by position) and a value to put there."""
    # No subnormal floats: onnxruntime sessions made earlier in this process turned on flush-to-zero on this
    # thread (converters.app.runtimes.onnx_runtime.RUNTIME_OPTIONS), and hypothesis refuses to draw them then.
    values = st.one_of(
        st.none(), st.booleans(), st.integers(-2, 2**40), st.floats(allow_nan=True, allow_subnormal=False), st.text(max_size=20),
        st.just("../../etc/passwd"), st.just("/tmp/x.onnx"), st.lists(st.integers(), max_size=3), st.just({}),
    )
    return st.tuples(st.lists(st.integers(0, 50), min_size=1, max_size=5), values)


def put(data, where: list[int], value):
    """data with value at the path where names: keys and list indexes, chosen by position, as deep as it goes."""
    node = data
    for step in where[:-1]:
        keys = list(node) if isinstance(node, dict) else range(len(node)) if isinstance(node, list) else []
        if not keys:
            break
        child = node[list(keys)[step % len(keys)]]
        if not isinstance(child, (dict, list)):
            break
        node = child
    keys = list(node) if isinstance(node, dict) else list(range(len(node)))
    if keys:
        node[keys[where[-1] % len(keys)]] = value
    return data


@pytest.mark.parametrize("tiny_bundle", ["tiny-vit"], indirect=True)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=mutations())
def test_fuzzed_manifests_load_or_fail_with_one_error(tiny_bundle, mutation):
    """Whatever value lands wherever, loading and using the bundle ends in its answer or an ArtifactError."""
    from converters.app.bundle import Bundle

    where, value = mutation
    # A folder an example, gone when the example ends: kept to the session's end, the copies filled CI's disk.
    with tempfile.TemporaryDirectory() as folder:
        path = BundleLayout(shutil.copytree(tiny_bundle, Path(folder) / "b")).manifest
        path.write_text(json.dumps(put(json.loads(path.read_text()), where, value)))
        try:
            bundle = Bundle.open(path.parent)
            for stage in bundle.stages():
                bundle.artifact_id(stage)
                for tower in ("visual", "text"):
                    bundle.manifest.artifact(tower, stage)
        except ArtifactError:
            pass


@pytest.mark.parametrize("tiny_bundle", ["tiny-vit"], indirect=True)
def test_a_manifest_that_swaps_the_towers_files_is_refused(tiny_bundle, tmp_path):
    """The sha256 values stay valid; the inputs the entries declare no longer fit their towers."""
    def swap(data):
        visual, text = data["artifacts"]["visual.onnx-sim"], data["artifacts"]["text.onnx-sim"]
        visual["files"], text["files"] = text["files"], visual["files"]
        visual["inputs"], text["inputs"] = text["inputs"], visual["inputs"]

    with pytest.raises(ArtifactError, match="not those of a visual tower"):
        Manifest.load(edited_manifest(tiny_bundle, tmp_path, swap))


@pytest.mark.parametrize("tiny_bundle", ["tiny-vit"], indirect=True)
def test_files_swapped_behind_the_declared_inputs_are_caught_when_loaded(tiny_bundle, tmp_path):
    from converters.app.bundle import Bundle

    def swap(data):
        visual, text = data["artifacts"]["visual.onnx-sim"], data["artifacts"]["text.onnx-sim"]
        visual["files"], text["files"] = text["files"], visual["files"]

    bundle = Bundle.open(edited_manifest(tiny_bundle, tmp_path, swap).parent)
    with pytest.raises(ArtifactError, match="takes \\['token_ids'\\], but the manifest says visual.onnx-sim takes \\['pixels'\\]"):
        bundle.embedder("onnx-sim")


@pytest.mark.parametrize("tiny_bundle", ["tiny-vit"], indirect=True)
@pytest.mark.parametrize("edit, message", [
    (lambda d: d["preprocess"]["mean"].__setitem__(0, float("nan")), "finite numbers"),
    (lambda d: d["preprocess"]["std"].__setitem__(1, 0), "std above 0"),
])
def test_non_finite_or_zero_preprocessing_numbers_are_refused(tiny_bundle, tmp_path, edit, message):
    with pytest.raises(ArtifactError, match=message):
        Manifest.load(edited_manifest(tiny_bundle, tmp_path, edit))


@pytest.mark.parametrize("content", ["null", "[]", '"manifest"'])
def test_a_manifest_that_is_no_object_says_so(tmp_path, content):
    path = tmp_path / "manifest.json"
    path.write_text(content)
    with pytest.raises(ArtifactError, match="is not a manifest"):
        Manifest.load(path)
