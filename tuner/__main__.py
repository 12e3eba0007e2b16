"""``python -m tuner`` is the ``tuner`` command."""

from tuner.cli import app

app(prog_name="tuner")
