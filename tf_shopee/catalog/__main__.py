"""``python -m tf_shopee.catalog build|add|info``: see :mod:`tf_shopee.catalog.cli`."""

from tf_shopee.catalog.cli import main

if __name__ == "__main__":
    main()
