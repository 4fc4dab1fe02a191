"""Train an embedding model on converted TFRecords: ``python train.py --help``.

Thin entry point; the work is in :mod:`tf_shopee.training.cli`.
"""

from tf_shopee.training.cli import main

if __name__ == "__main__":
    main()
