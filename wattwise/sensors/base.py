"""The one interface every sensor implements."""

from __future__ import annotations

import abc
from collections.abc import Sequence

from wattwise.types import DeviceInfo, DeviceKind, Sample


class Sensor(abc.ABC):
    """A source of readings for one or more devices of one kind.

    Life cycle: ``open()`` (imports the vendor library, finds devices; may raise
    :class:`~wattwise.errors.SensorError` subclasses, which discovery turns into a log line and a
    fallback) -> many ``read()`` calls from the sampler thread -> ``close()`` (idempotent).
    Nothing happens in ``__init__``.
    """

    kind: DeviceKind

    @abc.abstractmethod
    def open(self) -> list[DeviceInfo]:
        """Start the sensor and return the devices it measures."""

    @abc.abstractmethod
    def read(self, t_s: float, *, counter: bool) -> Sequence[Sample]:
        """Read every device once, stamping samples with ``t_s`` (sampler clock).

        ``counter=False`` asks for the cheap readings only (instant power, utilisation); the
        expensive energy counter (~4 ms of CPU on Hopper) is read only when ``counter=True``.
        Sensors whose counter is cheap (RAPL) may always return it. A device that fails returns
        a Sample with ``power_w=None, energy_j=None`` and a flag (``sensor_lost``) rather than
        raising; an unexpected failure may raise ``SensorReadError``, which the sampler catches.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the sensor; safe to call twice."""
