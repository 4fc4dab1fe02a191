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
