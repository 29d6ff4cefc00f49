"""Video models: every registered one trains a step on a tiny clip on the CPU (finite loss, a
gradient for every parameter), inflation keeps the 2D network's answer on a still clip, the
registry refuses what it should, and the cost table counts without computing."""
import copy

import pytest
import torch

from trainers import models3d as M

# a start with zero output weights (non-local blocks are the identity at first, Wang et al.): their
# inner convolutions get exactly zero gradient on the first step, by design
ZERO_AT_START = ("theta", "phi", ".g.", ".out.0.")


@pytest.mark.parametrize("name", M.names())
def test_every_video_model_trains_a_step_and_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    spec = M.get(name)
    model = M.build(name, classes=5).train()
    clips = torch.randint(0, 256, (2, 8, 48 if spec.size > 64 else 32, 48 if spec.size > 64 else 32, 3),
                          dtype=torch.uint8)
    logits = model(clips)
    assert logits.shape == (2, 5)
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([1, 3]))
    loss.backward()
    assert torch.isfinite(loss)
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        if not any(z in pname for z in ZERO_AT_START):
            assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", ["r2plus1d_18", "c3d", "lrcn", "convlstm"])
def test_channels_last_changes_the_layout_not_the_answer(name):
    torch.manual_seed(0)
    model = M.build(name, classes=5).eval()
    clips = torch.randint(0, 256, (2, 8, 48, 48, 3), dtype=torch.uint8)
    with torch.no_grad():
        before = model(clips)
        fast = M.to_channels_last(copy.deepcopy(model))
        after = fast(clips)
    convs = [m for m in fast.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.Conv2d))]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last_3d if c.weight.dim() == 5
                                                else torch.channels_last) for c in convs)
    assert not all(c.weight.is_contiguous() for c in convs)
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    # and it trains: a gradient reaches the first convolution in the same layout
    fast.train()
    torch.nn.functional.cross_entropy(fast(clips), torch.tensor([1, 3])).backward()
    assert convs[0].weight.grad is not None and torch.isfinite(convs[0].weight.grad).all()


def test_inflated_network_on_a_still_clip_gives_the_2d_answer():
    import torchvision

    torch.manual_seed(0)
    net2d = torchvision.models.resnet18(weights=None).eval()
    image = torch.randn(1, 3, 64, 64)
    still = image.unsqueeze(2).repeat(1, 1, 5, 1, 1)          # (1, 3, 5, 64, 64): 5 identical frames
    flat = M.inflate(copy.deepcopy(net2d), lambda name, conv: 1).eval()
    deep = M.inflate(copy.deepcopy(net2d), lambda name, conv: 3).eval()
    with torch.no_grad():
        torch.testing.assert_close(flat(still), net2d(image), rtol=1e-4, atol=1e-4)
        # with a time kernel of 3, frames away from the clip's ends (zero padding) still see the 2D answer
        torch.testing.assert_close(deep.conv1(still)[:, :, 2], net2d.conv1(image), rtol=1e-4, atol=1e-4)


def test_registry_refuses_duplicates_unknown_names_and_unavailable_weights():
    with pytest.raises(ValueError, match="already registered under the name 'c3d'"):
        M.register(M.VideoModelSpec("c3d", lambda c, p: None))
    with pytest.raises(ValueError, match="unknown video model 'x3d'; allowed: r3d_18, r2plus1d_18"):
        M.get("x3d")
    with pytest.raises(ValueError, match="--pretrained 'kinetics400' is not available for c3d; allowed: none"):
        M.build("c3d", 5, "kinetics400")


def test_missing_kinetics_weights_offline_name_the_file_and_the_url(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    import torchvision.models._api as api

    def offline(*a, **k):
        raise OSError("no network")
    monkeypatch.setattr(api.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(M.WeightsError, match=r"r2plus1d_18-91a641e6\.pth is not in .*download https://download"):
        M.build("r2plus1d_18", 5, "kinetics400")


def test_cost_table_counts_parameters_and_flops_without_computing():
    c = M.cost("r2plus1d_18", classes=400)
    assert c["params"] == sum(p.numel() for p in __import__("torchvision").models.video.r2plus1d_18().parameters())
    assert 70 < c["gflops"] < 90  # 40.6 GMACs per 16x112x112 clip, as torchvision lists it
    assert M.cost("small-cnn-lstm")["input"] == "16x64x64"
