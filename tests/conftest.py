import os
import sys
from pathlib import Path

import pytest

# pytest-xdist's workers share the cores: each worker's torch, and that of every `har` it starts
# (they inherit this), gets its share, as torch_threads() gives a server's pool. All of them at
# every core's count, OpenMP threads spin against each other: the suite took a quarter longer
# (BENCHMARKS.md, "The test suite's wall time"). A user's own OMP_NUM_THREADS is kept.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") != "1" and "OMP_NUM_THREADS" not in os.environ:
    from pipeline.core.cluster import torch_threads   # light: no torch, no dask

    os.environ["OMP_NUM_THREADS"] = str(torch_threads(int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

sys.path.insert(0, str(Path(__file__).parent))  # helpers.py, and test modules that share fixtures:
for _folder in sorted(Path(__file__).parent.rglob("test_*.py")):  # `from test_trust import data, ...`
    if str(_folder.parent) not in sys.path:
        sys.path.insert(1, str(_folder.parent))

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def har_home(tmp_path, monkeypatch):
    """Every test gets its own $HAR_HOME, so nothing touches the user's stores."""
    home = tmp_path / "har_home"
    monkeypatch.setenv("HAR_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A small synthetic dataset: 4 classes x 3 groups x 2 clips of about 24 frames."""
    from pipeline.datasets.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("synthetic")
    generate(root, SynthConfig(classes=4, groups=3, clips=2, frames=24))
    return root


@pytest.fixture(scope="session")
def frames(synthetic_root, tmp_path_factory):
    """A clip store of the synthetic set (8 frames at 36x40, one augmented view) for video models."""
    from pipeline.stages.extract import ExtractConfig, Recipe, extract

    recipe = Recipe(sampling="clip", frames=8, height=36, width=40, views=1)
    out = tmp_path_factory.mktemp("e2e") / "clips.zarr"
    return extract(ExtractConfig("synthetic", recipe, root=synthetic_root, out=out, scheduler="synchronous")).store


def shared_data() -> Path:
    if not SHARED.exists():
        pytest.skip(f"reference data not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def colour_run(tmp_path_factory):
    """A trained head run that tells three colour classes apart (Red, Green, Blue; helpers.COLOURS):
    a folder dataset, an 8-frame 32 px store, random-init ResNet-18 features, a mean head.
    Returns (run folder, dataset root)."""
    from helpers import har, write_colour_dataset

    w = tmp_path_factory.mktemp("colour")
    env = {"HAR_HOME": str(w / "home")}
    root = write_colour_dataset(w / "videos")
    assert har("extract", "folder", "--root", root, "--frames", 8, "--size", 32, "--out", w / "f.zarr",
               "--workers", 1, env=env).returncode == 0
    r = har("features", "--store", w / "f.zarr", "--backbone", "resnet18", "--weights", "none", "--resize", "stored",
            "--out", w / "feat.zarr", env=env)
    assert r.returncode == 0, r.stderr
    r = har("train-head", "mean", "--features", w / "feat.zarr", "--epochs", 15, "--out", w / "run", env=env)
    assert r.returncode == 0, r.stderr
    return w / "run", root


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto in server mode) on 127.0.0.1 for this test process, with the
    usual AWS_* variables pointing at it (har reads nothing else); every subprocess inherits them."""
    import logging
    import os

    moto_server = pytest.importorskip("moto.server", reason="the tests' S3 server needs moto[server] (pip install -e '.[test]')")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env["AWS_ENDPOINT_URL"]
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


@pytest.fixture
def bucket(s3_server, request):
    """A new, empty bucket on the test S3 server: its s3:// URL."""
    import re

    import boto3

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + f"-{abs(hash(request.node.nodeid)) % 10**6}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return f"s3://{name}"
