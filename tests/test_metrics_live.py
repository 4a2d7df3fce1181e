"""Live metrics against the real servers: Prometheus scrapes a running Lightning fit (the H200
trace replayed as its GPU), a Pushgateway receives its pushes, and neither a port in use nor a
gateway that is not there stops the fit.

The servers are Debian's ``prometheus`` and ``prometheus-pushgateway``, started here on free
localhost ports with their data in ``tmp_path`` (tests/prom_servers.py). No fixed sleeps: the
fit waits at each epoch end until Prometheus has scraped it (so several scrapes fall inside the
fit however loaded the machine is), and every other wait polls a condition.
"""

from __future__ import annotations

import itertools
import logging
import socket
import time

import pytest
import pytorch_lightning as pl
from prom_servers import (
    free_port,
    get_json,
    latest_scrape_s,
    prometheus,
    pushgateway,
    query,
    raw_series,
    sums_by_scrape,
    wait_for,
)
from test_callback import TinyModel, loader, replay, trainer  # noqa: F401

from lightning_callbacks import EnergyCallback
from wattwise.ledger import Ledger

pytestmark = pytest.mark.slow

ENERGY = "wattwise_energy_joules_total"
WAIT_S = 120.0  # generous: a loaded 2-core machine


class AfterEachEpoch(pl.Callback):
    """Runs ``check(epoch)`` at each training epoch end (after the EnergyCallback's commit)."""

    def __init__(self, check) -> None:
        self.check = check

    def on_train_epoch_end(self, trainer, pl_module):
        self.check(trainer.current_epoch)


@pytest.mark.usefixtures("replay")
def test_prometheus_scrapes_a_running_fit(tmp_path):
    port = free_port()
    with prometheus(f"127.0.0.1:{port}", tmp_path / "prometheus") as prom:
        cb = EnergyCallback(ledger=tmp_path / "w.db", metrics_port=f"127.0.0.1:{port}")

        def scraped_since_epoch_end(epoch: int) -> None:
            ended = time.time()
            wait_for(
                lambda: latest_scrape_s(prom, ENERGY) > ended,
                WAIT_S,
                f"a scrape after epoch {epoch}",
            )

        started = time.time()
        fit = trainer(tmp_path, [cb, AfterEachEpoch(scraped_since_epoch_end)], max_epochs=4)
        fit.fit(TinyModel(step_s=0.02), loader(), loader(16))
        ended = time.time()
        run = Ledger(tmp_path / "w.db").get_run(cb.run_id)
        assert run.status == "finished" and run.energy_j > 0
        # the final figures stay served after the fit: wait for a scrape of them
        wait_for(lambda: latest_scrape_s(prom, ENERGY) > ended, WAIT_S, "a scrape after the fit")
        selector = f'{ENERGY}{{run_id="{run.run_id}"}}'
        sums = sums_by_scrape(prom, selector)
        during = [total for stamp, total in sums if started < stamp < ended]
        assert len(during) >= 4, sums  # one scrape at least after each epoch end
        assert during[-1] > during[0] > 0, during  # it grows during the fit
        assert all(b >= a for a, b in itertools.pairwise(during)), during
        for values in raw_series(prom, selector):  # each series is a counter: never down
            assert all(b >= a for a, b in itertools.pairwise(values)), values
        final = [total for stamp, total in sums if stamp > ended]
        assert final[-1] == pytest.approx(run.energy_j, rel=0.01)
        # labels: every kind of device the run measured, by stage and method
        labels = [s["metric"] for s in query(prom, selector)]
        assert {m["kind"] for m in labels} == {"gpu", "cpu", "ram"}
        assert {"train", "validate", "other"} <= {m["stage"] for m in labels}
        assert {m["architecture"] for m in labels} == {"TinyModel"}


def _group(gateway: str, run_id: str) -> dict | None:
    for group in get_json(f"{gateway}/api/v1/metrics")["data"]:
        if group["labels"].get("run_id") == run_id and group["labels"].get("job") == "wattwise":
            return group
    return None


def _pushed_j(group: dict) -> float:
    return sum(float(m["value"]) for m in group[ENERGY]["metrics"])


@pytest.mark.usefixtures("replay")
def test_pushgateway_gets_each_epoch_and_the_end(tmp_path, monkeypatch):
    with pushgateway(tmp_path / "pushgateway") as gateway:
        monkeypatch.setenv("WATTWISE_PUSHGATEWAY", gateway.removeprefix("http://"))
        cb = EnergyCallback(ledger=tmp_path / "w.db")
        mid_fit: list[float] = []

        def pushed_after_epoch(epoch: int) -> None:
            if epoch == 1:  # epoch 0's push (or epoch 1's) is there before the fit ends
                group = wait_for(lambda: _group(gateway, cb.run_id), WAIT_S, "an epoch's push")
                mid_fit.append(_pushed_j(group))

        fit = trainer(tmp_path, [cb, AfterEachEpoch(pushed_after_epoch)], max_epochs=3)
        fit.fit(TinyModel(), loader(), loader(16))
        run = Ledger(tmp_path / "w.db").get_run(cb.run_id)
        group = _group(gateway, run.run_id)  # the final push waited for
        assert group is not None
        assert 0 < mid_fit[0] < _pushed_j(group)
        assert _pushed_j(group) == pytest.approx(run.energy_j, rel=0.01)
        info = group["wattwise_run_info"]["metrics"][0]["labels"]
        assert info["architecture"] == "TinyModel" and "user" in info and "job_id" in info


@pytest.mark.usefixtures("replay")
def test_a_gateway_that_is_not_there_is_one_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("WATTWISE_PUSHGATEWAY", f"127.0.0.1:{free_port()}")
    cb = EnergyCallback(ledger=tmp_path / "w.db")
    with caplog.at_level(logging.WARNING):
        trainer(tmp_path, [cb], max_epochs=3).fit(TinyModel(), loader(), loader(16))
    assert Ledger(tmp_path / "w.db").get_run(cb.run_id).status == "finished"
    pushes = [r for r in caplog.records if "Pushgateway" in r.getMessage()]
    assert len(pushes) == 1, [r.getMessage() for r in pushes]
    assert "callback_error" not in cb.summary["flags"]


@pytest.mark.usefixtures("replay")
def test_a_port_in_use_is_one_warning_and_the_fit_finishes(tmp_path, caplog):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cb = EnergyCallback(ledger=tmp_path / "w.db", metrics_port=f"127.0.0.1:{port}")
        with caplog.at_level(logging.WARNING):
            fit = trainer(tmp_path, [cb], max_epochs=2)
            fit.fit(TinyModel(), loader(), loader(16))
            fit.test(TinyModel(), loader(16))  # a second call: no second warning
    assert Ledger(tmp_path / "w.db").get_run(cb.run_id).status == "finished"
    refused = [r.getMessage() for r in caplog.records if "cannot listen" in r.getMessage()]
    assert len(refused) == 1 and f"127.0.0.1:{port}" in refused[0], refused
    assert cb.metrics_url is None


def test_a_meter_pushes_its_final_figures_and_nodes_keep_their_own_groups(tmp_path):
    from fakes import FakeSensor

    from wattwise import metrics
    from wattwise.meter import Meter

    with pushgateway(tmp_path / "pushgateway") as gateway:
        meter = Meter(
            ledger=tmp_path / "w.db",
            architecture="job",
            sensors=[FakeSensor(250.0, counter_period_s=0.1)],
            pushgateway=gateway,
        )
        with meter:
            wait_for(lambda: sum(meter.live()[0].values()) > 0, WAIT_S, "energy to accrue")
        group = _group(gateway, meter.run_id)  # stop() waited for its push
        assert group is not None
        assert _pushed_j(group) == pytest.approx(meter.result.energy_j, rel=1e-9)
        # the callback's exporter on node 1 of several: a group of its own beside node 0's
        for node in ("0", "1"):
            exporter = metrics.Exporter(gateway=gateway).start()
            exporter.push_group = {"node": node}
            exporter.attach(lambda: ({("cpu:machine", "train", "rapl"): 5.0}, {}), [])
            exporter.set_run("multi-node-run", "mlp")
            exporter.push(wait=True)
        groups = get_json(f"{gateway}/api/v1/metrics")["data"]
        nodes = {
            g["labels"].get("node") for g in groups if g["labels"]["run_id"] == "multi-node-run"
        }
        assert nodes == {"0", "1"}
