"""Embedding a photo archive on a Ray cluster (Ray Data), into the same index `index` writes: see docs/cluster.md."""
