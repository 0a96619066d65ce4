import pickle

import pytest
import torch

from converters.errors import CheckpointError
from converters.export import checkpoint
from converters.export.config import load_config


def save_official(model, path, dtype=torch.float16):
    """As cn_clip's training saves it: DDP `module.` prefix, a BERT pooler it never uses, fp16 weights."""
    state = {f"module.{k}": v.to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    state["module.bert.pooler.dense.weight"] = torch.zeros(4, 4)
    torch.save({"epoch": 3, "step": 100, "name": "run", "state_dict": state}, path)


@pytest.fixture(scope="module")
def tiny():
    config = load_config("tiny-vit")
    return config, checkpoint.random_model(config)


def test_official_format_with_module_prefix_and_fp16_loads_as_fp32(tiny, tmp_path):
    config, model = tiny
    path = tmp_path / "clip_cn_tiny.pt"
    save_official(model, path)
    source = checkpoint.resolve(config, path, tmp_path)
    loaded = checkpoint.run(config, source).model
    assert source.digest == checkpoint.sha256_file(path)
    for key, value in model.state_dict().items():
        assert loaded.state_dict()[key].dtype == value.dtype
        torch.testing.assert_close(loaded.state_dict()[key], value.half().to(value.dtype), rtol=0, atol=0)
    assert not loaded.training


def test_random_weights_are_seeded_and_exercise_batchnorm():
    config = load_config("tiny-rn")
    a, b = checkpoint.random_model(config), checkpoint.random_model(config)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert all(m.weight.abs().min() > 0 for m in a.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist.*CKPT="):
        checkpoint.resolve(load_config("tiny-vit"), tmp_path / "nope.pt", tmp_path)


@pytest.mark.parametrize(
    "content, message",
    [(b"", "is empty"), (b"PK\x03\x04 truncated zip", "truncated or not a PyTorch checkpoint"), (b"hello", "truncated or not")],
)
def test_unreadable_files(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        checkpoint.read_state_dict(path)


def test_truncated_real_checkpoint(tiny, tmp_path):
    path = tmp_path / "full.pt"
    save_official(tiny[1], path)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        checkpoint.read_state_dict(cut)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="not a Chinese-CLIP checkpoint"):
        checkpoint.read_state_dict(path)


class Payload:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_pickled_code_is_refused_and_never_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"state_dict": Payload()}, handle)
    with pytest.raises(CheckpointError, match="refused by safe loading"):
        checkpoint.read_state_dict(path)
    assert not (tmp_path / "PWNED").exists()


def test_other_architecture_is_named(tmp_path):
    other = checkpoint.random_model(load_config("tiny-rn"))
    path = tmp_path / "rn.pt"
    save_official(other, path)
    config = load_config("tiny-vit")
    with pytest.raises(CheckpointError, match="does not fit model 'tiny-vit'.*looks like a tiny-rn checkpoint"):
        checkpoint.run(config, checkpoint.resolve(config, path, tmp_path))


def test_a_relative_checkpoint_path_is_recorded_absolute(tiny, tmp_path, monkeypatch):
    """`make convert CKPT=x.pt` then `parity` or `bench` from another folder must find the same file."""
    config, model = tiny
    (tmp_path / "weights").mkdir()
    save_official(model, tmp_path / "weights" / "clip.pt")
    monkeypatch.chdir(tmp_path)
    source = checkpoint.resolve(config, "weights/clip.pt", tmp_path / "cache")
    assert source.path == tmp_path / "weights" / "clip.pt" and source.path.is_absolute()
    assert source.description == str(tmp_path / "weights" / "clip.pt")


@pytest.mark.parametrize("kind, message", [
    ("sparse", "sparse_coo layout"), ("quantized", "quantized"), ("meta", "a meta tensor"), ("bool", "dtype bool"),
])
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_tensors_that_are_not_dense_weights_are_refused(tiny, tmp_path, kind, message):
    config, model = tiny
    state = dict(model.state_dict())
    key = "text_projection"
    weight = state[key]
    state[key] = {
        "sparse": lambda: weight.to_sparse(),
        "quantized": lambda: torch.quantize_per_tensor(weight, 0.1, 0, torch.qint8),
        "meta": lambda: torch.empty_like(weight, device="meta"),
        "bool": lambda: weight > 0,
    }[kind]()
    path = tmp_path / "odd.pt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match=rf"{key} \({message}"):
        checkpoint.run(config, checkpoint.resolve(config, path, tmp_path))
