#!/usr/bin/env python
"""Match postings and write submission.csv; see ``python predict.py --help``."""

from tf_shopee.predict import main

if __name__ == "__main__":
    main()
