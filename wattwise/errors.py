"""wattwise's one shallow error tree.

::

    WattwiseError                      base of everything wattwise raises on purpose
    ├── BadInput                       the user gave something we cannot use (CLI exit code 2)
    │   ├── ConfigError                a bad configuration file or setting
    │   ├── LedgerFormatError          a file that is not a (compatible) wattwise ledger
    │   ├── UnknownRegion              a region code we have no intensity for
    │   ├── UnknownHardware            a GPU name the spec table does not know
    │   └── TraceFormatError           a recorded NVML trace or marks file we cannot read
    └── SensorError                    a sensor could not give a reading
        ├── SensorNotSupported         the device lacks this capability (normal: fall back)
        ├── SensorPermissionError      the OS refused access (e.g. RAPL needs root)
        └── SensorReadError            a reading failed (GPU lost, driver error, I/O error)

Every ``BadInput`` message names the bad value and what is accepted. Sensor errors never reach
training code: the sampler turns them into warnings and flags.
"""

from __future__ import annotations


class WattwiseError(Exception):
    """Base class of every error wattwise raises on purpose."""


class BadInput(WattwiseError):
    """The user gave a value we cannot use; the CLI exits with code 2."""


class ConfigError(BadInput):
    """A configuration file or setting is invalid."""


class LedgerFormatError(BadInput):
    """A path that is not a wattwise ledger, or one written by a newer wattwise."""


class UnknownRegion(BadInput):
    """A region code with no known grid intensity."""


class UnknownHardware(BadInput):
    """A GPU or CPU name the hardware table does not know."""


class TraceFormatError(BadInput):
    """A recorded trace or marks file that cannot be read."""


class SensorError(WattwiseError):
    """A sensor could not give a reading."""


class SensorNotSupported(SensorError):
    """The device does not support the requested reading."""


class SensorPermissionError(SensorError):
    """The operating system refused access to the sensor."""


class SensorReadError(SensorError):
    """A reading failed (device lost, driver error, I/O error)."""
