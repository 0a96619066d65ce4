"""The issue's acceptance numbers on the real architectures, with seeded random weights.

Minutes each on two cores: marked `fullsize`; `make test` (and CI) runs them,
`make test-fast` leaves them out. They convert what `convert` does by default,
which leaves onnx-int4 out: on ViT-B-16 its all-4-bit visual tower missed the
fallback target even with random weights (seen in one CI run, stopped after 6
minutes of its sensitivity pass), and with stress weights the stage took 14.5
minutes on two cores; the tiny towers test the stage, and the README gives its
full-size numbers with the command that measured them.
"""

import pytest

from converters.export.pipeline import DEFAULT_STAGES
from tests.conftest import convert_random

pytestmark = pytest.mark.fullsize

MB = 1_000_000


@pytest.mark.parametrize("model", ["ViT-B-16", "RN50"])
def test_random_weights_convert_with_passing_parity(model, tmp_path):
    conversion = convert_random(model, tmp_path / model, stages=DEFAULT_STAGES)
    report = conversion.parity
    assert report.passed, [s.failures for s in report.stages]
    assert [s.stage for s in report.stages] == list(DEFAULT_STAGES)
    if model == "ViT-B-16":
        sizes = {t: sum(f.bytes for f in conversion.manifest.entry(t, "onnx-int8").files) for t in ("visual", "text")}
        assert sizes["visual"] <= 90 * MB and sizes["text"] <= 110 * MB, sizes
