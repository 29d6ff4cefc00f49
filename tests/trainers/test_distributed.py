"""A real dask.distributed cluster on 127.0.0.1: a scheduler and two worker processes started here."""

import numpy as np
import pytest

from helpers import dask_cluster

from pipeline.stages.extract import ExtractConfig, Recipe, extract
from pipeline.stores.store import StoreReader


@pytest.fixture
def cluster(tmp_path):
    with dask_cluster(tmp_path) as address:
        yield address


def test_distributed_run_equals_local_run(synthetic_root, tmp_path, cluster):
    assert cluster.startswith("tcp://127.0.0.1:")
    recipe = Recipe(sampling="clip", frames=6, stride=2, height=32, width=40, views=1)
    dist = extract(ExtractConfig("synthetic", recipe, root=synthetic_root, out=tmp_path / "d.zarr", scheduler=cluster))
    local = extract(ExtractConfig("synthetic", recipe, root=synthetic_root, out=tmp_path / "l.zarr", scheduler="synchronous"))
    assert dist.ok == local.ok == 24
    with StoreReader(dist.store) as a, StoreReader(local.store) as b:
        assert a.names() == b.names()
        for name in a.names():
            np.testing.assert_array_equal(a.read(name), b.read(name), err_msg=name)
        assert a.attrs["lineage"]["fingerprint"] == b.attrs["lineage"]["fingerprint"]


def test_distributed_features_equal_local(synthetic_root, tmp_path, cluster):
    pytest.importorskip("torch")
    from pipeline.stages.features import FeatureConfig, features

    frames = extract(ExtractConfig("synthetic", Recipe(frames=2, height=32, width=32), root=synthetic_root,
                                   out=tmp_path / "f.zarr", scheduler="synchronous")).store
    cfg = dict(backbone="resnet18", weights="none", store=frames, device="cpu")
    dist = features(FeatureConfig(**cfg, out=tmp_path / "d.zarr", scheduler=cluster))
    local = features(FeatureConfig(**cfg, out=tmp_path / "l.zarr"))
    assert dist.encoded_videos == local.encoded_videos == 24
    with StoreReader(dist.store) as a, StoreReader(local.store) as b:
        np.testing.assert_allclose(a.read("features").astype(np.float32), b.read("features").astype(np.float32),
                                   rtol=1e-2, atol=1e-2)  # other processes, other thread counts: float noise
        np.testing.assert_array_equal(a.read("status"), b.read("status"))
