#!/usr/bin/env python3
"""Convert a posting CSV + image folder into sharded TFRecords: see ``--help``.

All the work is in :mod:`tf_shopee.data.convert`; this file only calls its ``main``.
"""

from tf_shopee.data.convert import main

# The guard matters: image workers are spawned processes, which import this file again.
if __name__ == "__main__":
    main()
