"""Behaviour unchanged across a restructure: two `har demo` outputs

    .venv/bin/python benchmarks/demo_equal.py HAR_HOME_A DEMO_A HAR_HOME_B DEMO_B

(HAR_HOME's stores and the har-demo/ folder of each run of `har demo`; e.g. one from a fresh-clone
.ci/run of the commit before, one from the working tree). Asserts the frame and feature stores
array-equal (the sources' file-system facts excepted: two synth copies differ in mtime, ctime and
inode), the same store and run folder names (fingerprints), metrics.json equal but for paths and
train_seconds, best.pt tensors equal; prints a JSON line per store and run.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
import zarr

def arrays(path):
    g = zarr.open_group(str(path), mode="r")
    out = {}
    def walk(grp, prefix=""):
        for k, v in grp.members():
            if isinstance(v, zarr.Group):
                walk(v, prefix + k + "/")
            else:
                out[prefix + k] = v[...]
    walk(g)
    return out

a_home, a_demo, b_home, b_demo = map(Path, sys.argv[1:5])
sa = sorted(p for p in Path(a_home, "stores").rglob("*.zarr") if (p / "zarr.json").exists())
sb = sorted(p for p in Path(b_home, "stores").rglob("*.zarr") if (p / "zarr.json").exists())
assert [p.relative_to(a_home) for p in sa] == [p.relative_to(b_home) for p in sb], (sa, sb)
for x, y in zip(sa, sb):
    ax, ay = arrays(x), arrays(y)
    assert ax.keys() == ay.keys(), x
    fs = {"source/mtime_ns", "source/ctime_ns", "source/inode"}  # file-system facts of two synth copies
    for k in ax:
        assert k in fs or np.array_equal(ax[k], ay[k]), (x, k)
    print(json.dumps({"store": str(x.relative_to(a_home)), "arrays": len(ax), "equal": True}))
ra = sorted(Path(a_demo, "runs").iterdir()); rb = sorted(Path(b_demo, "runs").iterdir())
assert [p.name for p in ra] == [p.name for p in rb], (ra, rb)
for x, y in zip(ra, rb):
    mx, my = (json.loads((d / "metrics.json").read_text().replace(str(h), "HOME"))
              for d, h in ((x, a_home), (y, b_home)))
    for m in (mx, my):
        m.pop("train_seconds", None)
    assert mx == my, x.name
    wx = torch.load(x / "best.pt", weights_only=True); wy = torch.load(y / "best.pt", weights_only=True)
    sx = wx.get("model", wx); sy = wy.get("model", wy)
    assert sx.keys() == sy.keys() and all(torch.equal(sx[k], sy[k]) for k in sx), x.name
    print(json.dumps({"run": x.name, "top1": mx["test"]["top1"], "equal": True}))
