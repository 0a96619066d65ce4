"""The recipe of tpu-mlir's tool environment refuses what it cannot do, with what to do instead."""

from __future__ import annotations

import pytest

from converters.errors import UserError
from converters.export.sophgo_env import create_sophgo_env as create, find_python310


def test_no_python_310_is_named_with_what_to_install(tmp_path, monkeypatch):
    fake = tmp_path / "python3.10"
    fake.write_text("#!/bin/sh\necho False\n")  # a python3.10 on PATH that is not 3.10
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("CNCLIP_PYTHON310", raising=False)
    with pytest.raises(UserError, match=r"Python 3\.10 exactly.*pyenv install 3\.10.*CNCLIP_PYTHON310"):
        find_python310()


def test_create_leaves_a_folder_it_did_not_make_alone(tmp_path, monkeypatch):
    foreign = tmp_path / "someone-elses-env"
    (foreign / "bin").mkdir(parents=True)
    monkeypatch.setenv("CNCLIP_TPU_MLIR_ENV", str(foreign))
    with pytest.raises(UserError, match="not made by `make sophgo-env`"):
        create()
    assert (foreign / "bin").is_dir()
