"""Command line of the catalogue index: ``python -m tf_shopee.catalog build|add|info``."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from tf_shopee.catalog.index import (
    BuildOptions,
    add_to_index,
    build_index,
    read_manifest,
    verify_files,
)
from tf_shopee.errors import UserError, exit_on_user_error
from tf_shopee.matching.options import parse_threshold_overrides


def _add_posting_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--csv", default="", help="Shopee-style CSV (posting_id, title; image, "
                        "image_phash, label_group when present), or a .zip holding one")
    parser.add_argument("--images", default="", metavar="DIR",
                        help="folder the CSV's image column is relative to")
    parser.add_argument("--tfrecords", default="", metavar="DIR",
                        help="a folder written by convert_tfrecords.py (instead of --images)")
    parser.add_argument("--fold", type=int, default=None,
                        help="with --tfrecords: only the postings of this fold")
    parser.add_argument("--model", action="append", default=[], dest="models", metavar="DIR",
                        help="exported model: a SavedModel folder or a LiteRT .tflite file "
                        "(repeatable)")
    parser.add_argument("--embeddings", default="", metavar="DIR",
                        help="read the postings' embeddings from this python -m tf_shopee.beam "
                        "embed output instead of embedding them (made with the same --model "
                        "folders, checked by fingerprint; no --images needed)")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="postings per model call (default 64)")
    parser.add_argument("--max-chunk-mb", type=int, default=256,
                        help="memory budget of one similarity chunk in MiB (default 256)")
    parser.add_argument("--ann", default="auto", choices=("auto", "always", "never"),
                        help="store a FAISS IVF index per embedding source: auto (from 200,000 "
                        "rows on; default), always, never")
    parser.add_argument("--ann-index", default="ivf_flat", choices=("ivf_flat", "ivf_pq"),
                        help="kind of approximate index: ivf_flat (whole vectors; default) or "
                        "ivf_pq (product-quantised codes, about a fifteenth of the memory, "
                        "candidates rescored exactly)")
    parser.add_argument("--thresholds", default="", metavar="FILE",
                        help="thresholds.json (from predict.py --search-thresholds) to keep with "
                        "the index")
    parser.add_argument("--threshold", action="append", default=[], metavar="SOURCE=VALUE",
                        help="a source's threshold to keep with the index (repeatable)")
    parser.add_argument("--encoding", default=None, metavar="NAME",
                        help="the CSV's text encoding, e.g. cp1252 (default: detected; UTF-8, "
                        "else a single-byte code page, as predict.py does)")
    parser.add_argument("--no-wait", action="store_true",
                        help="stop at once when another build or add is writing the same index "
                        "(default: wait for it to finish)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or log lines")


def build_argument_parser() -> argparse.ArgumentParser:
    """The ``build``, ``add`` and ``info`` sub-commands."""
    parser = argparse.ArgumentParser(
        prog="python -m tf_shopee.catalog",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A persistent catalogue index: embeddings per model, posting ids and labels, "
        "the TF-IDF vocabulary and idf fitted on the catalogue, phashes, thresholds and a "
        "manifest, in one folder written atomically. Match new postings against it with "
        "predict.py --catalog INDEX, or browse it with python -m tf_shopee.catalog.app.",
        epilog="examples:\n"
        "  python -m tf_shopee.catalog build --csv catalog.csv --images photos "
        "--model saved_models/image --model saved_models/text --out index/\n"
        "  python -m tf_shopee.catalog add --index index/ --csv new.csv --images photos\n"
        "  python -m tf_shopee.catalog info --index index/\n\n"
        "Writers of one index take turns: a second build or add waits for the first (or stops "
        "with --no-wait); readers (predict.py --catalog, the app) always see one whole version.\n"
        "Exit status: 0 done; 2 for bad input (message on stderr).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="embed a catalogue and write a new index")
    _add_posting_arguments(build)
    build.add_argument("--out", required=True, metavar="INDEX", help="the index folder to write")
    build.add_argument("--no-concat", action="store_true",
                       help="do not store the concatenated image+text source")
    build.add_argument("--no-thumbnails", action="store_true",
                       help="do not store small copies of the photos (the web app shows them)")
    build.add_argument("--overwrite", action="store_true",
                       help="replace an existing index at --out")
    build.add_argument("--tta", default="", metavar="VIEWS",
                       help="embed each catalogue photo as the mean of its test-time views: "
                       "flip, crop or flip,crop (image models; default none)")
    build.add_argument("--catalog-augment", type=int, default=1, metavar="N",
                       help="store N views of each catalogue photo (the photo and N-1 shop-like "
                       "variants: studio background replaced, shrunk, tiled, colour-jittered), "
                       "searched as one item by its best view (image models; default 1)")
    add = commands.add_parser("add", help="append postings to an index (only they are embedded)")
    _add_posting_arguments(add)
    add.add_argument("--index", required=True, metavar="INDEX", help="the index to extend")
    info = commands.add_parser("info", help="print what an index holds")
    info.add_argument("--index", required=True, metavar="INDEX",
                      help="the index folder (catalog build --out)")
    info.add_argument("--verify", action="store_true",
                      help="also check every file's sha256 against the manifest")
    info.add_argument("--json", action="store_true", help="print the manifest as JSON")
    return parser


def _options(arguments) -> BuildOptions:
    return BuildOptions(
        csv=arguments.csv, images=arguments.images, tfrecords=arguments.tfrecords,
        fold=arguments.fold, models=arguments.models, out=getattr(arguments, "out", ""),
        thresholds_file=arguments.thresholds,
        threshold_overrides=parse_threshold_overrides(arguments.threshold),
        use_concat=not getattr(arguments, "no_concat", False),
        thumbnails=not getattr(arguments, "no_thumbnails", False), ann=arguments.ann,
        ann_index=arguments.ann_index, embeddings=arguments.embeddings,
        batch_size=arguments.batch_size, max_chunk_mb=arguments.max_chunk_mb,
        progress=not arguments.quiet, overwrite=getattr(arguments, "overwrite", False),
        encoding=arguments.encoding, wait=not arguments.no_wait,
        tta=getattr(arguments, "tta", ""),
        catalog_augment=getattr(arguments, "catalog_augment", 1),
    )


def describe(directory: str, *, verify: bool = False) -> str:
    """A plain-text summary of an index: rows, sources, models, thresholds, files, history."""

    manifest = verify_files(directory, checksums=verify)  # one version: manifest and files
    size = sum(entry["bytes"] for entry in manifest["files"].values())
    lines = [
        f"catalogue index {directory} (format {manifest['format_version']}, "
        f"tf_shopee {manifest['tf_shopee_version']})",
        f"  rows: {manifest['rows']}; labels: {'yes' if manifest['has_labels'] else 'no'}; "
        f"photos: {'yes' if manifest['has_images'] else 'no'}; phash: "
        f"{'yes' if manifest['has_phash'] else 'no'}; thumbnails: "
        f"{'yes' if manifest['thumbnails'] else 'no'}",
        f"  files: {len(manifest['files'])}, {size / 2**20:.1f} MiB"
        + ("; sha256 verified" if verify else ""),
    ]
    for entry in manifest["models"]:
        threshold = entry["threshold"]
        lines.append(
            f"  model {entry['source']}: {entry['kind']}, {entry['embedding_dim']}-d, fingerprint "
            f"{entry['fingerprint'][:12]}, threshold "
            f"{'-' if threshold is None else f'{threshold:.3f}'}, from {entry['path']}")
    if manifest.get("concat"):
        lines.append(f"  concat: {' + '.join(manifest['concat'])}")
    views = manifest.get("views") or {}
    if views.get("tta") or (views.get("catalog_augment") or 1) > 1:
        lines.append(f"  photos embedded with test-time views: {views.get('tta') or 'none'}; "
                     f"views per photo searched as one item: {views.get('catalog_augment', 1)}")
    tfidf = manifest.get("tfidf")
    lines.append("  tfidf: " + (f"vocabulary of {tfidf['vocabulary_size']} words fitted on the "
                                "catalogue" if tfidf else "none (no title has a word)"))
    for name, entry in (manifest.get("ann") or {}).items():
        lines.append(f"  approximate index {name}: FAISS {entry.get('kind', 'ivf_flat')}, "
                     f"{entry['cells']} cells trained on "
                     f"{entry['trained_rows']} rows")
    thresholds = manifest["thresholds"]
    if thresholds.get("file") or thresholds.get("overrides"):
        lines.append(f"  thresholds: file {thresholds.get('file') or '-'}, overrides "
                     f"{thresholds.get('overrides') or '-'}")
    for step in manifest["history"]:
        source = step["csv"] or step["tfrecords"]
        lines.append(f"  {step['at']} {step['action']} {step['rows']} postings from {source}")
    return "\n".join(lines)


@exit_on_user_error
def main(argv=None) -> dict:
    """Entry point of ``python -m tf_shopee.catalog``."""
    arguments = build_argument_parser().parse_args(argv)
    quiet = getattr(arguments, "quiet", False)
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if arguments.command == "info":
        if arguments.json:
            manifest = read_manifest(arguments.index)
            print(json.dumps(manifest, indent=2))
            return manifest
        print(describe(arguments.index, verify=arguments.verify))
        return read_manifest(arguments.index)
    from tf_shopee import import_tensorflow

    import_tensorflow()  # build and add embed: without its start-up chatter (TF_SHOPEE_VERBOSE=1)
    options = _options(arguments)
    if not (options.csv or options.tfrecords):
        raise UserError("give --csv (with --images for photos) or --tfrecords")
    if arguments.command == "build":
        manifest = build_index(options)
        print(f"wrote a catalogue index of {manifest['rows']} postings to {options.out}")
    else:
        manifest = add_to_index(arguments.index, options)
        print(f"catalogue index {arguments.index} now holds {manifest['rows']} postings")
    return manifest
