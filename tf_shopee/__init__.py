"""tf_shopee: find duplicate product listings (Shopee "Price Match Guarantee") with TensorFlow.

Importing the package is cheap: TensorFlow is imported by the modules that need it. Before that
happens we set two environment defaults, because TensorFlow reads them only at import time:

* ``TF_ENABLE_ONEDNN_OPTS=1``: on the AMD CPUs we measured, oneDNN kernels are off by default and
  turning them on makes the large similarity matmuls about 1.5x faster.
* ``TF_CPP_MIN_LOG_LEVEL=1``: hide TensorFlow's INFO chatter so our own warnings stay visible.

Both are ``setdefault``: a user's own setting wins.
"""

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

__version__ = "0.1.0"


def import_tensorflow():
    """Import TensorFlow once, showing its start-up banner once.

    TensorFlow 2.21 prints its C++ start-up lines ("All log messages before absl::InitializeLog()
    ...", "oneDNN custom operations are on", "Could not find cuda drivers") from two of its
    libraries, so every line comes twice, and TF_CPP_MIN_LOG_LEVEL cannot hide them: they are
    written before TensorFlow reads it. The command-line tools call this before anything else
    imports TensorFlow: the import runs with stderr (file descriptor 2) sent to a temporary
    file, whose lines are then written to stderr once each. Anything else printed meanwhile is
    kept, in order. Later calls (or TensorFlow already imported) do nothing.
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
                if key not in seen:
                    seen.add(key)
                    sys.stderr.write(line)
            sys.stderr.flush()
    return tensorflow
