"""Video models: every registered one trains a step on a tiny clip on the CPU (finite loss, a
gradient for every parameter), inflation keeps the 2D network's answer on a still clip, the
registry refuses what it should, and the cost table counts without computing."""
import copy

import pytest
import torch

from pipeline.stages.backbones import WeightsError
from trainers.models import cnn3d
from trainers.models import video_models as M

# a start with zero output weights (non-local blocks are the identity at first, Wang et al.): their
# inner convolutions get exactly zero gradient on the first step, by design
ZERO_AT_START = ("theta", "phi", ".g.", ".out.0.",
                 # MViT-v2 classifies its class token, whose query in the last block is neither pooled
                 # nor offset: that block's query pooling and relative positions reach no output
                 "blocks.15.attn.rel_pos", "blocks.15.attn.pool_q")
# the transformers and S3D at the smallest clip that exercises every stage, to keep this test short
CLIP = {"mvit": (4, 64), "swin3d": (4, 32), "s3d": (8, 32)}


# of the torchvision Kinetics models, one transformer of each family here (Swin3D-S/-B are Swin3D-T's
# code with more blocks, MViT-v1 MViT-v2's without pooling attention, S3D separable convolutions):
# tests/trainers/test_modern_models.py trains every one of them from the CLI
@pytest.mark.parametrize("name", [n for n in M.VIDEO_MODELS.names()
                                  if n not in ("swin3d_s", "swin3d_b", "mvit_v1_b", "s3d") and not M.get(n).hub])
def test_every_video_model_trains_a_step_and_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    spec = M.get(name)
    frames, size = next((v for k, v in CLIP.items() if name.startswith(k)), (8, 48 if spec.size > 64 else 32))
    # fixed-input networks are built for the clip; no stochastic depth (a dropped block gets no gradient)
    model = M.build(name, classes=5, frames=frames, size=size, drop_path=None if spec.drop_path is None else 0.0).train()
    clips = torch.randint(0, 256, (2, frames, size, size, 3), dtype=torch.uint8)
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
    flat = cnn3d.inflate(copy.deepcopy(net2d), lambda name, conv: 1).eval()
    deep = cnn3d.inflate(copy.deepcopy(net2d), lambda name, conv: 3).eval()
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


@pytest.mark.parametrize("name, file", [("r2plus1d_18", "r2plus1d_18-91a641e6.pth"), ("mvit_v2_s", "mvit_v2_s-ae3be167.pth"),
                                        ("swin3d_t", "swin3d_t-7615ae03.pth"), ("s3d", "s3d-d76dad2f.pth")])
def test_missing_kinetics_weights_offline_name_the_file_the_cache_and_the_url(monkeypatch, tmp_path, name, file):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    import torchvision.models._api as api

    def offline(*a, **k):
        raise OSError("no network")
    monkeypatch.setattr(api.WeightsEnum, "get_state_dict", offline)
    cache = tmp_path / "hub" / "checkpoints"
    with pytest.raises(WeightsError) as e:
        M.build(name, 5, "kinetics400")
    assert f"{file} is not in {cache}" in str(e.value) and f"download https://download.pytorch.org/models/{file}" in str(e.value)
    assert "--pretrained none" in str(e.value)


def test_cached_weights_that_are_damaged_or_hostile_are_refused_never_run(monkeypatch, tmp_path):
    import pickle

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    marker = tmp_path / "pwned"

    class Hostile:
        def __reduce__(self):
            return (open, (str(marker), "w"))
    (cache / "swin3d_t-7615ae03.pth").write_bytes(pickle.dumps({"w": Hostile()}))
    with pytest.raises(WeightsError, match=r"swin3d_t-7615ae03\.pth is not a loadable state_dict .*download "
                                              r"https://download\.pytorch\.org/models/swin3d_t-7615ae03\.pth again"):
        M.build("swin3d_t", 5, "kinetics400")
    assert not marker.exists()
    torch.save({"not": torch.zeros(1)}, cache / "s3d-d76dad2f.pth")   # loadable, but another network's
    with pytest.raises(WeightsError, match=r"s3d-d76dad2f\.pth does not fit S3D_Weights\.KINETICS400_V1"):
        M.build("s3d", 5, "kinetics400")


MODERN = {"s3d": "S3D_Weights", "mvit_v1_b": "MViT_V1_B_Weights", "mvit_v2_s": "MViT_V2_S_Weights",
          "swin3d_t": "Swin3D_T_Weights", "swin3d_s": "Swin3D_S_Weights", "swin3d_b": "Swin3D_B_Weights"}


@pytest.mark.parametrize("name", MODERN)
def test_modern_models_take_their_clip_size_and_normalisation_from_their_weights(name):
    from torchvision.models import get_weight

    w = get_weight(f"{MODERN[name]}.KINETICS400_V1")
    t = w.transforms()
    spec = M.get(name)
    assert spec.pretrained == ("kinetics400",) and spec.weights == f"{MODERN[name]}.KINETICS400_V1"
    assert (spec.size, spec.resize) == (t.crop_size[0], tuple(t.resize_size))
    assert spec.mean == pytest.approx(t.mean) and spec.std == pytest.approx(t.std)
    # the clip length the weights' documentation gives (their evaluation protocol)
    assert spec.frames == {"s3d": 128, "mvit_v1_b": 16, "mvit_v2_s": 16}.get(name, 32)
    assert spec.frames >= w.meta["min_temporal_size"] and spec.size >= w.meta["min_size"][0]
    model = M.build(name, 7)
    assert model.mean.flatten().tolist() == pytest.approx([m * 255 for m in t.mean])


def test_a_store_that_does_not_fit_the_weights_gets_one_line_saying_what_to_extract():
    # MViT's weights hold position embeddings for exactly 16 x 224 x 224
    with pytest.raises(ValueError, match=r"mvit_v2_s --pretrained kinetics400 takes exactly 16-frame clips at 224x224 .* "
                                         r"s\.zarr holds 8 frames of 112x112; extract a store for it: har extract DATASET "
                                         r"--frames 16 --size 256$"):
        M.fit_store("mvit_v2_s", "kinetics400", None, (8, 112, 112), "s.zarr")
    with pytest.raises(ValueError, match=r"and --crop is 200"):
        M.fit_store("mvit_v2_s", "kinetics400", 200, (16, 256, 256))
    assert M.fit_store("mvit_v2_s", "kinetics400", None, (16, 256, 341)) == (224, [])
    # the video ResNets' resize is 128x171: the advice says so
    with pytest.raises(ValueError, match=r"r2plus1d_18 --pretrained kinetics400 takes 16-frame clips at 112x112 .*"
                                         r"--frames 16 --size 128x171"):
        M.fit_store("r2plus1d_18", "kinetics400", None, (16, 64, 64))
    # Swin3D takes any clip length: trained on 32 frames, 16 is allowed with a warning
    crop, warnings = M.fit_store("swin3d_t", "kinetics400", None, (16, 256, 256))
    assert crop == 224 and len(warnings) == 1 and "trained on 32-frame clips; this store has 16" in warnings[0]
    with pytest.raises(ValueError, match="at least 8 frames"):
        M.fit_store("s3d", "kinetics400", None, (4, 256, 256))
    # random initialisation: any clip the network takes, the crop at most the stored size
    assert M.fit_store("mvit_v2_s", "none", None, (8, 36, 40)) == (32, [])   # its crops are multiples of 32
    assert M.fit_store("swin3d_t", "none", None, (8, 36, 40)) == (36, [])
    # a crop larger than the frames: the frames, with a warning (as runs of earlier versions did)
    crop, warnings = M.fit_store("swin3d_t", "none", 48, (8, 36, 40))
    assert crop == 36 and "--crop 48 is larger than the stored frames of the store (36x40); cropping 36" in warnings[0]
    # MViT's position tables: even frame counts, crops a multiple of 32
    with pytest.raises(ValueError, match=r"mvit_v2_s takes clips whose frames are a multiple of 2 and whose crop is a "
                                         r"multiple of 32 .* extract with --frames 4 or choose --crop 32"):
        M.fit_store("mvit_v2_s", "none", 50, (5, 50, 50))
    with pytest.raises(ValueError, match=r"s3d takes clips of at least 8 frames at 32x32; the store holds 4 frames of 36x40"):
        M.fit_store("s3d", "none", None, (4, 36, 40))


def test_layer_groups_cover_every_parameter_once_in_depth_order_with_the_new_layer_last():
    model = M.build("mvit_v2_s", 5, frames=4, size=64)
    groups = M.layer_groups(model.net, "head.1")
    ids = [id(p) for g in groups for p in g]
    assert sorted(ids) == sorted(id(p) for p in model.net.parameters()) and len(ids) == len(set(ids))
    assert groups[-1] == list(model.net.head[1].parameters())
    # conv_proj, the position encoding, 16 blocks, the final norm, the new output layer
    assert len(groups) == 20 and groups[0] == list(model.net.conv_proj.parameters())
    assert groups[2] == list(model.net.blocks[0].parameters())
    r = M.build("r2plus1d_18", 5)
    # the stem's layers, 8 residual blocks, the classifier
    assert [id(p) for p in M.layer_groups(r.net, "fc")[-2]] == [id(p) for p in r.net.layer4[1].parameters()]


def test_per_layer_learning_rates_follow_the_decay_and_the_backbone_multiplier():
    from types import SimpleNamespace

    from trainers.training import clip_task

    model = M.build("swin3d_t", 5, size=32, frames=4)
    cfg = clip_task.E2EConfig(model="swin3d_t", lr=1e-3, layer_decay=0.5, backbone_lr_mult=0.1)
    groups = clip_task.ClipTask.param_groups(SimpleNamespace(model="swin3d_t"), cfg, model)
    lrs = [g["lr"] for g in groups]
    assert lrs[-1] == 1e-3 and lrs[-2] == pytest.approx(1e-3 * 0.1 * 0.5)
    assert lrs[0] == pytest.approx(1e-3 * 0.1 * 0.5 ** (len(lrs) - 1))
    assert all(a < b for a, b in zip(lrs, lrs[1:]))
    # neither option: one group, as before they existed (an interrupted run's last.pt resumes)
    plain = clip_task.ClipTask.param_groups(SimpleNamespace(model="swin3d_t"), clip_task.E2EConfig(lr=1e-3), model)
    opt = torch.optim.Adam(plain, lr=1e-3)
    assert len(opt.param_groups) == 1 and len(opt.param_groups[0]["params"]) == len(list(model.parameters()))


def test_drop_path_rises_linearly_to_the_rate_and_is_refused_where_there_is_none():
    from torchvision.ops import StochasticDepth

    from trainers.training.config import E2EConfig

    model = M.build("swin3d_t", 5, drop_path=0.3)
    rates = [m.p for m in model.modules() if isinstance(m, StochasticDepth)]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3) and rates == sorted(rates)
    default = [m.p for m in M.build("swin3d_t", 5).modules() if isinstance(m, StochasticDepth)]
    assert default[-1] == pytest.approx(0.1)   # torchvision's own rate stays when none is given
    with pytest.raises(ValueError, match=r"--drop-path is not available for c3d .*allowed for: mvit_v1_b, mvit_v2_s, "
                                         r"swin3d_t, swin3d_s, swin3d_b"):
        E2EConfig(model="c3d", drop_path=0.1).check_values()
    for bad, flag in ((dict(drop_path=1.0), "--drop-path"), (dict(layer_decay=1.5), "--layer-decay"),
                      (dict(layer_decay=0.0), "--layer-decay"), (dict(backbone_lr_mult=0.0), "--backbone-lr-mult"),
                      (dict(label_smoothing=1.0), "--label-smoothing"), (dict(warmup_epochs=-1.0), "--warmup-epochs")):
        with pytest.raises(ValueError, match=flag):
            E2EConfig(model="swin3d_t", **bad).check_values()


def test_settings_added_later_leave_earlier_runs_fingerprints_alone():
    from trainers.training.config import E2EConfig, LoopConfig, HeadTrainConfig, added_later

    for cfg in (E2EConfig(), HeadTrainConfig()):
        assert not set(cfg.fingerprint_dict()) & set(added_later(type(cfg)))
    # each config declares its own: the loop's own settings are not another class's
    assert set(LoopConfig.ADDED_LATER) <= {f for f in LoopConfig.__dataclass_fields__}
    assert set(E2EConfig.ADDED_LATER) <= set(E2EConfig.__dataclass_fields__) - set(LoopConfig.__dataclass_fields__)
    assert set(added_later(HeadTrainConfig)) == set(LoopConfig.ADDED_LATER)
    assert E2EConfig(label_smoothing=0.1).fingerprint_dict()["label_smoothing"] == 0.1
    assert E2EConfig(drop_path=0.0, model="swin3d_t").fingerprint_dict()["drop_path"] == 0.0


def test_cost_table_counts_parameters_and_flops_without_computing():
    c = M.cost("r2plus1d_18", classes=400)
    assert c["params"] == sum(p.numel() for p in __import__("torchvision").models.video.r2plus1d_18().parameters())
    assert 70 < c["gflops"] < 90  # 40.6 GMACs per 16x112x112 clip, as torchvision lists it
    assert M.cost("small-cnn-lstm")["input"] == "16x64x64"


@pytest.mark.parametrize("name", ["mvit_v2_s", "mvit_v1_b", "swin3d_t"])
def test_cost_of_the_modern_models_agrees_with_their_weights(name):
    from torchvision.models import get_weight

    w = get_weight(f"{MODERN[name]}.KINETICS400_V1")
    c = M.cost(name, classes=400)
    assert c["params"] == w.meta["num_params"]
    # torchvision lists GMACs (its `_ops`) of the smallest clip (MViT 16x224; Swin3D measured at 16 frames):
    # ours are FLOPs (2 x MACs) of the model's own clip (Swin3D: 32 frames)
    frames = M.get(name).frames
    assert c["gflops"] == pytest.approx(2 * w.meta["_ops"] * (frames / 16 if name.startswith("swin") else 1), rel=0.01)
