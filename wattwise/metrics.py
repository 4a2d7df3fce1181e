"""Live metrics for Prometheus: OpenMetrics served on ``http://HOST:PORT/metrics``, and pushed.

One :class:`Exporter` per measuring process (the Meter of ``wattwise run``, or EnergyCallback on
local rank 0: one endpoint per node). It owns its own ``CollectorRegistry`` (never the global
one) and one custom collector that, at scrape time, reads what the sampler already holds
(:meth:`wattwise.sampler.Sampler.live`: finalized phases plus the energy accrued in the phases
still open, and the newest power per device) under the sampler's lock: no sensor read, nothing
on the training thread. Metrics (the run's labels: ``run_id``, ``architecture``):

- ``wattwise_energy_joules_total{run_id,architecture,device,kind,stage,method}`` counter: device
  energy before PUE since the run began in this process; ``stage`` is the phase label (``train``,
  ``validate``, ``other``, ... or ``run`` for ``wattwise run``), ``method`` how it was measured.
  Counted up to each device's newest counter update (never the power-carried guess beyond it,
  which the next update may settle lower), so it lags by at most one update period and never
  exceeds the ledger's total; each series is also held at the highest value exported (a
  boundary inside an open phase may shift a little between stages when it settles).
- ``wattwise_power_watts{device,kind}`` gauge: the newest power reading per device.
- ``wattwise_run_info{run_id,architecture,job_id,user,region}`` = 1.
- ``wattwise_cost_usd_total{run_id,architecture,pricing}`` when a pricing scenario is set and
  ``wattwise_co2e_grams_total{run_id,architecture,region}`` when a region is set (argument or
  configuration), priced as EnergyCallback's logged ``cost/usd`` and ``carbon/gco2e``.

Push (``pushgateway``): the same metrics to a Pushgateway under ``job="wattwise"``, grouping key
``run_id``, on a background thread with a bounded timeout; a push asked for while one is in
flight is made once after it (never queued twice); failures are one warning.

``prometheus_client`` is imported only when an exporter starts (``import wattwise`` stays light).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
import time
import urllib.parse
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from wattwise.errors import BadInput
from wattwise.types import DeviceInfo
from wattwise.units import G_PER_KG

log = logging.getLogger(__name__)

DEFAULT_HOST = "0.0.0.0"
"""All interfaces, as node and DCGM exporters do: a cluster's Prometheus scrapes the node from
elsewhere. Give ``127.0.0.1:PORT`` to serve this machine only."""
DEFAULT_GATEWAY_PORT = 9091
PUSH_JOB = "wattwise"
PUSH_TIMEOUT_S = 5.0
"""Socket timeout of one push; the run's final push waits for at most this long."""
ENERGY = "wattwise_energy_joules"
POWER = "wattwise_power_watts"
RUN = "wattwise_run"
COST = "wattwise_cost_usd"
CO2E = "wattwise_co2e_grams"
METRIC_NAMES = (
    f"{ENERGY}_total",
    POWER,
    f"{RUN}_info",
    f"{COST}_total",
    f"{CO2E}_total",
)
"""The series names wattwise exports (as Prometheus stores them)."""

Key = tuple[str, str, str, str]
"""(device, kind, stage, method)"""


# --------------------------------------------------------------------- settings
def parse_endpoint(value: Any, what: str = "metrics_port") -> tuple[str, int]:
    """``(host, port)`` from ``PORT``, ``:PORT``, ``HOST:PORT`` or ``[IPv6]:PORT`` (an int or a
    string); port 0 asks the system for a free one. BadInput names the value otherwise."""
    accepted = (
        "a port 0-65535 (0: any free port), or HOST:PORT such as 127.0.0.1:9400 or [::1]:9400"
    )
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise BadInput(f"{what}={value!r} is not accepted; give {accepted}")
    text = str(value).strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host = DEFAULT_HOST
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:  # a bare IPv6 address without brackets is ambiguous
        raise BadInput(f"{what}={value!r} is not accepted; give {accepted}")
    host = host.strip() or DEFAULT_HOST
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535 or " " in host:
        raise BadInput(f"{what}={value!r} is not accepted; give {accepted}")
    return host, int(port_text)


def endpoint_text(host: str, port: int) -> str:
    """``HOST:PORT`` (``[HOST]:PORT`` for an IPv6 address)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_gateway(value: Any, what: str = "pushgateway") -> str:
    """The Pushgateway's URL from ``HOST:PORT`` or ``http(s)://HOST[:PORT]`` (default port
    9091). BadInput names the value otherwise."""
    accepted = "HOST:PORT of a Pushgateway, e.g. pushgw.example.org:9091 or http://HOST:PORT"
    if not isinstance(value, str) or not value.strip():
        raise BadInput(f"{what}={value!r} is not accepted; give {accepted}")
    text = value.strip()
    url = text if "://" in text else f"http://{text}"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or DEFAULT_GATEWAY_PORT
    except ValueError as err:
        raise BadInput(f"{what}={value!r} is not accepted ({err}); give {accepted}") from err
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise BadInput(f"{what}={value!r} is not accepted; give {accepted}")
    host = parts.hostname
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def scheduler_labels() -> dict[str, str]:
    """``user`` and ``job_id`` of the run_info series, as the ledger records them with the run
    (:func:`wattwise.scheduler.collect`: SLURM's job user, else the OS user; SLURM's job, else
    the Kubernetes pod, else the torchrun run id), "" where unknown."""
    from wattwise import scheduler

    found = scheduler.collect()
    return {key: str(found.get(key) or "") for key in ("user", "job_id")}


# --------------------------------------------------------------------- money
@dataclass(frozen=True)
class Money:
    """Cost and CO2e of a run's energy so far, worked out as EnergyCallback does for its logged
    ``cost/usd`` and ``carbon/gco2e``: :func:`wattwise.pricing.cost` and
    :func:`wattwise.carbon.co2e_kg` with the intensity in force when the run began."""

    scenario: str | None
    """Pricing scenario, when one is set (argument or configuration): cost is exported."""
    region: str | None
    """Region, when one is set: CO2e is exported."""
    settings: Any
    intensity: Any | None
    pue: float

    @classmethod
    def resolve(
        cls, region: str | None, scenario: str | None, pricing_set: bool, settings: Any
    ) -> Money:
        """``region``/``scenario`` in force (see ``_money_scenario``); raises what pricing and
        carbon raise for values they cannot use."""
        from wattwise import carbon

        scenario = scenario or "onprem"
        intensity = carbon.intensity(region, settings) if region is not None else None
        return cls(
            scenario=scenario if pricing_set else None,
            region=region,
            settings=settings,
            intensity=intensity,
            pue=carbon.pue(scenario, settings).value,
        )

    def cost_usd(self, energy_j: float, duration_s: float, devices: Iterable[DeviceInfo]) -> float:
        from wattwise import pricing

        gpu_name, n_gpus = pricing.priced_gpus(devices)
        return pricing.cost(
            energy_j,
            max(0.0, duration_s),
            scenario=self.scenario or "onprem",
            gpu_name=gpu_name,
            n_gpus=n_gpus,
            settings=self.settings,
        ).total_usd

    def co2e_g(self, energy_j: float) -> float:
        from wattwise import carbon

        return carbon.co2e_kg(energy_j, self.intensity, self.pue) * G_PER_KG


# --------------------------------------------------------------------- the exporter
LiveSource = Callable[[], tuple[Mapping[tuple[str, str, str], float], Mapping[str, float]]]
"""``Sampler.live``-shaped: ((device, stage, method) -> J, device -> W)."""


@dataclass
class _Attached:
    source: LiveSource
    names: dict[str, str]
    """device id in the source -> device label exported"""
    started_s: float


class Exporter:
    """Serves (``endpoint``) and/or pushes (``gateway``) one run's live figures."""

    def __init__(
        self,
        endpoint: tuple[str, int] | None = None,
        gateway: str | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoint = endpoint
        self.gateway = gateway
        self.url: str | None = None
        """``http://HOST:PORT/metrics`` once serving (the port the system chose for port 0)."""
        self.push_group: dict[str, str] = {}
        """Grouping-key labels pushed besides ``run_id`` (the callback's ``node`` on several)."""
        self.warnings: list[str] = []
        self._clock = clock
        self._lock = threading.Lock()
        self._run: dict[str, str] | None = None  # run_id, architecture, region
        self._money: Money | None = None
        self._attached: _Attached | None = None
        self._base: dict[Key, float] = {}  # detached sources and other ranks, this run
        self._base_duration_s = 0.0
        self._devices: dict[str, DeviceInfo] = {}
        self._power: dict[str, tuple[str, float]] = {}  # other ranks: device -> (kind, W)
        self._exported: dict[tuple[str, ...], float] = {}  # monotone hold, this run
        self._seen: dict[tuple[int, int, str], float] = {}  # other ranks' provisional phases
        self._owner: dict[str, int] = {}  # other ranks' GPUs: the rank that counts each
        self._own: set[str] = set()  # devices of every source attached (counted live)
        self._registry: Any = None
        self._server: Any = None
        self._push_thread: threading.Thread | None = None
        self._push_again = False
        self._push_lock = threading.Lock()
        self._finalizer: weakref.finalize | None = None

    # ---- life cycle ------------------------------------------------------------------------
    def start(self) -> Exporter:
        """Build the registry and serve it (a port that cannot be bound: one warning)."""
        if self._registry is not None:
            return self
        from prometheus_client import CollectorRegistry

        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_Collector(weakref.ref(self)))
        if self.endpoint is not None:
            self._serve(*self.endpoint)
        return self

    def _serve(self, host: str, port: int) -> None:
        from wsgiref.simple_server import WSGIRequestHandler, make_server

        from prometheus_client import make_wsgi_app
        from prometheus_client.exposition import ThreadingWSGIServer

        class Quiet(WSGIRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # no access log on stderr
                pass

        family = _address_family(host)

        class Server(ThreadingWSGIServer):
            address_family = family

        try:
            server = make_server(
                host, port, make_wsgi_app(self._registry), Server, handler_class=Quiet
            )
        except (OSError, OverflowError) as err:
            self._warn(
                f"live metrics not served: cannot listen on {endpoint_text(host, port)} ({err}); "
                "training goes on (pick another port with metrics_port / WATTWISE_METRICS_PORT)"
            )
            return
        thread = threading.Thread(target=server.serve_forever, name="wattwise-metrics", daemon=True)
        thread.start()
        self._server = server
        self._finalizer = weakref.finalize(self, _shutdown, server, thread)
        bound = server.server_address[1]
        shown = host if host not in ("0.0.0.0", "::") else "127.0.0.1"
        self.url = f"http://{endpoint_text(shown, bound)}/metrics"
        log.info("wattwise: live metrics on %s", self.url)

    def close(self) -> None:
        """Stop serving (idempotent); a push in flight is left to finish on its own."""
        if self._finalizer is not None:
            self._finalizer()

    # ---- what is exported ------------------------------------------------------------------
    def set_run(
        self,
        run_id: str | None,
        architecture: str,
        *,
        region: str | None = None,
        money: Money | None = None,
        earlier: Callable[[], tuple[Mapping[Key, float], float]] | None = None,
    ) -> None:
        """The run the figures belong to. A different run id starts its series from what
        ``earlier()`` returns (energy by key and seconds a resumed run had before this
        process), else from zero: what was measured before (e.g. a call that opened no run)
        is not that run's. The same run id again (fit, then test) goes on counting."""
        run_id = run_id or str(uuid.uuid4())
        if self._run is None or self._run["run_id"] != run_id:
            before, before_s = earlier() if earlier is not None else ({}, 0.0)
        with self._lock:
            if self._run is None or self._run["run_id"] != run_id:
                self._base, self._exported = dict(before), {}
                self._base_duration_s = before_s
                self._seen, self._power = {}, {}
            self._run = {
                "run_id": run_id,
                "architecture": architecture,
                "region": region or "",
                **scheduler_labels(),
            }
            self._money = money

    @property
    def run_id(self) -> str | None:
        return None if self._run is None else self._run["run_id"]

    def attach(
        self,
        source: LiveSource,
        devices: Sequence[DeviceInfo],
        rename: Callable[[DeviceInfo], str] | None = None,
    ) -> None:
        """Read ``source`` at each scrape from now on (its devices' ids passed through
        ``rename``, e.g. the callback's ``@node<k>`` for host devices of node k > 0)."""
        with self._lock:
            self._fold()
            names = {}
            for d in devices:
                names[d.device_id] = name = rename(d) if rename is not None else d.device_id
                self._devices[name] = d
                self._own.add(name)
            self._attached = _Attached(source, names, self._clock())

    def detach(self) -> None:
        """Keep the attached source's figures as they are now and stop reading it (its Meter
        stopped: every phase is final)."""
        with self._lock:
            self._fold()

    def _fold(self) -> None:
        a = self._attached
        if a is None:
            return
        for key, joules in self._read(a)[0].items():
            self._base[key] = self._base.get(key, 0.0) + joules
        self._base_duration_s += self._clock() - a.started_s
        self._attached = None

    def _read(self, a: _Attached) -> tuple[dict[Key, float], dict[str, tuple[str, float]]]:
        energy, power = a.source()
        out: dict[Key, float] = {}
        for (device, stage, method), joules in energy.items():
            name = a.names.get(device, device)
            kind = self._devices[name].kind if name in self._devices else ""
            key = (name, kind, stage, method)
            out[key] = out.get(key, 0.0) + joules
        watts = {}
        for device, w in power.items():
            name = a.names.get(device, device)
            watts[name] = (self._devices[name].kind if name in self._devices else "", w)
        return out, watts

    def add_phase(
        self,
        rank: int,
        device: DeviceInfo,
        index: int,
        stage: str,
        method: str,
        energy_j: float,
        power_w: float | None,
    ) -> None:
        """A phase another process measured (another local rank's GPU), counted once: a phase
        sent again (provisional, then final) adds only its difference."""
        with self._lock:
            if (
                device.device_id in self._own
                or self._owner.setdefault(device.device_id, rank) != rank
            ):
                return  # a GPU two ranks measure: counted once, as the callback counts it
            key = (rank, index, device.device_id)
            delta = energy_j - self._seen.get(key, 0.0)
            self._seen[key] = energy_j
            self._devices.setdefault(device.device_id, device)
            k = (device.device_id, device.kind, stage, method)
            self._base[k] = self._base.get(k, 0.0) + delta
            if power_w is not None:
                self._power[device.device_id] = (device.kind, power_w)

    def snapshot(self) -> dict[str, Any]:
        """What a scrape exports now: energy by key (held monotone), power, cost, CO2e."""
        with self._lock:
            if self._run is None:
                return {}
            totals = dict(self._base)
            power = dict(self._power)
            duration_s = self._base_duration_s
            if self._attached is not None:
                energy, watts = self._read(self._attached)
                for key, joules in energy.items():
                    totals[key] = totals.get(key, 0.0) + joules
                power.update(watts)
                duration_s += self._clock() - self._attached.started_s
            energy_out = {}
            for key, joules in totals.items():
                held = max(self._exported.get(key, 0.0), joules)
                self._exported[key] = energy_out[key] = held
            total_j = sum(totals.values())
            out: dict[str, Any] = {"run": dict(self._run), "energy": energy_out, "power": power}
            money = self._money
            if money is not None and money.scenario is not None:
                try:
                    usd = money.cost_usd(total_j, duration_s, list(self._devices.values()))
                except Exception as err:  # e.g. a GPU the price table lacks: no cost series
                    self._warn(f"live metrics: no cost ({type(err).__name__}: {err})")
                else:
                    out["cost_usd"] = (money.scenario, self._hold(("cost",), usd))
            if money is not None and money.region is not None:
                out["co2e_g"] = (money.region, self._hold(("co2e",), money.co2e_g(total_j)))
            return out

    def _hold(self, key: tuple[str, ...], value: float) -> float:
        held = max(self._exported.get(key, 0.0), value if math.isfinite(value) else 0.0)
        self._exported[key] = held
        return held

    # ---- push ------------------------------------------------------------------------------
    def push(self, *, wait: bool = False) -> None:
        """Push to the gateway on a background thread; never blocks unless ``wait`` (the run's
        end: at most twice :data:`PUSH_TIMEOUT_S`, a push in flight and this one). A push asked
        for while one is in flight is made once after it, with the figures of that moment."""
        if self.gateway is None or self._registry is None or self.run_id is None:
            return
        with self._push_lock:
            thread = self._push_thread
            if thread is not None and thread.is_alive():
                self._push_again = True
            else:
                thread = threading.Thread(target=self._push_loop, name="wattwise-push", daemon=True)
                self._push_thread = thread
                thread.start()
        if wait:
            thread.join(timeout=2 * PUSH_TIMEOUT_S)

    def _push_loop(self) -> None:
        from prometheus_client import push_to_gateway

        while True:
            run_id = self.run_id
            try:
                push_to_gateway(
                    self.gateway,
                    job=PUSH_JOB,
                    registry=self._registry,
                    grouping_key={"run_id": run_id, **self.push_group},
                    timeout=PUSH_TIMEOUT_S,
                )
            except Exception as err:  # unreachable, refused, timed out: training goes on
                self._warn(
                    f"push to the Pushgateway {self.gateway} failed ({type(err).__name__}: "
                    f"{err}); training goes on, later pushes are tried without further warning"
                )
            with self._push_lock:
                if not self._push_again:
                    return
                self._push_again = False

    def _warn(self, message: str) -> None:
        if message.split(" (")[0] in (w.split(" (")[0] for w in self.warnings):
            return
        self.warnings.append(message)
        log.warning("wattwise: %s", message)


def _address_family(host: str) -> int:
    import socket

    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:  # a host name: what it resolves to first
        try:
            return socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][0]
        except OSError:
            return socket.AF_INET  # binding fails with its own message


def _shutdown(server: Any, thread: threading.Thread) -> None:
    """Stop a server (from the finalizer or close()); never from its own thread, which would
    wait for itself."""
    if threading.current_thread() is thread:
        threading.Thread(target=_shutdown, args=(server, thread), daemon=True).start()
        return
    server.shutdown()
    server.server_close()


class _Collector:
    """prometheus_client custom collector: builds the families from ``Exporter.snapshot``."""

    def __init__(self, ref: weakref.ref[Exporter]) -> None:
        self._ref = ref

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            InfoMetricFamily,
        )

        exporter = self._ref()
        if exporter is None:
            return
        snap = exporter.snapshot()
        del exporter
        if not snap:
            return
        run = snap["run"]
        ids = [run["run_id"], run["architecture"]]
        energy = CounterMetricFamily(
            ENERGY,
            "Device energy before PUE since the run began in this process (J)",
            labels=["run_id", "architecture", "device", "kind", "stage", "method"],
            unit="joules",
        )
        for (device, kind, stage, method), joules in sorted(snap["energy"].items()):
            energy.add_metric([*ids, device, kind, stage, method], joules)
        yield energy
        power = GaugeMetricFamily(
            POWER, "Newest power reading per device (W)", labels=["device", "kind"], unit="watts"
        )
        for device, (kind, watts) in sorted(snap["power"].items()):
            power.add_metric([device, kind], watts)
        yield power
        info = InfoMetricFamily(RUN, "The run measured", labels=["run_id", "architecture"])
        info.add_metric(ids, {k: run[k] for k in ("job_id", "user", "region")})
        yield info
        if "cost_usd" in snap:
            scenario, usd = snap["cost_usd"]
            cost = CounterMetricFamily(
                COST, "Cost of the run so far (USD)", labels=["run_id", "architecture", "pricing"]
            )
            cost.add_metric([*ids, scenario], usd)
            yield cost
        if "co2e_g" in snap:
            region, grams = snap["co2e_g"]
            co2e = CounterMetricFamily(
                CO2E,
                "CO2e of the run so far, PUE included (g)",
                labels=["run_id", "architecture", "region"],
                unit="grams",
            )
            co2e.add_metric([*ids, region], grams)
            yield co2e
