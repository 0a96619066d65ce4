"""The stage table is the one place a stage is declared: everything that lists stages agrees with it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import get_args

import pytest

from converters.app.layout import BundleLayout
from converters.app.manifest import schema as manifest_schema
from converters.app.specs import DEFAULT_STAGES, RUNTIMES, STAGE_NAMES, STAGE_SPECS, STAGES, OutputRole, Role

REPO = Path(__file__).resolve().parents[2]


def test_every_parent_comes_before_its_children_and_names_a_stage():
    seen = set()
    for spec in STAGES:
        assert spec.parent is None or spec.parent in seen, f"{spec.name}'s parent {spec.parent} must be an earlier row"
        seen.add(spec.name)


def test_names_say_runtime_then_precision_and_file_names_never_collide():
    prefixes = {"onnxruntime": "onnx-", "ncnn": "ncnn-", "bmruntime": "bm1684x-", "rknnrt": "rknn-"}
    layout = BundleLayout(Path("/bundle"))
    files = {}
    for spec in STAGES:
        assert spec.name.startswith(prefixes[spec.runtime]), spec.name
        own_files = {"bmruntime": [layout.bmodel("visual", spec.name, 1), *layout.lowered_graph("visual", spec.name)],
                     "rknnrt": [layout.rknn("visual", spec.name, "rk3588"), layout.rknn_calibration("visual", spec.name),
                                layout.rknn_error_analysis("visual", spec.name)]}
        for file in [*layout.model_files("visual", spec.name), *own_files.get(spec.runtime, [])]:
            assert files.setdefault(file, spec.name) == spec.name, f"{file} is claimed by {files[file]} and {spec.name}"


def test_the_published_schema_lists_exactly_the_stages_and_runtimes_of_the_table():
    """The schema is a file apps read: a new row must reach it (edit schemas/manifest.schema.json)."""
    artifact = manifest_schema()["$defs"]["artifact"]["properties"]
    assert artifact["stage"]["enum"] == list(STAGE_NAMES)
    assert artifact["runtime"]["enum"] == list(RUNTIMES)
    keys = json.dumps(manifest_schema())
    pattern = re.search(r'\^\(visual\|text\)\\\\\.\(([^)]*)\)\$', keys)
    assert pattern and pattern.group(1).split("|") == list(STAGE_NAMES)


def test_the_published_schema_lists_exactly_the_tensor_roles():
    tensor = manifest_schema()["$defs"]["tensor"]["properties"]
    assert tensor["role"]["enum"] == list(get_args(Role))
    assert {spec.output for spec in STAGE_SPECS.values()} <= set(get_args(OutputRole))


def test_the_readme_stage_table_has_one_row_per_stage_in_table_order():
    rows = re.findall(r"^\| `([a-z0-9]+-[a-z0-9]+)` \|(.*)$", (REPO / "README.md").read_text("utf-8"), re.MULTILINE)
    assert [name for name, _ in rows] == list(STAGE_NAMES)
    for name, rest in rows:
        spec = STAGE_SPECS[name]
        assert spec.runtime in rest, f"README's {name} row does not name its runtime {spec.runtime}"
        by_default = rest.rstrip(" |").rsplit("|", 1)[-1].strip()
        assert by_default.startswith("yes" if name in DEFAULT_STAGES else "no"), f"README's {name} row: built by default?"


def test_the_registry_runs_every_row_with_options_of_its_own():
    from converters.export.config import ModelConfig
    from converters.export.stages import registered

    stages = registered()
    assert list(stages) == list(STAGE_NAMES)
    for spec in STAGES:
        assert spec.config_key in ModelConfig.model_fields["stages"].annotation.model_fields
        assert spec.config_key in ModelConfig.model_fields["parity"].annotation.model_fields


@pytest.mark.parametrize("broken", ["unknown", "twice"])
def test_a_module_that_disagrees_with_the_table_is_refused(broken, monkeypatch):
    import converters.export.stages as stages_package
    from converters.export.stages import Stage, StageOptions, registered

    real = stages_package.importlib.import_module

    def with_an_extra_stage(name):
        module = real(name)
        if name.endswith(".onnx_fp16"):
            spec = STAGE_SPECS["onnx-fp16"]
            extra = Stage(spec.__class__(**{**spec.__dict__, "name": "onnx-fp8"}), StageOptions, lambda *a: None)
            return type("Module", (), {"STAGES": (*module.STAGES, extra if broken == "unknown" else module.STAGES[0])})
        return module

    registered.cache_clear()
    monkeypatch.setattr(stages_package.importlib, "import_module", with_an_extra_stage)
    try:
        with pytest.raises(RuntimeError, match="onnx-fp8" if broken == "unknown" else "registered twice"):
            registered()
    finally:
        monkeypatch.undo()
        registered.cache_clear()
