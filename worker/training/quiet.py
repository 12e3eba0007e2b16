"""Keep TensorFlow's native start-up chatter off the user's terminal.

``import tensorflow`` and the first device query print lines from C++ straight to file
descriptor 2 ("oneDNN custom operations are on", "failed call to cuInit" on machines without a
GPU), before ``TF_CPP_MIN_LOG_LEVEL`` takes effect. They bury our own one-line errors and
progress. While TensorFlow starts, fd 2 goes to a temporary file; if starting fails, the
captured text is replayed so nothing needed for a diagnosis is lost. ``TUNER_TF_VERBOSE=1``
turns the capture off.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import os
import sys
import tempfile

ENV_VERBOSE = "TUNER_TF_VERBOSE"


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
