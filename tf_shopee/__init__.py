"""tf_shopee: find duplicate product listings (Shopee "Price Match Guarantee") with TensorFlow.

Importing the package is cheap: TensorFlow is imported by the modules that need it. Before that
happens we set environment defaults, because TensorFlow reads them only at import time:

* ``TF_ENABLE_ONEDNN_OPTS=1``: on the AMD CPUs we measured, oneDNN kernels are off by default and
  turning them on makes the large similarity matmuls about 1.5x faster.
* ``TF_CPP_MIN_LOG_LEVEL=3``: hide the log lines of TensorFlow's C++ runtime ("failed call to
  cuInit" on a machine without a GPU, "oneDNN supports DT_INT64 only on platforms with AVX-512",
  "GeneratorDatasetOp ... will not be optimized"): on a CPU machine every command printed them,
  and none of them asks the user to do anything. Errors still reach the user as Python
  exceptions, and our own warnings (Python logging and prints) are not affected.

Both are ``setdefault``: a user's own setting wins. ``TF_SHOPEE_VERBOSE=1`` sets no log default
and keeps TensorFlow's start-up lines and its and absl's Python INFO lines (see
:func:`import_tensorflow`):
everything TensorFlow says comes back, for debugging a device or driver problem.
"""

import os

# TF_SHOPEE_VERBOSE=1 (any value but "" and "0") keeps every line TensorFlow logs.
VERBOSE = os.environ.get("TF_SHOPEE_VERBOSE", "").strip() not in ("", "0")

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
if not VERBOSE:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"


def import_tensorflow():
    """Import TensorFlow without its start-up banner (once each with ``TF_SHOPEE_VERBOSE=1``).

    TensorFlow 2.21 prints its C++ start-up lines ("All log messages before absl::InitializeLog()
    ...", "oneDNN custom operations are on", "Could not find cuda drivers") from two of its
    libraries, so every line comes twice, and TF_CPP_MIN_LOG_LEVEL cannot hide them: they are
    written before TensorFlow reads it. The command-line tools call this before anything else
    imports TensorFlow: the import runs with stderr (file descriptor 2) sent to a temporary
    file, whose lines are then written to stderr: the runtime's information and warning lines
    not at all (with ``TF_SHOPEE_VERBOSE=1``: once each), its error lines and anything else
    printed meanwhile once each, in order. Later calls (or TensorFlow already imported) do
    nothing.
    """
    import sys

    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    import re
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            seen = set()
            for line in captured.read().decode("utf-8", "replace").splitlines(keepends=True):
                # "I0000 00:00:1796122911.680471   17256 port.cc:153] ..." → "I port.cc:153] ...".
                key = re.sub(r"^([IWEF])\d{4} [\d:.]+\s+\d+ ", r"\1 ", line)
                if key in seen or (not VERBOSE and _is_start_up_chatter(line)):
                    continue
                seen.add(key)
                sys.stderr.write(line)
            sys.stderr.flush()
    if not VERBOSE:
        # TensorFlow's and absl's Python loggers report internals at INFO ("Assets written to:
        # ...", "Sharding callback duration: 203 microseconds" in every training run) through the
        # root logger our commands configure at INFO; their warnings still show.
        import logging

        for name in ("tensorflow", "absl"):
            logging.getLogger(name).setLevel(logging.WARNING)
    return tensorflow


def _is_start_up_chatter(line: str) -> bool:
    """Whether a line written while TensorFlow was imported is its runtime's information or
    warning chatter ("I0000 00:00:1796122911.680471   17256 port.cc:153] oneDNN custom ...").

    Error and fatal lines, and anything not in the runtime's log format (a Python warning, say),
    are not chatter: they are shown.
    """
    import re

    return line.startswith("WARNING: All log messages before absl::InitializeLog()") or bool(
        re.match(r"[IW]\d{4} [\d:.]+\s+\d+ \S+:\d+\] ", line)
    )
