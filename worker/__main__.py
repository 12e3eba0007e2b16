"""``python -m worker`` is the ``worker`` command."""

from worker.cli import app

app(prog_name="worker")
