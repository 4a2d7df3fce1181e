"""Sensors: one module per source. Nothing here touches hardware at import time."""
