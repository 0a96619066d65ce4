"""The issue's acceptance numbers on the real architectures, with seeded random weights.

Minutes each on two cores: marked `fullsize`; `make test` (and CI) runs them,
`make test-fast` leaves them out.
"""

import pytest

from converters.config import load_config
from converters.layout import BundleLayout
from converters.manifest import Manifest
from converters.pipeline import STAGES
from converters.verify import run_parity
from tests.conftest import convert_random

pytestmark = pytest.mark.fullsize

MB = 1_000_000


@pytest.mark.parametrize("model", ["ViT-B-16", "RN50"])
def test_random_weights_convert_with_passing_parity(model, tmp_path):
    out = tmp_path / model
    convert_random(model, out)
    report = run_parity(load_config(model), BundleLayout(out), lambda _: None)
    assert report.passed, [s.failures for s in report.stages]
    assert [s.stage for s in report.stages] == list(STAGES)
    if model == "ViT-B-16":
        manifest = Manifest.load(BundleLayout(out).manifest)
        sizes = {t: sum(f["bytes"] for f in manifest.entry(t, "int8")["files"]) for t in ("visual", "text")}
        assert sizes["visual"] <= 90 * MB and sizes["text"] <= 110 * MB, sizes
