"""The reference zoo: data split, DeCov, Net2WiderNet widening, constrained and adaptive fits."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("pytorch_lightning")

from wattwise.errors import BadInput  # noqa: E402
from wattwise.zoo import (  # noqa: E402
    MODELS,
    AdaptiveMLP,
    BaselineMLP,
    ConstrainedMLP,
    build_datamodule,
    count_parameters,
    decov_loss,
    split_digits,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _trainer(tmp_path, epochs: int, callbacks=()) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=list(callbacks),
    )


def _mean_abs_correlation(model: BaselineMLP, x: torch.Tensor, layer: int) -> float:
    """Mean absolute off-diagonal correlation between the (non-constant) units of a hidden layer."""
    model.eval()
    with torch.no_grad():
        h = model.hidden_activations(x)[layer].numpy()
    live = h.std(axis=0) > 1e-8
    corr = np.corrcoef(h[:, live].T)
    return float(np.abs(corr[~np.eye(len(corr), dtype=bool)]).mean())


def test_registry_names_the_three_models():
    assert {
        "baseline": BaselineMLP,
        "constrained": ConstrainedMLP,
        "adaptive": AdaptiveMLP,
    } == MODELS


def test_split_is_deterministic_stratified_and_standardised():
    a = split_digits(seed=3)
    b = split_digits(seed=3)
    c = split_digits(seed=4)
    sizes = {name: len(y) for name, (_, y) in a.items()}
    assert sum(sizes.values()) == 1797  # every digit used once
    assert sizes["test"] == pytest.approx(0.2 * 1797, abs=1)
    assert sizes["val"] == pytest.approx(0.2 * 1797, abs=1)
    for name in a:
        np.testing.assert_array_equal(a[name][0], b[name][0])
        np.testing.assert_array_equal(a[name][1], b[name][1])
    assert not np.array_equal(a["train"][1], c["train"][1])
    x_train = a["train"][0]
    assert x_train.dtype == np.float32 and x_train.shape[1] == 64
    assert np.abs(x_train.mean(axis=0)).max() < 1e-5
    varying = x_train.std(axis=0) > 0
    np.testing.assert_allclose(x_train.std(axis=0)[varying], 1.0, rtol=1e-4)
    # Stratified: every class appears in every split.
    for _, y in a.values():
        assert set(np.unique(y)) == set(range(10))


@pytest.mark.parametrize(("val", "test"), [(0.0, 0.2), (0.2, 1.0), (0.6, 0.5)])
def test_bad_split_fractions_are_refused(val, test):
    with pytest.raises(BadInput, match="val_fraction"):
        split_digits(val_fraction=val, test_fraction=test)


def test_datamodule_loaders():
    dm = build_datamodule(batch_size=50, seed=0)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (50, 64) and y.dtype == torch.int64
    assert dm.train_dataloader().num_workers == 0
    first = [b[1] for b in dm.val_dataloader()]
    again = [b[1] for b in dm.val_dataloader()]
    assert all(torch.equal(p, q) for p, q in zip(first, again, strict=True))
    with pytest.raises(BadInput, match="batch_size=0"):
        build_datamodule(batch_size=0)


def test_decov_by_hand():
    # Units (1, 3) and (0, 2): centred (-1, 1) and (-1, 1); C = [[1, 1], [1, 1]] (divided by N=2).
    # ||C||_F^2 = 4, ||diag C||^2 = 2 -> 0.5 * (4 - 2) = 1.
    h = torch.tensor([[1.0, 0.0], [3.0, 2.0]])
    assert decov_loss(h).item() == pytest.approx(1.0)
    # Uncorrelated units: covariance diagonal, no penalty.
    assert decov_loss(
        torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])
    ).item() == (pytest.approx(0.0))


@pytest.mark.parametrize("layer_idx", [0, 1, 2])
def test_widen_preserves_the_function(layer_idx):
    torch.manual_seed(0)
    model = AdaptiveMLP(hidden=(8, 6, 5), max_width=64)
    x = torch.randn(200, 64)
    model.eval()
    before = model(x).detach()
    widths = list(model.widths)
    model.widen(layer_idx, widths[layer_idx] + 7, generator=torch.Generator().manual_seed(1))
    widths[layer_idx] += 7
    assert model.widths == tuple(widths)
    after = model(x).detach()
    assert (after - before).abs().max().item() < 1e-5
    # Parameters by hand: 64*w0+w0 + w0*w1+w1 + w1*w2+w2 + w2*10+10.
    w0, w1, w2 = widths
    assert count_parameters(model) == 65 * w0 + (w0 + 1) * w1 + (w1 + 1) * w2 + (w2 + 1) * 10


def test_widen_with_noise_changes_the_new_units_only_slightly():
    torch.manual_seed(0)
    model = AdaptiveMLP(hidden=(8, 8))
    x = torch.randn(100, 64)
    before = model(x).detach()
    old_rows = model.hidden_layers[0].weight.detach().clone()
    model.widen(0, 16, noise_std=1e-2, generator=torch.Generator().manual_seed(0))
    new_weight = model.hidden_layers[0].weight.detach()
    assert torch.equal(new_weight[:8], old_rows)  # the original units are untouched
    diff = (model(x).detach() - before).abs().max().item()
    assert 0 < diff < 0.5


def test_widen_splits_outgoing_weights_by_copy_count():
    model = AdaptiveMLP(hidden=(2,), max_width=8)
    head_before = model.head.weight.detach().clone()
    gen = torch.Generator().manual_seed(0)
    model.widen(0, 5, generator=gen)
    # Replay the generator to know which units were copied.
    source = torch.randint(2, (3,), generator=torch.Generator().manual_seed(0))
    mapping = torch.cat([torch.arange(2), source])
    counts = torch.bincount(mapping, minlength=2)
    for j, unit in enumerate(mapping.tolist()):
        torch.testing.assert_close(
            model.head.weight[:, j].detach(), head_before[:, unit] / counts[unit]
        )


@pytest.mark.parametrize(
    ("layer_idx", "new_width", "match"),
    [
        (2, 40, "layer_idx=2"),
        (-1, 40, "layer_idx=-1"),
        (0, 16, "new_width=16"),
        (0, 3, "new_width=3"),
    ],
)
def test_widen_refuses_bad_arguments(layer_idx, new_width, match):
    model = AdaptiveMLP(hidden=(16, 16))
    with pytest.raises(BadInput, match=match):
        model.widen(layer_idx, new_width)


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (BaselineMLP, {"hidden": ()}, "hidden"),
        (BaselineMLP, {"hidden": (8, 0)}, "hidden"),
        (BaselineMLP, {"lr": 0.0}, "lr=0.0"),
        (ConstrainedMLP, {"decov_weight": -1.0}, "decov_weight=-1.0"),
        (ConstrainedMLP, {"aux_weight": float("nan")}, "aux_weight=nan"),
        (AdaptiveMLP, {"max_width": 8}, "max_width=8"),
        (AdaptiveMLP, {"patience": 0}, "patience=0"),
        (AdaptiveMLP, {"growth": 1.0}, "growth=1.0"),
        (AdaptiveMLP, {"min_delta": -0.1}, "min_delta=-0.1"),
    ],
)
def test_constructors_refuse_bad_arguments(cls, kwargs, match):
    with pytest.raises(BadInput, match=match):
        cls(**kwargs)


def test_constrained_has_aux_heads_and_a_larger_loss():
    torch.manual_seed(0)
    plain = ConstrainedMLP(hidden=(16, 16, 16), decov_weight=0.0, aux_weight=0.0)
    assert len(plain.aux_heads) == 2  # every hidden layer but the last
    x, y = torch.randn(32, 64), torch.randint(10, (32,))
    base = torch.nn.functional.cross_entropy(plain(x), y)
    plain.log = lambda *a, **k: None  # outside a Trainer
    assert plain.training_loss(x, y).item() == pytest.approx(base.item())
    plain.decov_weight = 1.0
    hs = plain.hidden_activations(x)
    expected = base + sum(decov_loss(h) for h in hs)
    assert plain.training_loss(x, y).item() == pytest.approx(expected.item(), rel=1e-5)


def test_constrained_decorrelates_hidden_units(tmp_path):
    correlation = {}
    for name in ("baseline", "constrained"):
        pl.seed_everything(0, verbose=False)
        dm = build_datamodule(seed=0)
        model = MODELS[name]()
        _trainer(tmp_path, epochs=4).fit(model, datamodule=dm)
        x_val = dm.datasets["val"].tensors[0]
        correlation[name] = [_mean_abs_correlation(model, x_val, layer) for layer in (0, 1)]
    for base, constrained in zip(correlation["baseline"], correlation["constrained"], strict=True):
        assert constrained < 0.85 * base, correlation


class _OptimizerWatch(pl.Callback):
    """Records, at every training epoch start, the model's widths and whether the optimizer holds
    exactly the model's parameters; keeps a copy of the weights after the last widening."""

    def __init__(self) -> None:
        self.epochs: list[tuple[tuple[int, ...], bool]] = []
        self.first_after_growth: torch.Tensor | None = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        model_ids = {id(p) for p in pl_module.parameters()}
        opt_ids = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
        self.epochs.append((pl_module.widths, model_ids == opt_ids))
        if pl_module.widenings and pl_module.widenings[-1][0] == trainer.current_epoch - 1:
            self.first_after_growth = pl_module.hidden_layers[0].weight.detach().clone()


def test_adaptive_grows_during_a_fit_and_keeps_training(tmp_path):
    pl.seed_everything(0, verbose=False)
    # min_delta larger than any improvement: every epoch counts as a plateau.
    model = AdaptiveMLP(hidden=(8, 8), max_width=32, patience=1, min_delta=10.0)
    start = count_parameters(model)
    watch = _OptimizerWatch()
    trainer = _trainer(tmp_path, epochs=4, callbacks=[watch])
    trainer.fit(model, datamodule=build_datamodule(seed=0))
    # Epoch 0 sets the best loss; epochs 1 and 2 each double, epoch 3 finds max_width reached.
    assert [w for w, _ in watch.epochs] == [(8, 8), (8, 8), (16, 16), (32, 32)]
    assert [e for e, _ in model.widenings] == [1, 2]
    assert all(ok for _, ok in watch.epochs)  # the optimizer always holds the live parameters
    assert count_parameters(model) == 65 * 32 + 33 * 32 + 33 * 10 > start
    # Training went on with the widened parameters after the last growth.
    assert watch.first_after_growth is not None
    assert not torch.equal(watch.first_after_growth, model.hidden_layers[0].weight.detach())
    trainer.test(model, datamodule=build_datamodule(seed=0), verbose=False)
    assert trainer.callback_metrics["test_acc"].item() > 0.5


def test_adaptive_does_not_grow_while_improving(tmp_path):
    pl.seed_everything(0, verbose=False)
    model = AdaptiveMLP(hidden=(8, 8), patience=3, min_delta=0.0)
    _trainer(tmp_path, epochs=2).fit(model, datamodule=build_datamodule(seed=0))
    assert model.widenings == [] and model.widths == (8, 8)


def test_hyperparameters_are_saved_for_every_model():
    assert AdaptiveMLP(hidden=(8, 8), patience=3).hparams["patience"] == 3
    assert ConstrainedMLP(decov_weight=0.5).hparams["decov_weight"] == 0.5
    assert BaselineMLP(hidden=(4,)).hparams["hidden"] == (4,)


def test_a_grown_model_reloads_and_resumes_from_its_checkpoint(tmp_path):
    pl.seed_everything(0, verbose=False)
    model = AdaptiveMLP(hidden=(8, 8), max_width=32, patience=1, min_delta=10.0)
    trainer = _trainer(tmp_path, epochs=3)
    trainer.fit(model, datamodule=build_datamodule(seed=0))
    assert model.widths == (32, 32)  # grew after epochs 1 and 2
    path = tmp_path / "grown.ckpt"
    trainer.save_checkpoint(path)

    reloaded = AdaptiveMLP.load_from_checkpoint(path)
    assert reloaded.widths == (32, 32) and reloaded.widenings == model.widenings
    assert reloaded.epochs_without_improvement == model.epochs_without_improvement
    x = torch.randn(50, 64)
    model.eval()
    reloaded.eval()
    torch.testing.assert_close(reloaded(x), model(x))

    # Resume a fresh (narrow) model from the checkpoint: it takes the grown shape and trains on.
    pl.seed_everything(0, verbose=False)
    fresh = AdaptiveMLP(hidden=(8, 8), max_width=32, patience=1, min_delta=10.0)
    resumed = _trainer(tmp_path, epochs=4)
    resumed.fit(fresh, datamodule=build_datamodule(seed=0), ckpt_path=path)
    assert resumed.current_epoch == 4 and fresh.widths == (32, 32)
    assert not torch.equal(fresh.head.weight.detach(), reloaded.head.weight.detach())
