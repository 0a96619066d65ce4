import json
from pathlib import Path

import pytest

from converters.errors import ConfigError
from converters.export.config import CONFIG_DIR, known_models, load_config

OFFICIAL = ("RN50", "ViT-B-16", "ViT-L-14", "ViT-L-14-336", "ViT-H-14")


def test_known_models_are_the_config_files():
    assert known_models() == sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert set(OFFICIAL) | {"tiny-vit", "tiny-rn"} == set(known_models())


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_architectures_match_cn_clip(name):
    from cn_clip.clip.utils import _MODEL_INFO

    from converters.export.checkpoint import cn_clip_kwargs

    vision, text = _MODEL_INFO[name]["struct"].split("@")
    configs = Path(__import__("cn_clip").__file__).parent / "clip" / "model_configs"
    expected = json.loads((configs / f"{vision}.json").read_text()) | json.loads((configs / f"{text}.json").read_text())
    if isinstance(expected["vision_layers"], str):
        expected["vision_layers"] = json.loads(expected["vision_layers"])
    expected.setdefault("vision_head_width", 64)
    config = load_config(name)
    assert config.image_resolution == _MODEL_INFO[name]["input_resolution"]
    assert {k: v for k, v in cn_clip_kwargs(config).items() if k in expected} == expected


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "custom.yaml"
    path.write_text(text)
    return path


def tiny_text() -> str:
    return (CONFIG_DIR / "tiny-vit.yaml").read_text()


def test_unknown_model_lists_known_ones():
    with pytest.raises(ConfigError, match="Unknown model 'ViT-X'.*ViT-B-16"):
        load_config("ViT-X")


def test_malformed_yaml_names_the_file(tmp_path):
    path = write(tmp_path, "architecture: [unclosed\n")
    with pytest.raises(ConfigError, match=f"{path} is not valid YAML"):
        load_config(path)


def test_unknown_key_is_named(tmp_path):
    path = write(tmp_path, tiny_text() + "stages:\n  onnx_int8:\n    per_chanel: true\n")
    with pytest.raises(ConfigError, match=r"stages\.onnx_int8\.per_chanel: unknown key") as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_wrong_type_is_named(tmp_path):
    path = write(tmp_path, tiny_text().replace("image_resolution: 32", "image_resolution: big"))
    with pytest.raises(ConfigError, match=r"image_resolution: .*'big'"):
        load_config(path)


def test_tolerance_out_of_range(tmp_path):
    path = write(tmp_path, tiny_text() + "parity:\n  onnx_int8:\n    cosine_min: 1.5\n")
    with pytest.raises(ConfigError, match=r"parity\.onnx_int8\.cosine_min"):
        load_config(path)


def test_inconsistent_architecture(tmp_path):
    path = write(tmp_path, tiny_text().replace("patch_size: 8", "patch_size: 7"))
    with pytest.raises(ConfigError, match="multiple of architecture.vision.patch_size"):
        load_config(path)


def test_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_defaults_and_overrides(tmp_path):
    config = load_config(write(tmp_path, tiny_text() + "stages:\n  onnx_int8:\n    per_channel: false\n"))
    assert config.name == "custom"
    assert config.stages.onnx_int8.per_channel is False
    assert config.parity_settings().target("onnx-fp32").cosine_min == 0.99999
    assert config.parity_settings().target("onnx-int8").cosine_mean == 0.99


from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# No subnormal floats: once a test in this process has opened an onnxruntime session that flushes denormals, this
# thread flushes them too (docs/app-contract.md), and hypothesis refuses to draw what the CPU cannot represent.
yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 10_000), st.floats(allow_nan=True, allow_subnormal=False),
                         st.text(max_size=8))
yaml_values = st.recursive(yaml_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    key=st.sampled_from(["architecture", "image_resolution", "context_length", "seed", "stages", "parity", "checkpoint", "extra"]),
    value=yaml_values,
)
def test_fuzzed_configs_load_or_fail_with_a_config_error(tmp_path, key, value):
    import yaml

    data = yaml.safe_load(tiny_text())
    data[key] = value
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    try:
        load_config(path)
    except ConfigError as exc:
        assert str(path) in str(exc)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_fuzzed_yaml_text_never_crashes_the_loader(tmp_path, text):
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(path)
    except ConfigError:
        pass


def test_yaml_aliases_are_refused_before_they_expand(tmp_path):
    """Nine nested aliases of nine would be 387 million strings ("billion laughs"); none is ever built."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    path = write(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=r"aliases \(\*a0\) are not allowed"):
        load_config(path)


@pytest.mark.parametrize("key, value", [
    ("layers", "2000000000"), ("width", "100000000"), ("layers", "[3, 4, 600000, 3]"),
])
def test_absurd_architecture_sizes_are_refused(tmp_path, key, value):
    text = tiny_text().replace("    layers: 2\n", "    layers: 2\n" if key != "layers" else f"    layers: {value}\n")
    if key == "width":
        text = text.replace("    width: 64\n", f"    width: {value}\n")
    with pytest.raises(ConfigError, match=rf"architecture\.vision\.{key}"):
        load_config(write(tmp_path, text))


def test_a_config_that_is_not_utf8_is_one_error(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(tiny_text().encode() + "# caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=f"{path} is not UTF-8 text"):
        load_config(path)


def test_a_partial_tolerance_keeps_the_other_defaults(tmp_path):
    config = load_config(write(tmp_path, tiny_text() + "parity:\n  onnx_int8:\n    cosine_min: 0.97\n"))
    assert config.parity_settings().target("onnx-int8").cosine_min == 0.97
    assert config.parity_settings().target("onnx-int8").cosine_mean == 0.99 and config.parity_settings().target("onnx-int8").norm_ratio_max == 0.1
