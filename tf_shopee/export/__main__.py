"""``python -m tf_shopee.export``: convert or combine exported models.

    python -m tf_shopee.export litert SM OUT.tflite [--float16 | --int8 --calibration CSV
        --images DIR [--calibration-size N]]
    python -m tf_shopee.export concat SM_A SM_B [...] OUT [--weights 1,1]

``concat`` writes one image export whose embedding is the parts' embeddings concatenated (see
:mod:`tf_shopee.export.ensemble`).

``litert`` converts an image export (train.py --export) to a LiteRT model (see
:mod:`tf_shopee.export.litert`); the default is float16. int8 calibrates on up to N photos (200) of
the CSV's ``image`` column: photos like the ones the model will meet, never the evaluation set's.
Exit status: 0 done; 2 for bad input (the message names the file or option).
"""

from __future__ import annotations

import argparse
import logging
import sys

from tf_shopee.errors import UserError, exit_on_user_error


def build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tf_shopee.export",
        description="Convert an exported tf_shopee model.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    litert = commands.add_parser(
        "litert", help="image export → LiteRT (.tflite) float32 / float16 / int8",
        description="Convert an image export (SavedModel folder) to a LiteRT model: decoded "
                    "pixels in, features out; tf_shopee loads it wherever it loads an export.",
        epilog="example:\n  python -m tf_shopee.export litert saved_models/lite0 lite0_int8.tflite"
               " \\\n      --int8 --calibration data/train.csv --images data/train_images",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    litert.add_argument("saved_model", metavar="SM", help="image export folder (train.py --export)")
    litert.add_argument("out", metavar="OUT.tflite", help="LiteRT model file to write")
    mode = litert.add_mutually_exclusive_group()
    mode.add_argument("--float16", action="store_const", dest="quantization", const="float16",
                      help="float16 weights (the default)")
    mode.add_argument("--int8", action="store_const", dest="quantization", const="int8",
                      help="full-integer int8, calibrated on --calibration photos")
    mode.add_argument("--float32", action="store_const", dest="quantization", const="float32",
                      help="no quantization (the reference conversion)")
    litert.add_argument("--calibration", metavar="CSV",
                        help="posting CSV whose image column gives representative photos "
                             "(needed by --int8; with the others, used to check the result)")
    litert.add_argument("--images", metavar="DIR",
                        help="folder the calibration CSV's image column is relative to")
    litert.add_argument("--calibration-size", type=int, default=200, metavar="N",
                        help="photos drawn from the CSV (default 200)")
    litert.add_argument("--no-overwrite", action="store_true",
                        help="refuse to replace an existing OUT.tflite")
    litert.add_argument("--quiet", action="store_true", help="no progress lines")
    concat = commands.add_parser(
        "concat", help="image exports → one export of their concatenated embeddings",
        description="Concatenate the L2-normalised embeddings of image exports (each part "
                    "decodes the photo at its own size) into one image export.",
        epilog="example:\n  python -m tf_shopee.export concat saved_models/lite0 "
               "saved_models/lite2 saved_models/lite0_lite2",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    concat.add_argument("paths", nargs="+", metavar="SM",
                        help="two or more image export folders, then the output folder")
    concat.add_argument("--weights", default=None, metavar="LIST",
                        help="comma-separated weight per part (default: equal); the cosine of "
                             "the result is the weighted mean of the parts' cosines")
    concat.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


@exit_on_user_error
def main(argv=None) -> int:
    args = build_argument_parser().parse_args(argv)
    from tf_shopee import import_tensorflow

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import_tensorflow()
    from tf_shopee.export.litert import calibration_photos, convert_to_litert

    say = (lambda message: None) if args.quiet else (lambda message: print(message, flush=True))
    if args.command == "concat":
        from tf_shopee.export.ensemble import concat_exports

        if len(args.paths) < 3:
            raise UserError("concat needs at least two image exports and an output folder")
        weights = None
        if args.weights:
            try:
                weights = [float(value) for value in args.weights.split(",")]
            except ValueError:
                raise UserError(f"--weights: comma-separated numbers, got {args.weights!r}") \
                    from None
        concat_exports(args.paths[:-1], args.paths[-1], weights=weights, say=say)
        return 0
    quantization = args.quantization or "float16"
    if args.calibration_size < 1:
        raise UserError(f"--calibration-size must be >= 1, got {args.calibration_size}")
    if (args.calibration is None) != (args.images is None):
        raise UserError("--calibration CSV and --images DIR go together")
    if quantization == "int8" and args.calibration is None:
        raise UserError("--int8 needs representative photos: --calibration CSV --images DIR")
    photos = None
    if args.calibration:
        photos = calibration_photos(args.calibration, args.images, count=args.calibration_size)
    convert_to_litert(args.saved_model, args.out, quantization=quantization, calibration=photos,
                      calibration_source=args.calibration, overwrite=not args.no_overwrite,
                      say=say)
    return 0


if __name__ == "__main__":
    sys.exit(main())
