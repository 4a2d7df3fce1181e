"""Exact unit conversions. Inside wattwise everything is SI (J, W, s); convert at the edges."""

from __future__ import annotations

J_PER_WH = 3600.0
J_PER_KWH = 3_600_000.0
MJ_PER_J = 1000.0  # millijoules per joule
UJ_PER_J = 1_000_000.0  # microjoules per joule
MW_PER_W = 1000.0  # milliwatts per watt
S_PER_HOUR = 3600.0
HOURS_PER_YEAR = 8760.0  # 365 days
KWH_PER_MWH = 1000.0
G_PER_KG = 1000.0
G_PER_LB = 453.59237  # exact (international avoirdupois pound)
BYTES_PER_GIB = 2**30  # gibibyte (memory sizes: torch.cuda and NVML count bytes)


def j_to_wh(energy_j: float) -> float:
    return energy_j / J_PER_WH


def j_to_kwh(energy_j: float) -> float:
    return energy_j / J_PER_KWH


def kwh_to_j(energy_kwh: float) -> float:
    return energy_kwh * J_PER_KWH


def wh_to_j(energy_wh: float) -> float:
    return energy_wh * J_PER_WH


def mj_to_j(energy_mj: float) -> float:
    return energy_mj / MJ_PER_J


def uj_to_j(energy_uj: float) -> float:
    return energy_uj / UJ_PER_J


def mw_to_w(power_mw: float) -> float:
    return power_mw / MW_PER_W
