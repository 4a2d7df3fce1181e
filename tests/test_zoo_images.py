"""The image task: the generated set, the three ResNets, Net2WiderNet / Net2DeeperNet on conv
nets, growth in the ledger and the three runs in one report (all on the CPU, tiny sizes)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("pytorch_lightning")

from wattwise.errors import BadInput  # noqa: E402
from wattwise.zoo.convnets import (  # noqa: E402
    IMAGE_MODELS,
    AdaptiveResNet,
    BaselineResNet,
    ConstrainedResNet,
)
from wattwise.zoo.images import N_CLASSES, ImagesDataModule, generate  # noqa: E402
from wattwise.zoo.models import count_parameters, decov_loss  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"train": 192, "val": 96, "test": 96}


def _trainer(tmp_path, epochs: int, callbacks=()) -> pl.Trainer:
    from wattwise.zoo.demo import demo_trainer

    return demo_trainer(epochs, list(callbacks), root_dir=tmp_path, accelerator="cpu")


# ------------------------------------------------------------------------------ the data


def test_the_same_seed_gives_the_same_set_and_another_seed_another():
    x, y = generate(300, seed=4)
    x2, y2 = generate(300, seed=4)
    x3, _ = generate(300, seed=5)
    assert x.shape == (300, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, x3)
    assert torch.bincount(y, minlength=N_CLASSES).tolist() == [30] * N_CLASSES  # balanced
    assert abs(x.mean().item()) < 0.5 and 0.5 < x.std().item() < 2.0  # about standardised


def test_splits_are_independent_streams():
    val = generate(50, seed=1, split="val")[0]
    assert not torch.equal(val, generate(50, seed=1, split="train")[0])
    # a split's images do not depend on the other splits' sizes or on its own chunking
    big = generate(120, seed=1, split="val")[0]
    assert torch.equal(val, generate(50, seed=1, split="val")[0])
    assert big.shape[0] == 120


def test_images_vary_within_a_class():
    """Position, scale, colour and noise jitter: two images of one class are never alike."""
    x, y = generate(200, seed=0)
    for c in range(N_CLASSES):
        same = x[y == c]
        assert (same[0] - same[1]).abs().mean() > 0.1


def test_bad_sizes_and_splits_are_refused():
    with pytest.raises(BadInput, match="split='nope'"):
        generate(10, split="nope")
    with pytest.raises(BadInput, match="whole numbers >= 1"):
        ImagesDataModule(sizes={"train": 0, "val": 1, "test": 1})
    with pytest.raises(BadInput, match="batch_size=0"):
        ImagesDataModule(batch_size=0)


def test_datamodule_batches_are_gathered_whole_and_shuffled_by_seed():
    dm = ImagesDataModule(batch_size=64, seed=0, sizes=TINY)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert [len(b[0]) for b in batches] == [64, 64, 64]
    assert batches[0][0].shape == (64, 3, 32, 32)
    again = next(iter(dm.train_dataloader()))
    assert torch.equal(again[1], batches[0][1])  # the same seeded order every time
    x_val, y_val = dm.datasets["val"].tensors
    first = next(iter(dm.val_dataloader()))
    assert torch.equal(first[0], x_val[:64]) and torch.equal(first[1], y_val[:64])
    assert dm.generation_s is not None and dm.generation_s > 0


# ------------------------------------------------------------------------------ the nets


def _warm_batchnorm(model: torch.nn.Module, x: torch.Tensor) -> None:
    """A few train-mode passes so the running statistics are not the initial 0 / 1."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x)


def _outputs(model: torch.nn.Module, x: torch.Tensor, *, train: bool) -> torch.Tensor:
    model.train(train)
    with torch.no_grad():
        return model(x)


def _tiny_adaptive(**kwargs) -> AdaptiveResNet:
    torch.manual_seed(0)
    return AdaptiveResNet(**{"width": 4, "max_width": 16, "max_blocks": 3, **kwargs})


@pytest.mark.parametrize("train_mode", [False, True], ids=["eval", "train"])
def test_widen_preserves_the_function(train_mode):
    model = _tiny_adaptive()
    x = generate(32, seed=0)[0]
    _warm_batchnorm(model, x)
    before = _outputs(model, x, train=train_mode)
    old_bn = model.stages[1][0].bn1
    old_mean, old_weight = old_bn.running_mean.clone(), old_bn.weight.detach().clone()
    model.widen(8, generator=torch.Generator().manual_seed(1))
    assert model.widths == (8, 16, 32) and model.arch_width == 8
    block = model.stages[1][0]
    assert block.conv1.out_channels == block.bn1.num_features == block.conv2.in_channels == 16
    # the copied channels carry their originals' BatchNorm parameters and running statistics
    assert torch.equal(block.bn1.running_mean[:8], old_mean)
    assert set(block.bn1.running_mean[8:].tolist()) <= set(old_mean.tolist())
    assert set(block.bn1.weight[8:].tolist()) <= set(old_weight.tolist())
    after = _outputs(model, x, train=train_mode)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("train_mode", [False, True], ids=["eval", "train"])
def test_deepen_preserves_the_function(train_mode):
    model = _tiny_adaptive()
    x = generate(32, seed=0)[0]
    _warm_batchnorm(model, x)
    before = _outputs(model, x, train=train_mode)
    params = count_parameters(model)
    model.deepen()
    assert model.blocks == (2, 2, 2) and model.arch_depth == 6
    assert count_parameters(model) > params
    after = _outputs(model, x, train=train_mode)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)


def test_widen_with_noise_changes_the_function_only_slightly():
    model = _tiny_adaptive()
    x = generate(32, seed=0)[0]
    _warm_batchnorm(model, x)
    before = _outputs(model, x, train=False)
    model.widen(8, noise_std=1e-3, generator=torch.Generator().manual_seed(1))
    after = _outputs(model, x, train=False)
    assert not torch.equal(after, before)
    torch.testing.assert_close(after, before, rtol=0.05, atol=0.05)


def test_widen_refuses_a_narrower_width():
    with pytest.raises(BadInput, match="new_width=4: expected more than the current width 4"):
        _tiny_adaptive().widen(4)


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (BaselineResNet, {"width": 0}, "width=0"),
        (BaselineResNet, {"blocks": ()}, "blocks=()"),
        (BaselineResNet, {"lr": 0}, "lr=0"),
        (ConstrainedResNet, {"decov_weight": -1}, "decov_weight=-1"),
        (AdaptiveResNet, {"width": 16, "max_width": 8}, "max_width=8"),
        (AdaptiveResNet, {"blocks": (2, 1), "max_blocks": 1}, "max_blocks=1"),
        (AdaptiveResNet, {"patience": 0}, "patience=0"),
        (AdaptiveResNet, {"growth": 1.0}, "growth=1.0"),
    ],
)
def test_constructors_refuse_bad_arguments(cls, kwargs, match):
    with pytest.raises(BadInput, match=match):
        cls(**kwargs)


def test_constrained_loss_is_cross_entropy_plus_aux_heads_plus_decov():
    torch.manual_seed(0)
    model = ConstrainedResNet(width=4, decov_weight=0.0, aux_weight=0.0)
    assert len(model.aux_heads) == 2  # on every stage but the last
    model.log = lambda *a, **k: None  # outside a Trainer
    x, y = generate(16, seed=0)
    model.train()
    with torch.no_grad():
        base = torch.nn.functional.cross_entropy(model(x), y)
        assert model.training_loss(x, y).item() == pytest.approx(base.item(), rel=1e-5)
        model.decov_weight, model.aux_weight = 1.0, 0.5
        hs = model.features(x)
        heads = zip(model.aux_heads, hs[:-1], strict=True)
        aux = sum(torch.nn.functional.cross_entropy(h(f), y) for h, f in heads)
        expected = base + 0.5 * aux / 2 + sum(decov_loss(h) for h in hs)
        assert model.training_loss(x, y).item() == pytest.approx(expected.item(), rel=1e-5)


class _Watch(pl.Callback):
    """At every training epoch start: the model's shape, whether the optimizer holds exactly the
    model's parameters, the learning rate, and the stem's Adam state (kept across growth)."""

    def __init__(self) -> None:
        self.epochs: list[dict] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        optimizer = trainer.optimizers[0]
        model_ids = {id(p) for p in pl_module.parameters()}
        opt_ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
        stem = pl_module.stem[0].weight
        self.epochs.append(
            {
                "shape": (pl_module.arch_width, pl_module.arch_depth),
                "live": model_ids == opt_ids,
                "lr": optimizer.param_groups[0]["lr"],
                "stem_state": optimizer.state.get(stem, {}).get("exp_avg"),
                "head": pl_module.head.weight.detach().clone(),
            }
        )


@pytest.mark.slow
def test_adaptive_grows_wider_then_deeper_and_keeps_training(tmp_path):
    pl.seed_everything(0, verbose=False)
    # min_delta larger than any improvement: every epoch after the first is a plateau
    model = _tiny_adaptive(width=4, max_width=8, max_blocks=2, min_delta=10.0)
    watch = _Watch()
    trainer = _trainer(tmp_path, 5, [watch])
    dm = ImagesDataModule(batch_size=64, sizes=TINY)
    trainer.fit(model, datamodule=dm)
    shapes = [e["shape"] for e in watch.epochs]
    # epoch 0 sets the best loss; then widen after epoch 1, deepen after 2, nothing left after 3
    assert shapes == [(4, 3), (4, 3), (8, 3), (8, 6), (8, 6)]
    assert [(e, k) for e, k, _, _ in model.growths] == [(1, "widen"), (2, "deepen")]
    assert all(e["live"] for e in watch.epochs)
    # the cosine schedule went on where it was: the rate of each epoch is the schedule's own
    base = 3e-3
    schedule = [base * (1 + torch.cos(torch.tensor(torch.pi * k / 5)).item()) / 2 for k in range(5)]
    assert [e["lr"] for e in watch.epochs] == pytest.approx(schedule, rel=1e-6)
    # the stem's Adam moments survived both rebuilds (same tensor, same shape)
    assert all(e["stem_state"] is not None for e in watch.epochs[1:])
    # training went on after the last growth
    assert not torch.equal(watch.epochs[-1]["head"], model.head.weight.detach())
    trainer.test(model, datamodule=dm, verbose=False)
    assert 0.0 <= trainer.callback_metrics["test_acc"].item() <= 1.0


@pytest.mark.slow
def test_a_grown_resnet_reloads_from_its_checkpoint(tmp_path):
    pl.seed_everything(0, verbose=False)
    model = _tiny_adaptive(max_width=8, max_blocks=2, min_delta=10.0)
    trainer = _trainer(tmp_path, 4)
    trainer.fit(model, datamodule=ImagesDataModule(batch_size=64, sizes=TINY))
    assert (model.arch_width, model.blocks) == (8, (2, 2, 2))
    path = tmp_path / "grown.ckpt"
    trainer.save_checkpoint(path)
    reloaded = AdaptiveResNet.load_from_checkpoint(path)
    assert (reloaded.arch_width, reloaded.blocks) == (8, (2, 2, 2))
    assert reloaded.growths == model.growths
    x = generate(16, seed=3)[0]
    torch.testing.assert_close(_outputs(reloaded, x, train=False), _outputs(model, x, train=False))


def test_registry_names_the_three_nets():
    expected = {
        "baseline": BaselineResNet,
        "constrained": ConstrainedResNet,
        "adaptive": AdaptiveResNet,
    }
    assert expected == IMAGE_MODELS


# ------------------------------------------------------------------------------ ledger, report


@pytest.mark.slow
def test_growth_is_recorded_in_the_ledger_snapshots(tmp_path):
    from lightning_callbacks import EnergyCallback
    from wattwise.ledger import Ledger

    pl.seed_everything(0, verbose=False)
    model = _tiny_adaptive(max_width=8, max_blocks=2, min_delta=10.0)
    with Ledger(tmp_path / "grow.db") as ledger:
        energy = EnergyCallback(ledger=ledger, architecture="adaptive", sample_hz=20)
        trainer = _trainer(tmp_path, 4, [energy])
        trainer.fit(model, datamodule=ImagesDataModule(batch_size=64, sizes=TINY))
        snaps = ledger.snapshots(energy.run_id).sort_values("epoch")
    shapes = [(m["arch/width"], m["arch/depth"]) for m in snaps["metrics"]]
    # each epoch's snapshot holds the shape that epoch trained
    assert shapes == [(4.0, 3.0), (4.0, 3.0), (8.0, 3.0), (8.0, 6.0)]
    params = snaps["trainable_params"].tolist()
    assert params[0] == params[1] < params[2] < params[3]
    assert (snaps["train_samples"] == TINY["train"]).all()


@pytest.mark.slow
def test_the_three_image_runs_in_one_report(tmp_path):
    import pandas as pd

    from wattwise.zoo.demo import run_demo

    notes = []
    result = run_demo(
        task="images",
        epochs=4,
        ledger=tmp_path / "demo.db",
        out_dir=tmp_path / "out",
        region="FRA",
        sizes=TINY,
        model_kwargs={
            "baseline": {"width": 4},
            "constrained": {"width": 4},
            "adaptive": {"width": 4, "max_width": 8, "max_blocks": 2, "min_delta": 10.0},
        },
        notice=notes.append,
    )
    assert result.task == "images" and result.sizes == TINY and notes == []
    assert result.device == "cpu" and result.generation_s > 0
    by_arch = {run.architecture: run for run in result.runs}
    assert sorted(by_arch) == ["adaptive", "baseline", "constrained"]
    grown = by_arch["adaptive"]
    assert (grown.width_start, grown.depth_start) == (4, 3)
    assert (grown.width_end, grown.depth_end) == (8, 6)
    assert by_arch["baseline"].params_start == by_arch["baseline"].params_end

    table = pd.read_csv(result.runs_csv).set_index("run_id")
    assert sorted(table["architecture"]) == ["adaptive", "baseline", "constrained"]
    assert (table["j_per_train_sample"] > 0).all()
    curves = table["wh_to_target_val"]
    # the best run reached the target (90 % of its own best) at or before its best epoch
    best_run = table["metric/val_acc"].idxmax()
    assert 0 < curves[best_run] <= table["total_wh"][best_run]
    html = (tmp_path / "out" / "report.html").read_text()
    for run in result.runs:
        assert run.run_id[:8] in html
    assert "Wh to val_acc ≥" in html and "wh_to_target_val" in html
    assert 'id="shape"' in html  # the width / depth against energy figure
    assert "4 → 8" in html and "3 → 6" in html  # the growth table's width and depth


def test_demo_refuses_an_unknown_task_before_importing_torch(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from wattwise.cli import main\n"
        f"rc = main(['demo', '--task', 'cifar', '--ledger', {str(tmp_path / 'x.db')!r}])\n"
        "print(rc, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["2", "False"]
    assert "'cifar'" in out.stderr and "digits, images" in out.stderr
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize(
    ("losses", "relative", "grows_after"),
    [
        # 2.3 -> 2.1 is 8.7 % better, 2.1 -> 2.05 only 2.4 %: a plateau at 5 %, not at 0.04
        ([2.3, 2.1, 2.05], True, [2]),
        ([2.3, 2.1, 2.05], False, []),
        ([2.3, 2.3, 2.0, 1.99], True, [1, 3]),
    ],
)
def test_plateau_by_relative_or_absolute_improvement(losses, relative, grows_after):
    model = _tiny_adaptive(min_delta=0.05 if relative else 0.04, relative=relative)
    grown, now = [], {}
    model.grow = lambda: grown.append(now["epoch"]) or True
    model.rebuild_optimizers = lambda: None
    for epoch, loss in enumerate(losses):
        now["epoch"] = epoch
        model.last_val_loss = loss
        model.on_train_epoch_end()
    assert grown == grows_after
