"""The training machine: the trial loop that pulls trials from a shared study (``runner``, ``budget``, ``cli``;
its rooms ``joining``, ``signals``, ``study_link``, ``requeue``, ``uploads``).

The Keras code it runs for each trial lives in ``worker.training``.
"""
