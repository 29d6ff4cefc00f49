"""The pieces `har export` builds a model file from: the weights' resize and centre crop as matrices
(equal to torchvision's pixels, one input geometry for predict, explain and export), and every
registered head through each format's own writer and runtime."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import needs_export as needs

from pipeline.stages import backbones, input_policy
from trainers.inference import export as E
from trainers.inference import export_formats as EF
from trainers.models import heads
from trainers.models.chain import resize_matrix


# ---- the pieces ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", backbones.names("frame"))
@pytest.mark.parametrize("hw", [(48, 64), (240, 320), (112, 112), (300, 200)])
def test_resize_and_crop_as_matrices_equal_torchvisions(name, hw):
    """Every backbone's input policy (bilinear or bicubic, antialiased, then a centre crop) on
    uint8 frames: the matrices give torchvision's pixels (bicubic downscaling: a pixel in 1e5 off by one)."""
    import torchvision.transforms.functional as F

    cut = E.backbone_cut({"backbone": name, "resize": "weights"}, hw)
    p = backbones.get(name).input
    x = torch.randint(0, 256, (2, 3, *hw), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ref = F.center_crop(F.resize(x, [p.resize], interpolation=F.InterpolationMode(p.interpolation), antialias=True),
                        [p.size, p.size])
    got = cut.module(x.float())
    assert got.shape == ref.shape
    off = (got - ref.float()).abs()
    assert off.max() <= 1 and (off > 0).float().mean() < 1e-4
    if p.interpolation == "bilinear":
        assert torch.equal(got, ref.float())


@pytest.mark.parametrize("n_in, n_out", [(4, 6), (6, 4), (48, 256), (320, 341), (7, 7), (1, 3)])
@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_resize_matrix_is_torchs_interpolation(n_in, n_out, mode):
    m = resize_matrix(n_in, n_out, mode, True)
    x = torch.rand(3, 2, n_in, 5)
    ref = torch.nn.functional.interpolate(x, size=(n_out, 5), mode=mode, align_corners=False, antialias=True)
    torch.testing.assert_close(torch.matmul(m, x), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("h, w, size, expected", [
    (48, 64, [256], (256, 341)), (240, 320, [256], (256, 341)), (320, 240, [256], (341, 256)),
    (112, 112, [256], (256, 256)), (10, 20, [5, 7], (5, 7)),
])
def test_resized_size_is_torchvisions(h, w, size, expected):
    from torchvision.transforms.functional import _compute_resized_output_size

    assert input_policy.resized_size(h, w, size) == expected == tuple(_compute_resized_output_size((h, w), size))


@pytest.mark.parametrize("size, resize, hw, resized, window", [
    (224, 256, (240, 320), (256, 341), (15.0, 54.897, 210.0, 210.205)),
    (224, 256, (112, 112), (256, 256), (7.0, 7.0, 98.0, 98.0)),
    (224, 224, (320, 240), (298, 224), (39.732, 0.0, 240.537, 240.0)),
    (240, 272, (96, 64), (408, 272), (19.765, 3.765, 56.471, 56.471)),
])
def test_one_input_geometry_for_predict_explain_and_export(size, resize, hw, resized, window):
    """input_policy.input_geometry: the sizes torchvision's resize and centre crop give (Preprocess),
    the part of the stored frame the crop covers (explain's chain), and export's cut built on them."""
    import torchvision.transforms.functional as F

    policy = input_policy.InputPolicy(size=size, resize=resize)
    g = input_policy.input_geometry(policy, *hw)
    assert g.stored == hw and g.resized == resized and g.crop == (size, size)
    assert g.window == pytest.approx(window, abs=1e-3)
    frame = torch.zeros(1, 3, *hw, dtype=torch.uint8)
    assert tuple(F.resize(frame, [resize], antialias=True).shape[2:]) == resized
    assert tuple(input_policy.Preprocess(policy)(frame).shape[2:]) == g.crop
    card = {"input": policy.as_dict()}
    about = E.backbone_cut(card, hw).about
    assert about["resize_to"] == list(resized) and (about["crop"]["height"], about["crop"]["width"]) == g.crop


@pytest.mark.parametrize("n, crop, expected", [
    (5, 3, [1, 2, 3]), (6, 3, [2, 3, 4]), (4, 4, [0, 1, 2, 3]), (2, 4, [-1, 0, 1, -1]), (1, 4, [-1, 0, -1, -1]),
    (7, 4, [2, 3, 4, 5]),   # round(1.5) = 2 (banker's, as torchvision's int(round(...)))
    (5, 2, [2, 3]),         # round(1.5) = 2
    (9, 4, [2, 3, 4, 5]),   # round(2.5) = 2
])
def test_centre_window_is_torchvisions(n, crop, expected):
    import torchvision.transforms.functional as F

    assert E.window(n, crop) == expected
    img = (torch.arange(n) + 1).view(1, 1, n)  # (C, H, W): pixel i holds i + 1, padding 0
    got = F.center_crop(img, [1, crop])[0, 0].tolist()
    assert got == [i + 1 if i >= 0 else 0 for i in expected]


class _Pixels(torch.nn.Module):
    """float (B, 3, T, H, W) pixels -> (B, T, 3 * H * W) 'features' in 0..1: a stand-in backbone."""

    def forward(self, x):
        return x.transpose(1, 2).flatten(2) / 255


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("name", heads.HEADS.names())
def test_every_head_exports(name, fmt, tmp_path):
    """Each registered head through the format's own writer and runtime, any batch size; the
    attention head too (traced on the transformer's plain path: its fused kernel has no ONNX form)."""
    needs(fmt)
    from trainers.training.config import HeadConfig

    torch.manual_seed(0)
    model = torch.nn.Sequential(_Pixels(), heads.build(name, 48, 3, 2, HeadConfig(hidden=16, layers=2))).eval()
    module = E.Exported(model, torch.nn.Identity()).eval()
    x = torch.randint(0, 256, (3, 2, 4, 4, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    meta = {"classes": ["a", "b", "c"], "input": {}, "har": {"har_run": "-", "har_version": "0", "about": name}}
    fmt_ = EF.FORMATS.get(fmt)
    fmt_.write(module, x[:2], meta, tmp_path / f"m{fmt_.suffix}")
    load = fmt_.load(tmp_path / f"m{fmt_.suffix}")
    with torch.inference_mode():
        ref = module(x).numpy()
    np.testing.assert_allclose(load(x.numpy()), ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(load(x[:1].numpy()), ref[:1], atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript-based exporter's notice
def test_float16_rounding_of_features_survives_onnxruntime():
    """The head reads float16-rounded features; ONNX Runtime's graph optimisations must not drop
    the float -> float16 -> float casts (they do not in 1.32: checked here)."""
    needs("onnx")
    import io

    import onnxruntime as ort

    from trainers.models.chain import Float16Rounded

    x = torch.randn(4096) * 3
    buf = io.BytesIO()
    torch.onnx.export(Float16Rounded(), (x,), buf, dynamo=False, opset_version=EF.OPSET)
    s = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    got = s.run(None, {s.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_array_equal(got, x.numpy().astype(np.float16).astype(np.float32))
