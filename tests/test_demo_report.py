"""What the report adds for the demo's comparison: energy to a target validation accuracy and
growth in width and depth against energy, from hand-made ledger runs with known numbers."""

from __future__ import annotations

import pandas as pd
import pytest

from wattwise import config
from wattwise.ledger import Ledger
from wattwise.report import build_report
from wattwise.report._data import TARGET_FRACTION
from wattwise.types import ArchSnapshot, DeviceInfo, PhaseEnergy
from wattwise.units import J_PER_WH

GPU = DeviceInfo("gpu:GPU-6c1d9a3e-0000-4000-8000-0000000000ab", "gpu", "NVIDIA H200", "counter")


def _record(ledger: Ledger, architecture: str, epochs: list[tuple[float, dict, int]]) -> str:
    """A run of ``epochs`` = [(energy_j, metrics, trainable_params)], one GPU row each."""
    run_id = ledger.begin_run(architecture=architecture, devices=[GPU])
    for epoch, (energy_j, metrics, params) in enumerate(epochs):
        phase = PhaseEnergy("train", epoch, GPU.device_id, "gpu", 0.0, 10.0, energy_j, "counter")
        ledger.add_phases(
            run_id,
            [phase],
            epoch=epoch,
            snapshot=ArchSnapshot(params, params, "M", architecture),
            epochs_completed=epoch + 1,
            metrics=metrics,
            train_samples=100,
        )
    ledger.finish_run(run_id, metrics=epochs[-1][1])
    return run_id


def _report(tmp_path, db) -> tuple[pd.DataFrame, str]:
    settings = config.load(env={}, cwd=tmp_path)
    result = build_report(db, out_dir=tmp_path / "out", region="FRA", settings=settings)
    return pd.read_csv(result.runs_csv).set_index("run_id"), result.html_path.read_text()


def test_wh_to_target_is_the_energy_to_the_first_epoch_at_the_target(tmp_path):
    db = tmp_path / "w.db"
    with Ledger(db) as ledger:
        # the best value any run reaches is 0.9: the target is 0.81
        a = _record(ledger, "a", [(3600.0, {"val_acc": v}, 10) for v in (0.5, 0.8, 0.9)])
        b = _record(ledger, "b", [(7200.0, {"val_acc": v}, 10) for v in (0.3, 0.85, 0.88)])
        c = _record(ledger, "c", [(1800.0, {"val_acc": v}, 10) for v in (0.2, 0.4)])
    table, html = _report(tmp_path, db)
    assert TARGET_FRACTION == 0.9
    assert table.loc[a, "wh_to_target_val"] == pytest.approx(3 * 3600.0 / J_PER_WH)  # epoch 2
    # b: epoch 1, not its best epoch 2
    assert table.loc[b, "wh_to_target_val"] == pytest.approx(2 * 7200.0 / J_PER_WH)
    assert pd.isna(table.loc[c, "wh_to_target_val"])  # never reached
    assert "Wh to val_acc ≥ 0.810" in html
    assert "not reached" in html
    assert f'never reached by <span title="{c}">c · {c[:8]}</span>' in html
    assert "90% of the best val_acc any run here reached (0.900)" in html


def test_no_target_for_a_lower_is_better_metric(tmp_path):
    db = tmp_path / "w.db"
    with Ledger(db) as ledger:
        _record(ledger, "a", [(3600.0, {"val_loss": v}, 10) for v in (0.5, 0.4)])
    table, html = _report(tmp_path, db)
    assert table["wh_to_target_val"].isna().all()
    assert "val_loss is lower-is-better" in html and "Wh to val_loss ≥" not in html


def test_growth_in_width_and_depth_is_drawn_against_energy(tmp_path):
    db = tmp_path / "w.db"
    with Ledger(db) as ledger:
        shapes = [(8, 3, 100), (8, 3, 100), (16, 3, 300), (16, 6, 500)]
        grown = _record(
            ledger,
            "adaptive",
            [(3600.0, {"val_acc": 0.5, "arch/width": w, "arch/depth": d}, p) for w, d, p in shapes],
        )
        fixed = _record(
            ledger, "baseline", [(3600.0, {"val_acc": 0.6, "arch/width": 8, "arch/depth": 3}, 90)]
        )
    _, html = _report(tmp_path, db)
    growth = html[html.index('<section id="growth">') :]
    growth = growth[: growth.index("</section>")]
    assert 'id="shape"' in growth and "<svg" in growth
    assert grown[:8] in growth and fixed[:8] not in growth  # only the run that grew
    assert "8 → 16" in growth and "3 → 6" in growth
