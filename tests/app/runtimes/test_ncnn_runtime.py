"""ncnn towers run with the manifest's runtime_options: every ncnn artifact asks for denormals flushed, and an
option the runner cannot honour is refused rather than ignored."""

from __future__ import annotations

import dataclasses

import pytest

from converters.app.bundle import Bundle
from converters.app.runtimes.ncnn_runtime import DENORMALS_FLUSHED, NcnnTower
from converters.app.specs import STAGES
from converters.errors import ArtifactError


def ncnn_artifacts(bundle: Bundle):
    stages = [spec.name for spec in STAGES if spec.runtime == "ncnn" and spec.name in bundle.manifest.stages()]
    assert stages
    return [bundle.manifest.artifact(tower, stage) for stage in stages for tower in ("visual", "text")]


def test_every_ncnn_artifact_asks_for_denormals_flushed_and_loads(tiny_bundle):
    for artifact in ncnn_artifacts(Bundle.open(tiny_bundle)):
        assert artifact.runtime_options.items() >= DENORMALS_FLUSHED.items(), artifact.key
        NcnnTower(artifact, threads=1)


@pytest.mark.parametrize("options, refusal", [
    ({"flush_denormals": False}, "cannot change it"),
    ({"flush_denormals": 3}, "flush_denormals 3"),
    ({"use_magic": True}, "no boolean Option 'use_magic'"),
    ({"num_threads": True}, "no boolean Option 'num_threads'"),
    ({"use_fp16_storage": 1}, "no boolean Option 'use_fp16_storage'"),
])
def test_an_option_the_runner_cannot_set_is_refused(tiny_bundle, options, refusal):
    artifact = ncnn_artifacts(Bundle.open(tiny_bundle))[0]
    with pytest.raises(ArtifactError, match=refusal):
        NcnnTower(dataclasses.replace(artifact, runtime_options={**artifact.runtime_options, **options}))
