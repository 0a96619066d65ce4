"""What the pipeline decides before Ray Data starts."""

from __future__ import annotations

import pytest

from converters.cluster.pipeline import gpu_actors_fitting


@pytest.mark.parametrize("gpus, each, fitting", [
    ([1, 1], 0.2, 10),  # a float floor division gives 4 a node: 1 // 0.2 == 4.0
    ([1, 1], 1, 2),
    ([4, 0], 0.4, 10),
    ([0.5, 0.5], 1, 0),  # halves of GPUs on two nodes hold no whole one
    ([0, 0], 0.5, 0),
])
def test_gpu_actors_are_counted_a_node_at_a_time(gpus, each, fitting):
    nodes = [{"Resources": {"GPU": g} if g else {"CPU": 1.0}} for g in gpus]
    assert gpu_actors_fitting(nodes, each) == fitting
