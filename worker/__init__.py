"""The training machine: the trial loop that pulls trials from a shared study (``runner``, ``budget``, ``cli``).

The Keras code it runs for each trial lives in ``worker.training``.
"""
