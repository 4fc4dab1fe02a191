"""Train an embedding model on converted TFRecords: ``python train.py --help``.

Thin entry point; the work is in :mod:`tf_shopee.training`.
"""

from tf_shopee.training import main

if __name__ == "__main__":
    main()
