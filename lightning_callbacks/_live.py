"""EnergyCallback's live metrics (``metrics_port`` / ``pushgateway``): one endpoint per node.

Local rank 0 of each node serves what its own Meter holds, read at scrape time (the host and
the GPUs no rank trains on, or its own CUDA GPU), plus the GPUs of the node's other local
ranks as their phases arrive with each epoch's gather (those advance at epoch ends, not
live). A resumed run's series go on from its rows in the ledger. The exporter lives as long
as the callback in this process, across its Trainer calls, so a run's series keep growing
from fit to test, and its final figures stay served after the fit; it is never part of the
callback's picklable state. Every function here is called through the callback's
``_guard``: a failure is a warning, never an exception in training.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from wattwise import metrics


def check(metrics_port: Any, pushgateway: Any) -> tuple[str | None, str | None]:
    """The constructor's arguments, normalised (BadInput names a value that cannot be used)."""
    endpoint = None
    if metrics_port is not None:
        endpoint = metrics.endpoint_text(*metrics.parse_endpoint(metrics_port, "metrics_port"))
    gateway = None if pushgateway is None else metrics.parse_gateway(pushgateway, "pushgateway")
    return endpoint, gateway


def attach(cb: Any, trainer: Any, meter: Any) -> None:
    """On local rank 0: start the node's exporter (once per callback and process) if an
    endpoint or a gateway is set (argument, else ``WATTWISE_METRICS_PORT`` /
    ``WATTWISE_PUSHGATEWAY`` / wattwise.toml), and read ``meter`` from now on."""
    if int(trainer.local_rank) != 0:
        return
    if cb._metrics is None:
        endpoint, gateway = cb.metrics_port, cb.pushgateway
        if endpoint is None or gateway is None:
            from wattwise import config

            settings = cb._config = cb._config or config.load()
            endpoint = endpoint or settings.get("metrics_port")
            gateway = gateway or settings.get("pushgateway")
        if endpoint is None and gateway is None:
            return
        where = None if endpoint is None else metrics.parse_endpoint(endpoint)
        cb._metrics = metrics.Exporter(where, gateway).start()  # port in use: one warning
        if int(trainer.num_nodes) > 1:  # each node's push its own group, not the last one's
            cb._metrics.push_group = {"node": str(int(trainer.node_rank))}
    node = int(trainer.node_rank)
    from lightning_callbacks.energy import _node_device_id

    cb._metrics.attach(
        meter.live, meter.devices, lambda d: _node_device_id(d.device_id, d.kind, node)
    )


def set_run(cb: Any, trainer: Any, pl_module: Any) -> None:
    """The run's labels and money, once its id is known (priced as the callback prices)."""
    if cb._metrics is None:
        return
    from lightning_callbacks.energy import _money_scenario
    from wattwise import config

    settings = cb._config = cb._config or config.load()
    region, scenario = _money_scenario(cb.region, cb.pricing, settings)
    pricing_set = cb.pricing is not None or settings.source("pricing") != "default"
    try:
        money = metrics.Money.resolve(region, scenario, pricing_set, settings)
    except Exception as err:  # a region or scenario that cannot be used: series without money
        cb._warn_once(f"wattwise: live metrics without cost and CO2e: {err}")
        money = None
    # a resumed run (its totals restored): its series go on from the ledger's rows, so they
    # end at the run's total; on one node only (rank 0 reads every node's rows)
    earlier = None
    if cb._global_zero and int(trainer.num_nodes) == 1 and cb.energy_j > 0:
        earlier = functools.partial(_ledger_figures, cb)
    cb._metrics.set_run(
        cb.run_id, cb._architecture(pl_module), region=region, money=money, earlier=earlier
    )


def _ledger_figures(cb: Any) -> tuple[dict[tuple[str, str, str, str], float], float]:
    """The run's energy in the ledger by (device, kind, stage, method), and its duration."""
    rows = cb._open_ledger().phases(cb.run_id)
    energy: dict[tuple[str, str, str, str], float] = {}
    for r in rows.itertuples(index=False):
        key = (r.device_id, r.kind, r.stage, r.method)
        energy[key] = energy.get(key, 0.0) + float(r.energy_j)
    return energy, cb.duration_s


def note(cb: Any, trainer: Any, reports: Sequence[Any]) -> None:
    """Phases of the node's other local ranks (their own GPUs), from the epoch's gather."""
    if cb._metrics is None:
        return
    me, node = int(trainer.global_rank), int(trainer.node_rank)
    own = {d.device_id for d in cb._meter.devices} if cb._meter is not None else set()
    for rank, report in enumerate(reports):
        if report is None or rank == me or report.node_rank != node:
            continue
        devices = {d.device_id: d for d in report.devices if d.device_id not in own}
        for entry in report.phases:
            p = entry.phase
            if p.device_id in devices:
                cb._metrics.add_phase(
                    rank,
                    devices[p.device_id],
                    p.index,
                    p.name,
                    p.method,
                    p.energy_j,
                    p.mean_power_w,
                )


def push(cb: Any, *, final: bool = False) -> None:
    """Push the node's figures (epoch end; ``final``: the call's end, after its last phases)."""
    if cb._metrics is None:
        return
    if final:
        cb._metrics.detach()
    cb._metrics.push(wait=final)
