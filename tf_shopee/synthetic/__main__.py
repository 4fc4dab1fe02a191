"""``python -m tf_shopee.synthetic``: the command line of
:func:`tf_shopee.synthetic.generate_dataset` (the same as ``tf-shopee-synthetic``)."""

from tf_shopee.synthetic.dataset import main

if __name__ == "__main__":
    main()
