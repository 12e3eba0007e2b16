"""Keep TensorFlow's native start-up chatter off the user's terminal.

``import tensorflow`` and the first device query print lines from C++ straight to file
descriptor 2 ("oneDNN custom operations are on", "failed call to cuInit" on machines without a
GPU), before ``TF_CPP_MIN_LOG_LEVEL`` takes effect. They bury our own one-line errors and
progress. While TensorFlow starts, fd 2 goes to a temporary file; if starting fails, the
captured text is replayed so nothing needed for a diagnosis is lost. Later lines (an
``E0000 ...`` ERROR-level line about a tf.data ``NodeDef`` attribute in the middle of training,
oneDNN notes) are ERROR-level logs of conditions TensorFlow handles itself; a real failure
reaches us as a Python exception with its own message. So worker processes raise TensorFlow's
native log threshold to FATAL (:func:`silence_native_logs`). ``TUNER_TF_VERBOSE=1`` turns both
off and leaves ``TF_CPP_MIN_LOG_LEVEL`` as the environment has it.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import os
import sys
import tempfile

ENV_VERBOSE = "TUNER_TF_VERBOSE"
#: TensorFlow's native threshold in worker processes: 3 = FATAL only (0 shows everything).
NATIVE_LOG_LEVEL = "3"


def silence_native_logs() -> None:
    """Keep TensorFlow's native INFO/WARNING/ERROR lines out of a worker's output.

    Must run before TensorFlow is imported (it reads ``TF_CPP_MIN_LOG_LEVEL`` once). Overrides
    the variable (the Docker image sets it to 1): ``TUNER_TF_VERBOSE=1`` is the switch.
    """
    if os.environ.get(ENV_VERBOSE) != "1":
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = NATIVE_LOG_LEVEL


@contextlib.contextmanager
def native_stderr_captured() -> Iterator[None]:
    if os.environ.get(ENV_VERBOSE) == "1":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                capture.seek(0)
                sys.stderr.write(capture.read().decode(errors="replace"))
                sys.stderr.flush()
