"""Sub-command modules of the ``wattwise`` CLI; each exposes ``register(app)``."""
