"""``python -m tf_shopee.beam``: see :mod:`tf_shopee.beam.cli`."""

from tf_shopee.beam.cli import main

main()
