"""Skip a test for want of a server or tool, except where CI says every one must be there.

``.ci/run`` installs PostgreSQL, Prometheus, the Pushgateway, Chromium and gcc and sets
``WATTWISE_TEST_REQUIRE_SERVERS=1``: there a missing one fails the test instead of skipping it, so
a broken install step cannot turn the real-server tests into silent skips.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

REQUIRE_ENV = "WATTWISE_TEST_REQUIRE_SERVERS"


def missing(what: str) -> NoReturn:
    """``pytest.skip(what)``, or ``pytest.fail`` where $WATTWISE_TEST_REQUIRE_SERVERS is set."""
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(f"{what}, and {REQUIRE_ENV} is set (CI installs it)", pytrace=False)
    pytest.skip(what)
