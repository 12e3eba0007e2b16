"""What the coordinator and the workers agree on, free of TensorFlow.

The training configuration, the search space, the study spec stored in the database, the trial
attribute names, the data file format and its fingerprint, artifacts, atomic writes, the shared
CLI options and the one error base. ``tuner`` imports only this (and ``storage``), so the
coordinator never loads TensorFlow; ``tests/test_layers.py`` checks it.
"""
