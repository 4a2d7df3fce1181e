"""What a planned training run will cost: time, device energy, money and CO2e, per GPU.

Pure: explicit inputs, no clock, no I/O of its own; money and CO2e come from ``wattwise.pricing``
and ``wattwise.carbon`` (their packaged tables, and the configuration file when ``settings`` is
None). ``profile_from_run`` reads the ledger it is given.

Input is a :class:`Profile` measured on one GPU (steady seconds and joules per epoch, the extra
cost of warm-up, peak memory), a :class:`Plan` (epochs or steps) and target GPUs
(``wattwise.hardware.GpuSpec``). A plan of N epochs from scratch pays warm-up once::

    total = warm-up extra + N x steady epoch

Warm-up (start-up, compilation, autotuning, cache filling) is found by :func:`steady_state`: the
leading epochs whose time or energy exceeds the median of the later epochs by more than their
spread (at least 5 %) are warm-up; the rest are steady.

Scaling to another GPU (measured GPU ``m``, target ``t``, per epoch, per GPU):

* Time is a roofline-style mix. A share ``1 - b`` of the epoch the GPU waits on the host (data,
  Python, kernel launches) and does not scale; the busy share ``b`` splits into compute-bound
  (fraction ``c``, scales with dense TFLOP/s) and memory-bound (``1 - c``, scales with memory
  bandwidth)::

      r   = (1 - b) + b * (c * F_m / F_t + (1 - c) * B_m / B_t)
      s_t = r * s_m

  ``b`` is the measured GPU utilisation when known, else the power-utilised fraction ``u`` below
  (a GPU drawing near idle power is mostly waiting). ``c`` is not observable from energy
  readings: the point estimate takes ``c = 0.5`` and the band spans ``c`` in [0, 1] and ``b`` over
  its uncertainty (+-0.1 when measured, [u, 1] when inferred from power).
* Power keeps the measured fraction of the card's dynamic range::

      u   = clip((P_m - idle_m) / (TDP_m - idle_m), 0, 1),   P_m = GPU joules / s_m
      P_t = idle_t + u * (TDP_t - idle_t)

  Host (CPU + RAM) power is taken as unchanged; device energy on the target is
  ``(P_t * n_gpus + P_host) * s_t``. Warm-up extra time scales by ``r`` and its energy by the
  ratio of epoch energies.
* The band (low, high) is the spread of those mix extremes, widened by a relative uncertainty
  that grows with distance between the cards (same part: the measured epoch spread only; same
  architecture: 20 %, set from the one measured H100/H200 pair where an unmodelled host
  difference made the H200 17-22 % slower than the specs say; same vendor: 35 %; otherwise 50 %)
  plus the measured relative spread of the steady epochs (:func:`time_band`). Checked against
  Lambda's public training throughputs (tests/fixtures/public, ``bench/estimate_accuracy.py``):
  between cards of one chip running one batch size (A100 PCIe/SXM, H100 PCIe/SXM, A10/RTX 3090)
  the point estimate is within 10 % for 40 of 50 workload predictions (most misses: the A10's
  150 W against the RTX 3090's 350 W, no power term here) and the band holds all 50; between two
  chips of one architecture (GA100 A100s against GA102 cards) the point is off by a median
  18.6 % and the band holds 160 of 180.

``energy_kwh`` is device energy before PUE; PUE enters cost and CO2e (``wattwise.pricing``,
``wattwise.carbon``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from wattwise.errors import BadInput
from wattwise.units import j_to_kwh

if TYPE_CHECKING:  # pragma: no cover
    from wattwise.hardware import GpuSpec
    from wattwise.ledger import Ledger

MIN_WARMUP_TOLERANCE = 0.05
"""A leading epoch counts as warm-up only when it exceeds the steady median by more than this."""
MEMORY_HEADROOM = 0.10
"""Peak memory must fit with this fraction to spare (allocator fragmentation, CUDA context)."""
DEFAULT_COMPUTE_SHARE = 0.5
MEASURED_UTILISATION_UNCERTAINTY = 0.1
HOST_BOUND_BELOW = 0.5
"""A measured GPU busy for less than this share of each epoch makes the estimate ``host_bound``."""
SAME_PART_UNCERTAINTY = 0.0
SAME_ARCHITECTURE_UNCERTAINTY = 0.20
SAME_VENDOR_UNCERTAINTY = 0.35
OTHER_VENDOR_UNCERTAINTY = 0.50

BUDGET_NAMES = ("kwh", "usd", "kgco2e")
PRECISIONS = ("bf16", "fp16", "fp32")


def _positive(name: str, value: float | None, accepted: str = "a number > 0") -> None:
    if value is None:
        return
    whole = accepted.startswith("a whole number")
    if not math.isfinite(value) or value <= 0 or (whole and value != int(value)):
        raise BadInput(f"{name}={value!r} is not accepted: give {accepted}")


@dataclass(frozen=True)
class SteadyState:
    """Per-epoch figures split into warm-up and steady state (see :func:`steady_state`)."""

    seconds_per_epoch: float
    joules_per_epoch: float
    warmup_epochs: int
    warmup_extra_s: float
    warmup_extra_j: float
    steady_epochs: int
    spread: float
    """Relative standard deviation of the steady epochs (time or energy, the larger); 0 for one."""


def steady_state(seconds: Sequence[float], joules: Sequence[float]) -> SteadyState:
    """Split measured epochs into leading warm-up epochs and the steady rate after them.

    The reference is the median of every epoch but the first; its tolerance is the larger of
    ``MIN_WARMUP_TOLERANCE`` and three median absolute deviations. Leading epochs above it in time
    or energy are warm-up (at least one epoch always stays steady). Warm-up extra = what those
    epochs cost beyond the steady mean (never negative).
    """
    if len(seconds) != len(joules) or not seconds:
        raise BadInput(
            f"{len(seconds)} epoch durations and {len(joules)} epoch energies: give the same "
            "number (at least one) of each"
        )
    for i, (s, j) in enumerate(zip(seconds, joules, strict=True)):
        _positive(f"epoch {i} seconds", s)
        _positive(f"epoch {i} joules", j, "a number > 0 (is the run's energy missing?)")

    def tolerance(values: Sequence[float]) -> tuple[float, float]:
        ref = statistics.median(values)
        mad = statistics.median(abs(v - ref) for v in values)
        return ref, max(MIN_WARMUP_TOLERANCE, 3 * mad / ref)

    n_warm = 0
    if len(seconds) > 1:
        ref_s, tol_s = tolerance(seconds[1:])
        ref_j, tol_j = tolerance(joules[1:])
        while n_warm < len(seconds) - 1 and (
            seconds[n_warm] > ref_s * (1 + tol_s) or joules[n_warm] > ref_j * (1 + tol_j)
        ):
            n_warm += 1
    steady_s, steady_j = seconds[n_warm:], joules[n_warm:]
    mean_s, mean_j = statistics.fmean(steady_s), statistics.fmean(steady_j)
    spread = 0.0
    if len(steady_s) > 1:
        spread = max(statistics.stdev(steady_s) / mean_s, statistics.stdev(steady_j) / mean_j)
    return SteadyState(
        seconds_per_epoch=mean_s,
        joules_per_epoch=mean_j,
        warmup_epochs=n_warm,
        warmup_extra_s=max(0.0, sum(seconds[:n_warm]) - n_warm * mean_s),
        warmup_extra_j=max(0.0, sum(joules[:n_warm]) - n_warm * mean_j),
        steady_epochs=len(steady_s),
        spread=spread,
    )


@dataclass(frozen=True)
class Profile:
    """What one training run measured, reduced to steady-state rates."""

    gpu: GpuSpec
    """Spec of the measured GPU (``wattwise.hardware.lookup``)."""
    seconds_per_epoch: float
    joules_per_epoch: float
    """Steady device energy per epoch: GPUs + host (CPU, RAM), before PUE."""
    host_joules_per_epoch: float = 0.0
    """The CPU + RAM part of ``joules_per_epoch`` (does not scale with the GPU)."""
    warmup_extra_s: float = 0.0
    warmup_extra_j: float = 0.0
    steps_per_epoch: int | None = None
    peak_mem_gib: float | None = None
    utilisation: float | None = None
    """Measured mean GPU utilisation (share of time a kernel ran), 0..1, when known."""
    n_gpus: int = 1
    epochs_measured: int | None = None
    """How many epochs the rates come from (None: typed-in steady numbers)."""
    warmup_epochs: int = 0
    spread: float = 0.0
    """Relative spread of the steady epochs (see :class:`SteadyState`)."""
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    """The number format the work ran in: which TFLOP/s column scales the compute part."""
    run_id: str | None = None

    def __post_init__(self) -> None:
        _positive("seconds_per_epoch", self.seconds_per_epoch)
        _positive("joules_per_epoch", self.joules_per_epoch)
        _positive("peak_mem_gib", self.peak_mem_gib)
        _positive("steps_per_epoch", self.steps_per_epoch, "a whole number > 0")
        _positive("n_gpus", self.n_gpus, "a whole number > 0")
        if not 0 <= self.host_joules_per_epoch <= self.joules_per_epoch:
            raise BadInput(
                f"host_joules_per_epoch={self.host_joules_per_epoch!r} is not accepted: give 0 or "
                f"more, at most joules_per_epoch={self.joules_per_epoch!r}"
            )
        if self.utilisation is not None and not 0 < self.utilisation <= 1:
            raise BadInput(
                f"utilisation={self.utilisation!r} is not accepted: give a fraction in (0, 1]"
            )
        if self.precision not in PRECISIONS:
            raise BadInput(
                f"precision={self.precision!r} is not accepted: give one of {', '.join(PRECISIONS)}"
            )
        if min(self.warmup_extra_s, self.warmup_extra_j, self.spread) < 0:
            raise BadInput("warm-up extras and spread must be 0 or more")


@dataclass(frozen=True)
class Plan:
    """The planned run: ``epochs``, or ``steps`` (with ``steps_per_epoch`` unless the profile
    knows it). ``from_scratch`` runs pay the warm-up once."""

    epochs: float | None = None
    steps: int | None = None
    steps_per_epoch: int | None = None
    from_scratch: bool = True

    def __post_init__(self) -> None:
        if (self.epochs is None) == (self.steps is None):
            raise BadInput(
                f"epochs={self.epochs!r}, steps={self.steps!r}: give exactly one of epochs or steps"
            )
        _positive("epochs", self.epochs)
        _positive("steps", self.steps, "a whole number > 0")
        _positive("steps_per_epoch", self.steps_per_epoch, "a whole number > 0")

    def n_epochs(self, profile: Profile) -> float:
        if self.epochs is not None:
            return float(self.epochs)
        per_epoch = self.steps_per_epoch or profile.steps_per_epoch
        if per_epoch is None:
            raise BadInput(
                f"steps={self.steps}: the profile does not know its steps per epoch; "
                "give steps_per_epoch (--steps-per-epoch)"
            )
        return self.steps / per_epoch


@dataclass(frozen=True)
class Budgets:
    """Limits for the whole planned run; ``None`` = no limit of that kind."""

    max_kwh: float | None = None
    """Device energy before PUE."""
    max_usd: float | None = None
    max_kgco2e: float | None = None

    def __post_init__(self) -> None:
        _positive("max_kwh", self.max_kwh)
        _positive("max_usd", self.max_usd)
        _positive("max_kgco2e", self.max_kgco2e)

    def given(self) -> dict[str, float]:
        """``{"kwh"|"usd"|"kgco2e": limit}`` for the budgets that are set."""
        limits = dict(zip(BUDGET_NAMES, (self.max_kwh, self.max_usd, self.max_kgco2e), strict=True))
        return {name: limit for name, limit in limits.items() if limit is not None}


def _finite_or_none(value: float | None) -> float | None:
    """JSON has no infinity: an infinite break-even (renting always cheaper) becomes null."""
    return value if value is not None and math.isfinite(value) else None


@dataclass(frozen=True)
class TargetEstimate:
    gpu: str
    n_gpus: int
    seconds: float
    energy_kwh: float
    cost_usd: float
    co2e_kg: float
    fits_memory: bool | None
    """None when the peak memory or the target's memory is unknown."""
    within_budget: bool | None
    verdicts: dict[str, bool]
    band: dict[str, list[float]]
    time_ratio: float
    gpu_power_w: float
    uncertainty: float
    memory_gib: float | None
    pricing: str
    """The scenario priced: the one asked, or for a cloud instance with another GPU the same
    provider's cheapest instance with this one (on-prem when it has none)."""
    pue: float
    cost_flags: tuple[str, ...] = ()
    break_even_gpu_hours_per_year: float | None = None
    """Owning beats renting above this many GPU-hours a year (``inf``: renting always cheaper)."""
    break_even_instance: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "gpu": self.gpu,
            "seconds": self.seconds,
            "energy_kwh": self.energy_kwh,
            "cost_usd": self.cost_usd,
            "co2e_kg": self.co2e_kg,
            "fits_memory": self.fits_memory,
            "within_budget": self.within_budget,
            "verdicts": dict(self.verdicts),
            "band": {k: list(v) for k, v in self.band.items()},
            "n_gpus": self.n_gpus,
            "time_ratio": self.time_ratio,
            "gpu_power_w": self.gpu_power_w,
            "uncertainty": self.uncertainty,
            "memory_gib": self.memory_gib,
            "pricing": self.pricing,
            "pue": self.pue,
            "cost_flags": list(self.cost_flags),
            "break_even_gpu_hours_per_year": _finite_or_none(self.break_even_gpu_hours_per_year),
            "break_even_instance": self.break_even_instance,
        }


@dataclass(frozen=True)
class EstimateResult:
    targets: list[TargetEstimate]
    cheapest: str | None
    fastest: str | None
    greenest: str | None
    epochs: float
    region: str | None
    pricing: str
    gco2e_per_kwh: float
    pue: float
    flags: tuple[str, ...] = ()
    budgets: dict[str, float] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The DESIGN.md ``estimate`` shape, plus the plan, profile and grid figures used."""
        return {
            "targets": [t.to_json() for t in self.targets],
            "cheapest": self.cheapest,
            "fastest": self.fastest,
            "greenest": self.greenest,
            "epochs": self.epochs,
            "region": self.region,
            "pricing": self.pricing,
            "gco2e_per_kwh": self.gco2e_per_kwh,
            "pue": self.pue,
            "flags": list(self.flags),
            "budgets": dict(self.budgets),
            "profile": dict(self.profile),
        }


def _tflops(spec: GpuSpec, precision: str) -> float | None:
    # The spec table gives a part without bf16 units (V100, T4) its fp32 rate as bf16 rate;
    # fp16 work there runs on its fp16 tensor cores (V100: 125 against 15.7 TFLOP/s).
    rate = {"bf16": spec.bf16_tflops, "fp16": spec.fp16_tflops}.get(precision)
    return rate or spec.fp32_tflops or None


def _ratio(measured: float | None, target: float | None) -> float | None:
    return measured / target if measured and target else None


def _uncertainty(measured: GpuSpec, target: GpuSpec) -> float:
    if measured.name == target.name:
        return SAME_PART_UNCERTAINTY
    if measured.vendor == target.vendor and measured.architecture == target.architecture:
        return SAME_ARCHITECTURE_UNCERTAINTY
    if measured.vendor == target.vendor:
        return SAME_VENDOR_UNCERTAINTY
    return OTHER_VENDOR_UNCERTAINTY


def utilised_fraction(spec: GpuSpec, power_w: float) -> float:
    """``u = clip((P - idle) / (TDP - idle), 0, 1)``: where a mean power sits in the range."""
    if spec.tdp_w <= spec.idle_w:
        raise BadInput(
            f"{spec.name}: tdp_w={spec.tdp_w:g} is not above idle_w={spec.idle_w:g}; "
            "a spec row needs tdp_w > idle_w"
        )
    return min(1.0, max(0.0, (power_w - spec.idle_w) / (spec.tdp_w - spec.idle_w)))


def time_ratio(
    measured: GpuSpec,
    target: GpuSpec,
    busy: float,
    compute_share: float,
    precision: str = "bf16",
) -> float:
    """``r = (1 - b) + b * (c * F_m / F_t + (1 - c) * B_m / B_t)`` (target seconds / measured).

    A throughput the specs do not give (e.g. a CPU row's bandwidth) falls back to the other one.
    """
    compute = _ratio(_tflops(measured, precision), _tflops(target, precision))
    memory = _ratio(measured.memory_bandwidth_gbs, target.memory_bandwidth_gbs)
    compute = compute or memory or 1.0
    memory = memory or compute
    return (1 - busy) + busy * (compute_share * compute + (1 - compute_share) * memory)


@dataclass(frozen=True)
class TimeBand:
    """Target seconds / measured seconds: the point estimate and its band."""

    ratio: float
    low: float
    high: float
    uncertainty: float
    """The relative widening applied beyond the mix extremes (card distance + measured spread)."""


def time_band(
    measured: GpuSpec,
    target: GpuSpec,
    *,
    busy: float,
    busy_range: tuple[float, float],
    precision: str = "bf16",
    spread: float = 0.0,
) -> TimeBand:
    """The time ratio at ``c = DEFAULT_COMPUTE_SHARE``, and its band: the extremes over ``b`` in
    ``busy_range`` and ``c`` in [0, 1], divided / multiplied by ``1 + uncertainty`` (divide
    rather than subtract: a noisy profile, spread + uncertainty >= 100 %, must still give a
    positive low end, and a ratio uncertainty is symmetric in log space)."""
    ratio = time_ratio(measured, target, busy, DEFAULT_COMPUTE_SHARE, precision)
    corners = [
        time_ratio(measured, target, b, c, precision) for b in busy_range for c in (0.0, 1.0)
    ]
    widen = _uncertainty(measured, target) + spread
    return TimeBand(ratio, min(corners) / (1 + widen), max(corners) * (1 + widen), widen)


def _scenario_for(target: GpuSpec, pricing: str, n_gpus: int, settings: Any) -> str:
    """The pricing scenario that can run on ``target``: ``pricing`` itself when it is on-prem or an
    instance with that GPU, else the same provider's cheapest instance with that GPU and enough of
    them, else on-prem."""
    from wattwise import carbon
    from wattwise import pricing as pricing_mod

    if ":" not in pricing:
        return pricing
    asked = pricing_mod.instance(pricing, settings)
    on_target = [
        row for row in pricing_mod.instances_for_gpu(target.name, settings) if row.n_gpus >= n_gpus
    ]
    if asked in on_target:
        return asked.name
    provider = carbon.provider_of(asked.name)
    rows = [row for row in on_target if row.provider.lower() == provider]
    return min(rows, key=lambda r: r.price_per_hour_usd).name if rows else "onprem"


def _break_even(target: GpuSpec, scenario: str, settings: Any) -> tuple[float, str] | None:
    """GPU-hours a year above which owning ``target`` beats renting it, and the instance compared:
    the scenario's instance when it is a cloud one, else the cheapest per GPU-hour anywhere."""
    from wattwise import pricing as pricing_mod

    if ":" in scenario:
        name = scenario
    else:
        rows = pricing_mod.instances_for_gpu(target.name, settings)  # cheapest per GPU-hour first
        if not rows:
            return None
        name = rows[0].name
    return pricing_mod.break_even_gpu_hours_per_year(target.name, name, settings), name


def _fits(profile: Profile, target: GpuSpec) -> bool | None:
    if profile.peak_mem_gib is None or not target.memory_gib:
        return None
    return profile.peak_mem_gib * (1 + MEMORY_HEADROOM) <= target.memory_gib


_SAFE_TOTAL = 1e300
"""Seconds or joules well inside float range: the largest plan the overflow message suggests."""


def _refuse_overflow(plan: Plan, n_epochs: float, gpu: str, max_epochs: float) -> None:
    """BadInput for a plan so large that its total time or energy on ``gpu`` is not a finite
    number (``max_epochs``: about the largest that stays well inside float range)."""
    if plan.epochs is not None:
        given, most = f"epochs={plan.epochs:g} (--epochs)", f"{max_epochs:.1g} epochs"
    else:
        given = f"steps={plan.steps:g} (--steps)"
        most = f"{max_epochs * (plan.steps / n_epochs):.1g} steps"
    raise BadInput(
        f"{given} is too large: the planned time or energy on {gpu} overflows (is not a finite "
        f"number); accepted: a plan whose totals are finite numbers, here at most about {most}"
    )


def estimate(
    profile: Profile,
    plan: Plan,
    targets: Sequence[GpuSpec],
    *,
    region: str | None = None,
    pricing: str = "onprem",
    budgets: Budgets | None = None,
    settings: Any = None,
) -> EstimateResult:
    """Predict the planned run on each target (see the module docstring for the model)."""
    from wattwise import carbon
    from wattwise import pricing as pricing_mod

    if not targets:
        raise BadInput("no target GPU given: name at least one (see `wattwise hardware`)")
    pricing = pricing or "onprem"
    n_epochs = plan.n_epochs(profile)
    n_warm = 1.0 if plan.from_scratch else 0.0
    intensity = carbon.intensity(region, settings)
    asked_pue = carbon.pue(pricing, settings).value
    limits = budgets.given() if budgets else {}

    m = profile
    host_power_w = m.host_joules_per_epoch / m.seconds_per_epoch
    gpu_power_m_w = (m.joules_per_epoch - m.host_joules_per_epoch) / m.seconds_per_epoch / m.n_gpus
    u = utilised_fraction(m.gpu, gpu_power_m_w)
    if m.utilisation is not None:
        busy = m.utilisation
        busy_range = (
            max(0.0, busy - MEASURED_UTILISATION_UNCERTAINTY),
            min(1.0, busy + MEASURED_UTILISATION_UNCERTAINTY),
        )
    else:
        busy, busy_range = u, (u, 1.0)

    def target_power_w(target: GpuSpec) -> float:
        """``P_t = idle_t + u * (TDP_t - idle_t)``: the measured share of the target's range."""
        return target.idle_w + u * (target.tdp_w - target.idle_w)

    def run_totals(target: GpuSpec, ratio: float, epochs: float = n_epochs) -> tuple[float, float]:
        """Seconds and joules of the whole plan (``epochs`` of it) on ``target`` at this time
        ratio."""
        epoch_s = ratio * m.seconds_per_epoch
        epoch_j = (target_power_w(target) * m.n_gpus + host_power_w) * epoch_s
        warm_s = n_warm * m.warmup_extra_s * ratio
        warm_j = n_warm * m.warmup_extra_j * epoch_j / m.joules_per_epoch
        return warm_s + epochs * epoch_s, warm_j + epochs * epoch_j

    def money_and_carbon(
        target: GpuSpec, scenario: str, seconds: float, energy_j: float
    ) -> tuple[Any, float]:
        cost = pricing_mod.cost(
            energy_j,
            seconds,
            scenario=scenario,
            gpu_name=target.name,
            n_gpus=m.n_gpus,
            settings=settings,
        )
        return cost, carbon.co2e_kg(energy_j, intensity, cost.pue)

    results = []
    for target in targets:
        scaling = time_band(
            m.gpu,
            target,
            busy=busy,
            busy_range=busy_range,
            precision=m.precision,
            spread=m.spread,
        )
        ratio = scaling.ratio
        seconds, energy_j = run_totals(target, ratio)
        # the plan's seconds and joules are both proportional to the time ratio
        lo_s, lo_j = run_totals(target, scaling.low)
        hi_s, hi_j = run_totals(target, scaling.high)
        if not all(map(math.isfinite, (seconds, energy_j, lo_s, lo_j, hi_s, hi_j))):
            one_epoch = max(run_totals(target, scaling.high, epochs=1.0))  # high >= ratio
            _refuse_overflow(plan, n_epochs, target.name, _SAFE_TOTAL / one_epoch)
        scenario = _scenario_for(target, pricing, m.n_gpus, settings)
        cost, co2e = money_and_carbon(target, scenario, seconds, energy_j)
        lo_cost, lo_co2e = money_and_carbon(target, scenario, lo_s, lo_j)
        hi_cost, hi_co2e = money_and_carbon(target, scenario, hi_s, hi_j)
        break_even = _break_even(target, scenario, settings)
        energy_kwh = j_to_kwh(energy_j)
        figures = {"kwh": energy_kwh, "usd": cost.total_usd, "kgco2e": co2e}
        verdicts = {name: figures[name] <= limit for name, limit in limits.items()}
        results.append(
            TargetEstimate(
                gpu=target.name,
                n_gpus=m.n_gpus,
                seconds=seconds,
                energy_kwh=energy_kwh,
                cost_usd=cost.total_usd,
                co2e_kg=co2e,
                fits_memory=_fits(m, target),
                within_budget=all(verdicts.values()) if limits else None,
                verdicts=verdicts,
                band={
                    "seconds": [lo_s, hi_s],
                    "energy_kwh": [j_to_kwh(lo_j), j_to_kwh(hi_j)],
                    "cost_usd": [lo_cost.total_usd, hi_cost.total_usd],
                    "co2e_kg": [lo_co2e, hi_co2e],
                },
                time_ratio=ratio,
                gpu_power_w=target_power_w(target),
                uncertainty=scaling.uncertainty,
                memory_gib=target.memory_gib,
                pricing=scenario,
                pue=cost.pue,
                cost_flags=tuple(cost.flags),
                break_even_gpu_hours_per_year=break_even[0] if break_even else None,
                break_even_instance=break_even[1] if break_even else None,
            )
        )

    eligible = [t for t in results if t.fits_memory is not False]

    def best(key: str) -> str | None:
        return min(eligible, key=lambda t: getattr(t, key)).gpu if eligible else None

    return EstimateResult(
        targets=results,
        cheapest=best("cost_usd"),
        fastest=best("seconds"),
        greenest=best("co2e_kg"),
        epochs=n_epochs,
        region=intensity.region,
        pricing=pricing,
        gco2e_per_kwh=intensity.gco2e_per_kwh,
        pue=asked_pue,
        flags=(
            *intensity.flags,
            *(["single_epoch"] if m.epochs_measured == 1 else []),
            *(["host_bound"] if m.gpu.kind == "gpu" and busy < HOST_BOUND_BELOW else []),
        ),
        budgets=limits,
        profile={
            "gpu": m.gpu.name,
            "run_id": m.run_id,
            "seconds_per_epoch": m.seconds_per_epoch,
            "joules_per_epoch": m.joules_per_epoch,
            "host_joules_per_epoch": m.host_joules_per_epoch,
            "warmup_extra_s": m.warmup_extra_s,
            "warmup_extra_j": m.warmup_extra_j,
            "warmup_epochs": m.warmup_epochs,
            "epochs_measured": m.epochs_measured,
            "spread": m.spread,
            "peak_mem_gib": m.peak_mem_gib,
            "utilisation": m.utilisation,
            "utilised_fraction": u,
            "n_gpus": m.n_gpus,
            "precision": m.precision,
        },
    )


def precision_of(lightning_precision: object) -> Literal["bf16", "fp16", "fp32"]:
    """The rate column a Lightning ``Trainer(precision=...)`` runs at: ``bf16-mixed`` and
    ``bf16-true`` (and Transformer Engine's mixed fp8/bf16) scale with bf16 rates, ``16-mixed`` and
    ``16-true`` with fp16 rates, everything else (``32-true``, ``64-true``) with fp32 rates."""
    text = str(lightning_precision).lower()
    if "bf16" in text or "transformer-engine" in text:
        return "bf16"
    if text.startswith("16"):
        return "fp16"
    return "fp32"


def _last_epoch_cut_short(ledger: Ledger, run_id: str, epochs: Any) -> bool:
    """Whether the last of ``epochs`` (two or more) processed fewer training samples than an
    earlier one: a fit ended inside it (``max_steps``), and Lightning still ended the epoch, so
    it was committed. Such an epoch is no steady epoch. Unknown counts decide nothing."""
    import pandas as pd

    if len(epochs) < 2:
        return False
    counts = ledger.snapshots(run_id).set_index("epoch")["train_samples"]
    known = {int(e): int(n) for e, n in counts.items() if not pd.isna(e) and not pd.isna(n)}
    last = known.get(int(epochs[-1]))
    earlier = [known[int(e)] for e in epochs[:-1] if int(e) in known]
    return last is not None and bool(earlier) and last < max(earlier)


def profile_from_run(ledger: Ledger, run_id: str, *, settings: Any = None) -> Profile:
    """The steady-state profile of a ledger run's completed training epochs.

    Each epoch's energy is everything recorded inside it (training, validation inside it, other
    time such as checkpoint saving) on every device; its duration spans its phases. Warm-up is
    split off with :func:`steady_state`. The measured GPU is the run's first GPU (a replayed
    trace's recorded GPU; the CPU-only row when it has none). From the run's settings, when
    recorded there: ``peak_mem_gib``, ``steps_per_epoch`` and the Lightning ``precision``
    (:func:`precision_of`).
    """
    from wattwise import hardware

    record = ledger.get_run(run_id)
    phases = ledger.phases(record.run_id)
    phases = phases[phases["epoch"].notna() & ~phases["stage"].isin(("test", "predict"))]
    if phases.empty:
        raise BadInput(
            f"run {record.run_id} ({record.status}) has no completed training epoch to take rates "
            "from: give a run with at least one finished epoch"
        )
    grouped = phases.groupby("epoch", sort=True)
    per_epoch = grouped.agg(start_s=("start_s", "min"), end_s=("end_s", "max"))
    per_epoch["energy_j"] = grouped["energy_j"].sum()
    per_epoch["host_j"] = phases[phases["kind"] != "gpu"].groupby("epoch")["energy_j"].sum()
    per_epoch = per_epoch.fillna({"host_j": 0.0})
    if record.epochs:
        per_epoch = per_epoch.iloc[: record.epochs]
    if _last_epoch_cut_short(ledger, record.run_id, per_epoch.index):
        per_epoch = per_epoch.iloc[:-1]
    seconds = (per_epoch["end_s"] - per_epoch["start_s"]).tolist()
    steady = steady_state(seconds, per_epoch["energy_j"].tolist())
    host_steady_j = statistics.fmean(per_epoch["host_j"].iloc[steady.warmup_epochs :])
    # With no GPU the CPU row is the measured device: all the energy scales with its model.
    gpus = [d for d in record.devices if d.get("kind") == "gpu"]
    name = ((gpus[0].get("details") or {}).get("gpu") or gpus[0]["name"]) if gpus else "CPU"
    spec = hardware.lookup(name, settings)
    run_settings = record.settings or {}
    precision = precision_of(run_settings.get("precision", "bf16"))
    return Profile(
        gpu=spec,
        seconds_per_epoch=steady.seconds_per_epoch,
        joules_per_epoch=steady.joules_per_epoch,
        host_joules_per_epoch=host_steady_j if gpus else 0.0,
        warmup_extra_s=steady.warmup_extra_s,
        warmup_extra_j=steady.warmup_extra_j,
        steps_per_epoch=run_settings.get("steps_per_epoch"),
        peak_mem_gib=run_settings.get("peak_mem_gib"),
        n_gpus=max(1, len(gpus)),
        epochs_measured=len(seconds),
        warmup_epochs=steady.warmup_epochs,
        spread=steady.spread,
        precision=precision,
        run_id=record.run_id,
    )
