"""Heads: every registered one runs forward and backward; the registry refuses what it should;
metrics are right on hand-checked tables."""
import numpy as np
import pytest
import torch

from trainers.training import config, head_task, loop
from trainers.models import heads
from trainers.runs import metrics


@pytest.mark.parametrize("name", heads.HEADS.names())
@pytest.mark.parametrize("bidirectional", [False, True])
def test_every_head_trains_a_step_and_every_parameter_gets_a_gradient(name, bidirectional):
    torch.manual_seed(0)
    cfg = config.HeadConfig(hidden=16, layers=2, bidirectional=bidirectional, dropout=0.1, heads=4)
    model = heads.build(name, dim=12, classes=5, frames=6, cfg=cfg)
    x = torch.randn(3, 6, 12)
    logits = model(x)
    assert logits.shape == (3, 5)
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 4]))
    loss.backward()
    assert torch.isfinite(loss)
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_mean_head_cannot_see_order_and_the_sequence_heads_can():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8)
    rev = x.flip(1)
    for name in heads.HEADS.names():
        model = heads.build(name, 8, 3, 5, config.HeadConfig(hidden=8, dropout=0.0)).eval()
        same = torch.allclose(model(x), model(rev), atol=1e-5)
        assert same == (name == "mean"), name


def test_registry_refuses_duplicates_and_unknown_names():
    with pytest.raises(ValueError, match="already registered under the name 'lstm'"):
        heads.register("lstm")(lambda *a: None)
    with pytest.raises(ValueError, match="unknown head 'transformer'; allowed: lstm, gru, rnn, late-fusion, mean, attention, "
                                         "attentive-probe"):
        heads.check("transformer")
    with pytest.raises(ValueError, match="--hidden 30 must be a multiple of --heads 4"):
        heads.build("attention", 8, 3, 4, config.HeadConfig(hidden=30))
    with pytest.raises(ValueError, match="--dropout 1.0 is out of range"):
        heads.build("lstm", 8, 3, 4, config.HeadConfig(dropout=1.0))


def test_standardize_uses_the_given_statistics():
    model = heads.build("mean", 2, 2, 3, config.HeadConfig(dropout=0.0), torch.tensor([1.0, -1.0]),
                        torch.tensor([2.0, 0.5]))
    out = model[0](torch.tensor([[[3.0, 0.0]]]))
    torch.testing.assert_close(out, torch.tensor([[[1.0, 2.0]]]))


@pytest.mark.parametrize("kw, message", [
    ({"optimizer": "sgd"}, "--optimizer 'sgd' is not supported; allowed: adam, adamw"),
    ({"scheduler": "step"}, "--scheduler 'step' is not supported; allowed: plateau, exponential, cosine, none"),
    ({"epochs": 0}, "--epochs 0 must be >= 1"),
    ({"lr": 0.0}, "--lr 0.0 must be > 0"),
    ({"head": "svm"}, "unknown head 'svm'"),
])
def test_bad_training_config_is_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        head_task.HeadTrainConfig(**kw).validate()


# ---- metrics ---------------------------------------------------------------------------------------

P = np.array([[0.7, 0.2, 0.1],    # true 0: right
              [0.5, 0.3, 0.2],    # true 1: wrong (2nd)
              [0.1, 0.1, 0.8],    # true 2: right
              [0.2, 0.5, 0.3]])   # true 2: wrong (2nd)
Y = np.array([0, 1, 2, 2])


@pytest.mark.parametrize("k, expected", [(1, 0.5), (2, 1.0), (3, 1.0), (10, 1.0)])
def test_topk_table(k, expected):
    assert metrics.topk_accuracy(Y, P, k) == expected


def test_classification_numbers_by_hand():
    m = metrics.classification(Y, P, ["a", "b", "c"])
    # predictions 0, 0, 2, 1: class a P=1/2 R=1, b P=0 R=0, c P=1 R=1/2
    assert m["top1"] == 0.5 and m["videos"] == 4
    assert m["precision_macro"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert m["recall_macro"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert m["recall_weighted"] == pytest.approx(0.5)
    assert m["confusion"] == [[1, 0, 0], [1, 0, 0], [0, 1, 1]]
    assert [r["support"] for r in m["per_class"]] == [1, 1, 2]
    assert m["f1_macro"] == pytest.approx((2 / 3 + 0 + 2 / 3) / 3)
    assert 0 <= m["roc_auc_ovr_macro"] <= 1


def test_roc_auc_skips_classes_absent_from_the_labels():
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0]])
    assert metrics.roc_auc_macro(np.array([0, 1]), probs) == 1.0  # class 2 has no positives: skipped


def test_summary_of_fold_results():
    s = metrics.summary([0.5, 1.0])
    assert s == {"mean": 0.75, "std": 0.25, "folds": 2, "values": [0.5, 1.0]}


@pytest.mark.parametrize("labels, classes, expected", [
    ([0, 0, 0, 1], 2, [4 / 6, 4 / 2]),
    ([0, 1], 3, [1.0 * 2 / 3, 2 / 3, 1.0]),  # absent class 2 weighs 1
])
def test_class_weights_table(labels, classes, expected):
    np.testing.assert_allclose(loop.class_weights(np.array(labels), classes).numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("layers, bidirectional", [(1, False), (2, False), (1, True), (2, True)])
def test_fast_lstm_head_computes_what_nn_lstm_computes(layers, bidirectional):
    torch.manual_seed(0)
    model = heads.build("lstm", 12, 5, 6, config.HeadConfig(hidden=16, layers=layers, bidirectional=bidirectional,
                                                          dropout=0.0)).eval()
    x = torch.randn(3, 6, 12)
    reference = heads.Recurrent.forward(model[1], model[0](x))  # nn.LSTM's own kernel, same parameters
    torch.testing.assert_close(model(x), reference, rtol=1e-5, atol=1e-6)
    assert set(model.state_dict()) >= {"1.rnn.weight_ih_l0", "1.rnn.weight_hh_l0"}  # nn.LSTM's parameter names


@pytest.mark.parametrize("mode", ["centred", "deltas", "centred+deltas"])
def test_temporal_inputs_ignore_a_clips_constant_look_and_keep_its_change(mode):
    """A per-clip offset (a group's appearance, constant over time) changes nothing the head sees;
    the order of the frames still does."""
    from trainers.training.config import HeadConfig

    torch.manual_seed(0)
    head = heads.build("lstm", 6, 3, 5, HeadConfig(hidden=8, dropout=0.0, temporal_input=mode)).eval()
    x = torch.randn(4, 5, 6)
    look = torch.randn(4, 1, 6) * 5
    with torch.no_grad():
        torch.testing.assert_close(head(x + look), head(x), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(head(x.flip(1)), head(x), atol=1e-3)
    seen = head[0](x)
    assert seen.shape == (4, 5, 12 if mode == "centred+deltas" else 6)


def test_temporal_input_is_checked_and_leaves_earlier_runs_fingerprints_alone():
    from trainers.training.config import HeadConfig, HeadTrainConfig

    with pytest.raises(ValueError, match="--temporal-input 'flow' is not supported; allowed: auto, raw, centred, deltas"):
        HeadTrainConfig(head_options=HeadConfig(temporal_input="flow")).validate()   # checked against heads.TEMPORAL_INPUTS
    # runs of earlier versions saw raw features: raw stays out of the fingerprint (and fills their config.json)
    assert "temporal_input" not in HeadTrainConfig(head_options=HeadConfig(temporal_input="raw")).fingerprint_dict()["head_options"]
    assert HeadTrainConfig().fingerprint_dict()["head_options"]["temporal_input"] == "auto"
    # `auto` in a config.json (runs of its first version, before runs recorded the concrete name):
    # centred for the heads that read the order, raw for the bag of frames
    assert heads.temporal_input("lstm", "auto") == "centred" and heads.temporal_input("attention", "auto") == "centred"
    assert heads.temporal_input("mean", "auto") == "raw" and heads.temporal_input("mean", "deltas") == "deltas"


def test_auto_is_recorded_as_the_heads_default_and_earlier_auto_runs_read_back_as_they_trained(tmp_path):
    import json

    from helpers import reversed_pair_features, write_feature_store

    from trainers.runs import runner
    from trainers.training.config import HeadConfig, HeadTrainConfig

    # a run records the concrete input auto chose for its head
    assert [HeadTrainConfig(head=h).resolved().head_options.temporal_input for h in ("lstm", "gru", "attention", "mean")] \
        == ["centred", "centred", "centred", "raw"]
    # the concrete name is fingerprinted as given: runs that named it keep their fingerprint
    assert HeadTrainConfig(head="attention").resolved().fingerprint_dict()["head_options"]["temporal_input"] == "centred"
    assert "temporal_input" not in HeadTrainConfig(head="mean").resolved().fingerprint_dict()["head_options"]   # raw
    f, y, g = reversed_pair_features(videos_per_class=8, dim=8, frames=6)
    store = write_feature_store(tmp_path / "f.zarr", f, y, g, ["A", "B", "C", "D"])
    cfg = HeadTrainConfig(head="attention", head_options=HeadConfig(hidden=16, dropout=0.0), epochs=2, batch_size=8, split="random")
    res = head_task.train_head(head_task.HeadRunConfig(cfg, features=store, out=tmp_path / "new"))
    assert json.loads((res.run_dir / "config.json").read_text())["head_options"]["temporal_input"] == "centred"
    # a run of auto's first version (config.json says auto): read back with the input it trained on (centred);
    # trained here with centred, its config.json then made to say auto
    cfg = HeadTrainConfig(head="attention", head_options=HeadConfig(hidden=16, dropout=0.0, temporal_input="centred"),
                      epochs=2, batch_size=8, split="random")
    res = head_task.train_head(head_task.HeadRunConfig(cfg, features=store, out=tmp_path / "old"))
    saved = json.loads((res.run_dir / "config.json").read_text())
    saved["head_options"]["temporal_input"] = "auto"
    (res.run_dir / "config.json").write_text(json.dumps(saved))
    back = runner.evaluate_run(res.run_dir)
    for k in ("top1", "f1_macro", "roc_auc_ovr_macro"):   # the same probabilities, not just the same argmax
        assert back[k] == pytest.approx(res.summary["test"][k], abs=1e-9), k
    again = head_task.train_head(head_task.HeadRunConfig(cfg, features=store, out=tmp_path / "old"))
    assert again.up_to_date
