"""Live metrics without a Prometheus server: settings, the sampler's live figures, the exporter's
counters and pushes, what the endpoint serves, the CLI, and the Grafana dashboard's queries.

(tests/test_metrics_live.py runs them against real Prometheus and Pushgateway servers.)
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import pathlib
import re
import socket
import subprocess
import sys
import threading
import urllib.request

import pytest
from fakes import FakeClock, FakeSensor
from prom_servers import free_port, wait_for
from test_sampler import run_until

from wattwise import config, metrics
from wattwise.cli import main
from wattwise.errors import BadInput, ConfigError
from wattwise.ledger import Ledger
from wattwise.meter import Meter
from wattwise.sampler import Sampler
from wattwise.types import DeviceInfo

GPU = "gpu:GPU-00000000-0000-0000-0000-000000000000"
DASHBOARD = pathlib.Path(__file__).parent.parent / "docs" / "grafana-dashboard.json"


# --------------------------------------------------------------------- settings
@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (9400, ("0.0.0.0", 9400)),
        ("9400", ("0.0.0.0", 9400)),
        (":9400", ("0.0.0.0", 9400)),
        ("127.0.0.1:9400", ("127.0.0.1", 9400)),
        ("[::1]:0", ("::1", 0)),
        ("node-7.cluster:65535", ("node-7.cluster", 65535)),
    ],
)
def test_endpoints_accepted(given, expected):
    assert metrics.parse_endpoint(given) == expected


@pytest.mark.parametrize(
    "given", [True, -1, 65536, 9.5, "", "abc", "host:", "::1:9400", "1.2.3.4:99999", "a b:1"]
)
def test_bad_endpoints_are_refused_naming_the_value(given):
    with pytest.raises(BadInput, match=re.escape(repr(given))) as err:
        metrics.parse_endpoint(given, "metrics_port")
    assert "HOST:PORT" in str(err.value)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("pushgw:9091", "http://pushgw:9091"),
        ("pushgw", "http://pushgw:9091"),
        ("https://pushgw.example.org/base/", "https://pushgw.example.org:9091/base"),
        ("[::1]:19091", "http://[::1]:19091"),
    ],
)
def test_gateways_accepted(given, expected):
    assert metrics.parse_gateway(given) == expected


@pytest.mark.parametrize("given", ["", "ftp://pushgw:9091", "pushgw:port", "http://:9091", 9091])
def test_bad_gateways_are_refused_naming_the_value(given):
    with pytest.raises(BadInput, match=re.escape(repr(given))):
        metrics.parse_gateway(given)


def test_settings_come_from_the_environment_or_the_file(tmp_path):
    (tmp_path / "wattwise.toml").write_text('metrics_port = 9400\npushgateway = "gw:9091"\n')
    from_file = config.load(cwd=tmp_path, env={})
    assert from_file.get("metrics_port") == "0.0.0.0:9400"
    assert from_file.get("pushgateway") == "http://gw:9091"
    assert from_file.source("metrics_port").startswith("file:")
    env = {"WATTWISE_METRICS_PORT": "127.0.0.1:9500", "WATTWISE_PUSHGATEWAY": "other:1"}
    from_env = config.load(cwd=tmp_path, env=env)
    assert from_env.get("metrics_port") == "127.0.0.1:9500"
    assert from_env.source("metrics_port") == "env:WATTWISE_METRICS_PORT"
    assert from_env.source("pushgateway") == "env:WATTWISE_PUSHGATEWAY"
    assert config.load(cwd=tmp_path / "none", env={}).get("metrics_port") is None
    with pytest.raises(ConfigError, match=r"WATTWISE_METRICS_PORT.*'70000'"):
        config.load(cwd=tmp_path, env={"WATTWISE_METRICS_PORT": "70000"})


# --------------------------------------------------------------------- the sampler's figures
def test_live_energy_grows_inside_an_open_phase_and_ends_equal_to_the_phases():
    clock = FakeClock(10.0)
    gpu = FakeSensor([(0.0, 100.0), (11.0, 300.0)], counter_period_s=0.1)
    cpu = FakeSensor(20.0, device_id="cpu:machine", kind="cpu", counter=False)
    sampler = Sampler([gpu, cpu], [*gpu.open(), *cpu.open()], clock=clock)
    run_until(sampler, clock, 10.45, [(10.0, "train")])
    early, power = sampler.live()
    # nothing is finalized yet: what is there is the phase in flight, the GPU up to its newest
    # counter update read (counter reads are sparse: 1/s), the CPU up to its newest reading
    assert 0 < early[(GPU, "train", "counter")] <= gpu.energy_between(10.0, 10.45)
    assert early[("cpu:machine", "train", "power")] == pytest.approx(8.0, abs=20.0 * 0.1)
    assert power == {GPU: 100.0, "cpu:machine": 20.0}
    run_until(sampler, clock, 11.95, [(11.5, "validate")])
    later, power = sampler.live()
    assert later[(GPU, "train", "counter")] > early[(GPU, "train", "counter")]
    assert (GPU, "validate", "counter") in later and power[GPU] == 300.0
    run_until(sampler, clock, 12.5, [(12.5, "_end")])
    phases = sampler.collect(timeout_s=0)
    final, _ = sampler.live(exclude=("_end",))
    by_key: dict = {}
    for p in phases:
        by_key[(p.device_id, p.name, p.method)] = by_key.get((p.device_id, p.name, p.method), 0)
        by_key[(p.device_id, p.name, p.method)] += p.energy_j
    assert final == pytest.approx(by_key, rel=1e-12)
    assert final[(GPU, "train", "counter")] == pytest.approx(gpu.energy_between(10.0, 11.5))
    assert final[(GPU, "validate", "counter")] == pytest.approx(gpu.energy_between(11.5, 12.5))


class _HighPowerReading(FakeSensor):
    """A GPU whose power reading says twice what its counter counts (an instant reading caught
    on spikes): the energy carried on with power past the counter's newest update overshoots."""

    def read(self, t_s, *, counter):
        return [
            dataclasses.replace(s, power_w=2 * s.power_w)
            for s in super().read(t_s, counter=counter)
        ]


def test_live_energy_never_runs_ahead_of_what_the_counter_settles_to():
    clock = FakeClock(10.0)
    gpu = _HighPowerReading(100.0, counter_period_s=1.0, counter_always=True)
    sampler = Sampler([gpu], gpu.open(), clock=clock)
    seen = []
    for until in (10.5, 10.95, 11.5, 11.95, 12.5, 12.95):
        run_until(sampler, clock, until, [(10.0, "train")] if until == 10.5 else [])
        seen.append(sum(sampler.live()[0].values()))
    run_until(sampler, clock, 13.5, [(13.0, "_end")])
    sampler.collect(timeout_s=0)
    final = sum(sampler.live(exclude=("_end",))[0].values())
    assert final == pytest.approx(gpu.energy_between(10.0, 13.0))
    # counted to the newest counter update only (the power-carried guess said up to 390 J)
    assert all(a <= b for a, b in itertools.pairwise(seen)) and seen[-1] <= final
    assert seen[-1] == pytest.approx(gpu.energy_between(10.0, 12.0))


# --------------------------------------------------------------------- the exporter
def _device(device_id: str, kind: str = "gpu", name: str = "Fake") -> DeviceInfo:
    return DeviceInfo(device_id, kind, name, "counter")


class Scripted:
    """A live source returning the next of ``values`` (J of one GPU in 'train') per call."""

    def __init__(self, *values: float) -> None:
        self.values = list(values)
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return {(GPU, "train", "counter"): self.values.pop(0)}, {GPU: 250.0}


def test_counters_never_go_down_and_a_new_run_starts_from_zero():
    clock = FakeClock()
    exporter = metrics.Exporter(clock=clock)
    source = Scripted(100.0, 90.0, 120.0, 5.0, 7.0)
    exporter.attach(source, [_device(GPU)])
    assert exporter.snapshot() == {}  # no run yet: nothing exported (and nothing read)
    exporter.set_run("run-1", "mlp")
    key = (GPU, "gpu", "train", "counter")
    # an open phase settling a little lower when the counter arrives: held at its highest
    assert [exporter.snapshot()["energy"][key] for _ in range(3)] == [100.0, 100.0, 120.0]
    exporter.set_run("run-1", "mlp")  # the same run again (e.g. test after fit): kept
    assert exporter.snapshot()["energy"][key] == 120.0
    exporter.set_run("run-2", "mlp")
    assert exporter.snapshot()["energy"][key] == 7.0  # source read twice: 5 then 7


def test_a_detached_meter_keeps_its_figures_and_is_not_read_again():
    clock = FakeClock()
    exporter = metrics.Exporter(clock=clock)
    exporter.set_run("run-1", "mlp")
    first = Scripted(40.0)
    exporter.attach(first, [_device(GPU)])
    clock.advance(10.0)
    exporter.detach()  # read once more, then never
    second = Scripted(2.0, 3.0)
    exporter.attach(second, [_device(GPU)])  # the next Trainer call's Meter
    clock.advance(5.0)
    snap = exporter.snapshot()
    assert first.calls == 1 and snap["energy"][(GPU, "gpu", "train", "counter")] == 42.0
    assert snap["power"] == {GPU: ("gpu", 250.0)}


def test_other_ranks_phases_count_their_final_figures_once():
    exporter = metrics.Exporter()
    exporter.set_run("run-1", "mlp")
    other = _device("gpu:GPU-11111111-0000-0000-0000-000000000000")
    exporter.add_phase(1, other, 3, "train", "counter", 50.0, 200.0)  # provisional
    exporter.add_phase(1, other, 3, "train", "counter", 52.0, 200.0)  # settled: +2 J
    exporter.add_phase(1, other, 4, "train", "counter", 10.0, 210.0)
    exporter.add_phase(2, other, 4, "train", "counter", 10.0, 210.0)  # rank 2, same GPU
    exporter.attach(Scripted(1.0), [_device(GPU)])  # this process's own GPU: counted live
    exporter.add_phase(1, _device(GPU), 4, "train", "counter", 99.0, 210.0)
    snap = exporter.snapshot()
    assert snap["energy"] == {
        (other.device_id, "gpu", "train", "counter"): 62.0,
        (GPU, "gpu", "train", "counter"): 1.0,
    }
    assert snap["power"] == {other.device_id: ("gpu", 210.0), GPU: ("gpu", 250.0)}


def test_money_is_exported_only_where_set(settings):
    exporter = metrics.Exporter()
    exporter.attach(Scripted(3.6e6, 3.6e6, 3.6e6), [_device("cpu:machine", "cpu")])
    money = metrics.Money.resolve("FRA", "onprem", False, settings)
    exporter.set_run("run-1", "mlp", region="FRA", money=money)
    snap = exporter.snapshot()
    assert "cost_usd" not in snap  # no pricing set: as the callback's cost/usd log
    region, grams = snap["co2e_g"]
    assert region == "FRA" and grams == pytest.approx(money.co2e_g(3.6e6)) and grams > 0
    priced = metrics.Money.resolve(None, "onprem", True, settings)
    exporter.set_run("run-2", "mlp", money=priced)
    scenario, usd = exporter.snapshot()["cost_usd"]
    assert scenario == "onprem" and usd > 0 and "co2e_g" not in exporter.snapshot()


class HangingGateway:
    """A server that accepts pushes and answers none until ``release`` is set."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        self.release = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self.release.wait()
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


def test_a_push_in_flight_is_never_waited_for_nor_queued_twice():
    gateway = HangingGateway()
    exporter = metrics.Exporter(gateway=gateway.address).start()
    exporter.attach(Scripted(*range(1, 20)), [_device(GPU)])
    exporter.set_run("run-1", "mlp")
    exporter.push()
    wait_for(lambda: gateway.connections == 1, 60, "the first push to connect")
    for _ in range(5):  # epoch ends while the first push hangs: each returns at once
        exporter.push()
    assert not gateway.release.is_set() and gateway.connections == 1
    gateway.release.set()
    wait_for(lambda: not exporter._push_thread.is_alive(), 60, "the pushes to end")
    assert gateway.connections == 2  # the one in flight, then one more with newer figures
    assert exporter.warnings == []
    gateway.sock.close()


# --------------------------------------------------------------------- the endpoint
def _scrape(url: str, openmetrics: bool = True):
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
    from prometheus_client.parser import text_string_to_metric_families as text_families

    accept = "application/openmetrics-text; version=1.0.0" if openmetrics else "text/plain"
    request = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=30) as response:
        kind, text = response.headers["Content-Type"], response.read().decode()
    parse = text_string_to_metric_families if openmetrics else text_families
    return kind, {f.name: f for f in parse(text)}


def test_a_meter_serves_openmetrics_and_ends_equal_to_its_ledger_run(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_JOB_USER", "alice")
    sensors = [
        FakeSensor(300.0, counter_period_s=0.1),
        FakeSensor(40.0, device_id="cpu:machine", kind="cpu", counter=False),
    ]
    meter = Meter(
        ledger=tmp_path / "w.db",
        architecture="job",
        sensors=sensors,
        sample_hz=50,
        metrics_port="127.0.0.1:0",
        region="FRA",
    )
    with meter:
        kind, families = _scrape(meter.metrics_url)
        assert kind.startswith("application/openmetrics-text")
        wait_for(
            lambda: (
                sum(
                    s.value for s in _scrape(meter.metrics_url)[1]["wattwise_energy_joules"].samples
                )
                > 0
            ),
            60,
            "energy to accrue",
        )
        meter.mark("train")
        _, during = _scrape(meter.metrics_url, openmetrics=False)  # the 0.0.4 text format
        assert {s.labels["stage"] for s in during["wattwise_energy_joules"].samples} >= {"run"}
    run = Ledger(tmp_path / "w.db").get_run(meter.run_id)
    _, families = _scrape(meter.metrics_url)  # served after stop(): the final figures
    samples = families["wattwise_energy_joules"].samples
    # a counter is held at the most it has exported: the open phase scraped above may have been
    # carried on with power a little past where the counter's next update settled it, at most
    # one update (0.1 s) of the GPU's 300 W (docs/internals.md, Live metrics); never below
    served = sum(s.value for s in samples)
    assert run.energy_j * (1 - 1e-9) <= served <= run.energy_j + 300.0 * 0.1
    assert {s.labels["run_id"] for s in samples} == {run.run_id}
    assert {(s.labels["device"], s.labels["method"]) for s in samples} == {
        (GPU, "counter"),
        ("cpu:machine", "power"),
    }
    info = families["wattwise_run"].samples[0].labels
    assert (info["architecture"], info["region"]) == ("job", "FRA")
    # the scheduler's join keys, as the ledger records them with the run
    assert (info["user"], info["job_id"]) == (run.user, run.job_id) == ("alice", "4242")
    co2e = families["wattwise_co2e_grams"].samples[0]
    assert co2e.value == pytest.approx(_fra_co2e_g(run.energy_j), rel=1e-9)
    assert "wattwise_cost_usd" not in families  # no pricing given


def _fra_co2e_g(energy_j: float) -> float:
    from wattwise import carbon

    return carbon.co2e_kg(energy_j, carbon.intensity("FRA"), carbon.pue("onprem")) * 1000


def test_meter_arguments_are_checked_up_front():
    with pytest.raises(BadInput, match="'nine'"):
        Meter(metrics_port="nine")
    with pytest.raises(BadInput, match="'ftp://gw'"):
        Meter(pushgateway="ftp://gw")


# --------------------------------------------------------------------- the CLI
def _wattwise(*argv: str, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wattwise", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATTWISE_")}
    env["PYTHONPATH"] = str(pathlib.Path(__file__).parent.parent)
    return {**env, **extra}


def test_run_serves_the_measured_command_its_own_metrics(tmp_path):
    port = free_port()
    # the measured command scrapes the endpoint that measures it, until energy shows
    child = (
        "import time, urllib.request\n"
        f"url = 'http://127.0.0.1:{port}/metrics'\n"
        "for _ in range(600):\n"
        "    text = urllib.request.urlopen(url, timeout=30).read().decode()\n"
        "    if 'wattwise_energy_joules_total{' in text: break\n"
        "    time.sleep(0.05)\n"
        "print(text)\n"
    )
    ledger = tmp_path / "w.db"
    argv = ["run", "--ledger", str(ledger), "--metrics-port", f"127.0.0.1:{port}"]
    done = _wattwise(*argv, "--", sys.executable, "-c", child, env=_env(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run_id = Ledger(ledger).list_runs()[0].run_id
    assert f'run_id="{run_id}"' in done.stdout and 'stage="run"' in done.stdout
    assert f"live metrics on http://127.0.0.1:{port}/metrics" in done.stderr


@pytest.mark.parametrize(
    ("flags", "env", "named"),
    [
        (["--metrics-port", "70000"], {}, "'70000'"),
        (["--pushgateway", "ftp://gw"], {}, "'ftp://gw'"),
        ([], {"WATTWISE_METRICS_PORT": "port9"}, "'port9'"),
    ],
)
def test_run_refuses_bad_metrics_settings_before_the_command(tmp_path, flags, env, named):
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w').close()"
    argv = ["run", "--ledger", str(tmp_path / "w.db"), *flags, "--", sys.executable, "-c", code]
    done = _wattwise(*argv, env=_env(**env), cwd=tmp_path)
    assert done.returncode == 2 and named in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not marker.exists()


def test_config_shows_the_metrics_settings_and_their_source(capsys, no_wattwise_env, monkeypatch):
    monkeypatch.setenv("WATTWISE_METRICS_PORT", "9400")
    assert main(["config", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["settings"]
    assert shown["metrics_port"] == {"value": "0.0.0.0:9400", "source": "env:WATTWISE_METRICS_PORT"}
    assert shown["pushgateway"] == {"value": None, "source": "default"}


# --------------------------------------------------------------------- the callback
def test_callback_arguments_are_checked_up_front():
    from lightning_callbacks import EnergyCallback

    with pytest.raises(BadInput, match=re.escape("'0.0.0.0:x'")):
        EnergyCallback(metrics_port="0.0.0.0:x")
    cb = EnergyCallback(metrics_port=9400, pushgateway="gw")
    assert (cb.metrics_port, cb.pushgateway) == ("0.0.0.0:9400", "http://gw:9091")


@pytest.mark.slow
def test_a_bad_environment_setting_is_a_warning_and_the_fit_goes_on(
    tmp_path, monkeypatch, caplog, one_torch_thread
):
    from test_callback import TinyModel, loader, trainer

    from lightning_callbacks import EnergyCallback

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WATTWISE_METRICS_PORT", "port9")
    cb = EnergyCallback(ledger=tmp_path / "w.db")
    with caplog.at_level(logging.WARNING):
        trainer(tmp_path, [cb]).fit(TinyModel(), loader(), loader(16))
    assert Ledger(tmp_path / "w.db").get_run(cb.run_id).status == "finished"
    assert cb.metrics_url is None
    assert any("'port9'" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------- the dashboard
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset",
}  # fmt: skip


def _metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads: identifiers that are not functions (followed
    by '('), keywords, label names inside {...} / by (...), strings or durations."""
    expr = re.sub(r"label_values\(\s*([^,()]+?)\s*,\s*\w+\s*\)", r"\1", expr)  # Grafana's
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\$\{?\w+\}?", "", expr)  # Grafana variables ($__rate_interval, ...)
    names = set()
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)\s*(\()?", expr):
        if m.group(2) is None and m.group(1) not in PROMQL_WORDS:
            names.add(m.group(1))
    return names


def _exprs(node) -> list[str]:
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        if isinstance(node.get("query"), str) and node.get("type") == "query":
            found.append(node["query"])
        return found + [e for v in node.values() for e in _exprs(v)]
    if isinstance(node, list):
        return [e for v in node for e in _exprs(v)]
    return []


def test_the_dashboard_reads_only_metrics_wattwise_serves(tmp_path, settings):
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = _exprs(dashboard)
    assert len(exprs) >= 5, exprs
    # what an exporter with money set really serves, as Prometheus names the series
    exporter = metrics.Exporter(("127.0.0.1", 0)).start()
    try:
        exporter.attach(Scripted(1.0), [_device(GPU, name="NVIDIA H200")])
        exporter.set_run("r", "a", money=metrics.Money.resolve("FRA", "onprem", True, settings))
        _, families = _scrape(exporter.url, openmetrics=False)
    finally:
        exporter.close()
    served = {s.name for f in families.values() for s in f.samples}
    assert served == set(metrics.METRIC_NAMES)
    used: set[str] = set()
    for expr in exprs:
        names = _metric_names(expr)
        assert names, f"no wattwise series in {expr!r}"
        assert names <= served, f"{expr!r} reads {sorted(names - served)}, not served"
        used |= names
    assert used == served  # every series has a panel
    panels = {p["title"] for p in dashboard["panels"]}
    assert len(panels) == len(dashboard["panels"]) >= 5


def test_the_promql_name_check_can_fail():
    assert _metric_names(
        'sum by (run_id) (rate(wattwise_energy_joules_total{kind="gpu"}[5m]))'
    ) == {"wattwise_energy_joules_total"}
    assert _metric_names("sum(wattwise_power_watt)") == {"wattwise_power_watt"}  # a typo shows


@pytest.mark.slow
def test_a_resumed_run_goes_on_from_its_ledger_rows(tmp_path, monkeypatch, nvml_fixtures):
    from pytorch_lightning.callbacks import ModelCheckpoint
    from test_callback import TRACE, TinyModel, loader, trainer

    from lightning_callbacks import EnergyCallback

    monkeypatch.setenv("WATTWISE_REPLAY_NVML", str(nvml_fixtures / TRACE))
    db = tmp_path / "w.db"
    first = EnergyCallback(ledger=db, metrics_port="127.0.0.1:0")
    saving = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    trainer(tmp_path, [first, saving], max_epochs=2).fit(TinyModel(), loader(), loader(16))
    first_j = Ledger(db).get_run(first.run_id).energy_j
    resumed = EnergyCallback(ledger=db, metrics_port="127.0.0.1:0")  # a new exporter
    again = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    ckpt = tmp_path / "ckpt" / "epoch=1-step=16.ckpt"
    trainer(tmp_path, [resumed, again], max_epochs=4).fit(
        TinyModel(), loader(), loader(16), ckpt_path=ckpt
    )
    run = Ledger(db).get_run(first.run_id)
    assert resumed.run_id == run.run_id and run.energy_j > 1.5 * first_j
    samples = _scrape(resumed.metrics_url)[1]["wattwise_energy_joules"].samples
    assert {s.labels["run_id"] for s in samples} == {run.run_id}
    assert sum(s.value for s in samples) == pytest.approx(run.energy_j, rel=0.01)


@pytest.mark.gpu
@pytest.mark.slow
def test_a_cuda_fit_serves_the_gpu_counter_live_and_ends_at_its_ledger_run(tmp_path, monkeypatch):
    import pytorch_lightning as pl
    import torch

    if not torch.cuda.is_available():  # the NVML stand-in serves NVML, not CUDA
        pytest.skip("this torch build has no CUDA")
    from test_callback import TinyModel, loader, trainer

    from lightning_callbacks import EnergyCallback

    monkeypatch.delenv("WATTWISE_REPLAY_NVML", raising=False)
    cb = EnergyCallback(ledger=tmp_path / "w.db", metrics_port="127.0.0.1:0")
    seen: list[tuple[float, dict]] = []

    class Scrape(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            families = _scrape(cb.metrics_url)[1]
            total = sum(s.value for s in families["wattwise_energy_joules"].samples)
            power = {s.labels["kind"]: s.value for s in families["wattwise_power_watts"].samples}
            seen.append((total, power))

    fit = trainer(tmp_path, [cb, Scrape()], accelerator="cuda", max_epochs=4)
    fit.fit(TinyModel(step_s=0.05), loader(), loader(16))
    run = Ledger(tmp_path / "w.db").get_run(cb.run_id)
    samples = _scrape(cb.metrics_url)[1]["wattwise_energy_joules"].samples
    gpu = [s for s in samples if s.labels["kind"] == "gpu"]
    assert gpu and {s.labels["method"] for s in gpu} == {"counter"}  # NVML's energy counter
    totals = [total for total, _ in seen]
    assert len(totals) == 4 and all(b > a for a, b in itertools.pairwise(totals))
    assert all(power["gpu"] > 20.0 for _, power in seen)  # an H100/H200 idles at 70 W or more
    assert sum(s.value for s in samples) == pytest.approx(run.energy_j, rel=0.01)
