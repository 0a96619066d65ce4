"""The BM1684X runtime's plumbing: its tool environment and the worker that runs tpu-mlir (needs `make sophgo-env`)."""

from __future__ import annotations

import pytest

from converters.app.runtimes.bm1684x import ToolWorker
from converters.app.runtimes.bm1684x.env import TPU_MLIR
from converters.errors import ArtifactError, UserError


def test_a_missing_tool_environment_says_how_to_make_it(tmp_path, monkeypatch):
    monkeypatch.setenv("CNCLIP_TPU_MLIR_ENV", str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match=r"make sophgo-env.*CNCLIP_TPU_MLIR_ENV"):
        TPU_MLIR.python()


def test_a_half_built_tool_environment_is_not_used(tmp_path, monkeypatch):
    (tmp_path / "bin").mkdir(parents=True)
    (tmp_path / "bin" / "python").write_text("")
    monkeypatch.setenv("CNCLIP_TPU_MLIR_ENV", str(tmp_path))
    with pytest.raises(UserError, match="not installed"):
        TPU_MLIR.python()


@pytest.mark.sophgo
def test_the_worker_reports_a_failed_request_and_answers_the_next():
    worker = ToolWorker(threads=1)
    try:
        with pytest.raises(ArtifactError, match="unknown request"):
            worker.ask({"reload": "x"})
        with pytest.raises(ArtifactError, match="No such file"):
            worker.ask({"load": "/nonexistent/graph.tpu.mlir", "simulator": "interpreter"})
        assert worker.process.poll() is None
    finally:
        worker.close()


@pytest.mark.sophgo
def test_a_worker_that_dies_is_an_error_with_its_last_words_and_is_never_asked_again():
    worker = ToolWorker(threads=1)
    # bmruntime aborts the process on a file it cannot open.
    with pytest.raises(ArtifactError, match=r"stopped while loading /nonexistent/model.bmodel(.|\n)*open failed"):
        worker.ask({"load": "/nonexistent/model.bmodel", "simulator": "cmodel"})
    with pytest.raises(ArtifactError, match="stopped"):
        worker.ask({"ops": "/nonexistent/graph.mlir"})


def test_an_environment_path_with_a_space_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("CNCLIP_TPU_MLIR_ENV", str(tmp_path / "my envs" / "tpu"))
    with pytest.raises(UserError, match="spaces"):
        TPU_MLIR.python()
