"""Command line of the Beam pipeline: ``python -m tf_shopee.beam embed``."""

from __future__ import annotations

import argparse
import logging
import sys

from tf_shopee.errors import UserError, exit_on_user_error

DESCRIPTION = """\
Embed postings with exported SavedModels as an Apache Beam pipeline, and write sharded embeddings
(TFRecord: posting_id, image_phash, bad-photo reason, one float32 vector per model) plus
manifest.json (model fingerprints, counts, dimensions, bad photos with their reasons, shards with
their sizes and sha256) and the TF-IDF vocabulary + idf of the titles. predict.py --embeddings DIR
and python -m tf_shopee.catalog build|add --embeddings DIR read it without embedding again.

The same pipeline runs on the DirectRunner (this machine) and unchanged on Dataflow, Flink or
Spark: every flag this command does not know is a Beam pipeline option and goes to Beam as it is.
A run that is killed leaves its finished shards; the same command again embeds only the others."""

EPILOG = """\
Beam pipeline options (any of them; the common ones):
  --runner NAME                DirectRunner (default), DataflowRunner, FlinkRunner, SparkRunner
  --direct_num_workers N       DirectRunner: worker processes (with the next option)
  --direct_running_mode MODE   DirectRunner: in_memory, multi_threading or multi_processing
  --project, --region, --temp_location, --num_workers, --machine_type,
  --extra_package WHEEL, --requirements_file FILE   Dataflow (see docs: "Run it on a cluster")
  --flink_master HOST:PORT, --spark_master_url URL  Flink / Spark portable runners

examples:
  python -m tf_shopee.beam embed --csv train.csv --images train_images \\
      --model saved_models/image --model saved_models/text --out embeddings/ \\
      --direct_num_workers=2 --direct_running_mode=multi_processing
  python -m tf_shopee.beam embed --tfrecords tfrecords/train --fold 0 --model saved_models/text \\
      --out embeddings_fold0/
  predict.py --csv train.csv --embeddings embeddings/ --model saved_models/image \\
      --model saved_models/text --out submission.csv
  python -m tf_shopee.catalog build --csv train.csv --embeddings embeddings/ \\
      --model saved_models/image --model saved_models/text --out index/

Exit status: 0 done; 2 for bad input (message on stderr)."""


def build_argument_parser() -> argparse.ArgumentParser:
    """The ``embed`` sub-command (its own flags; the rest are Beam's)."""
    from tf_shopee.beam.pipeline import DEFAULT_SHARD_SIZE
    from tf_shopee.matching.embedding import DEFAULT_BATCH_SIZE

    parser = argparse.ArgumentParser(prog="python -m tf_shopee.beam", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    embed = commands.add_parser("embed", help="embed postings into sharded embeddings",
                                description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    data = embed.add_argument_group("postings")
    data.add_argument("--csv", default="", help="Shopee-style CSV (posting_id, title; image, "
                      "image_phash, label_group when present), or a .zip holding one; read by "
                      "this launcher with the project's CSV reader")
    data.add_argument("--images", default="", metavar="DIR",
                      help="folder the CSV's image column is relative to: a local folder, or "
                      "any Beam filesystem URL the workers can read (gs://bucket/images, "
                      "s3://...); the photos are read by the workers")
    data.add_argument("--tfrecords", default="", metavar="DIR",
                      help="a folder written by convert_tfrecords.py, photos included (instead "
                      "of --csv/--images; with --csv only the CSV's postings)")
    data.add_argument("--fold", type=int, default=None,
                      help="with --tfrecords: only the postings of this fold")
    data.add_argument("--encoding", default=None, metavar="NAME",
                      help="the CSV's text encoding (default: detected, as predict.py does)")
    model = embed.add_argument_group("models and output")
    model.add_argument("--model", action="append", default=[], dest="models", metavar="SM",
                       help="exported SavedModel folder (train.py --export; repeatable); local "
                       "or a Beam filesystem URL. Each is called through its serving signature "
                       "by RunInference and recorded in the manifest by its fingerprint")
    model.add_argument("--out", required=True, metavar="DIR",
                       help="output folder (local or a Beam filesystem URL): shards/, tfidf/, "
                       "manifest.json (written last). Run again into the same folder to resume")
    model.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                       help=f"postings per model call (default {DEFAULT_BATCH_SIZE}, as "
                       "predict.py: same batches, same embeddings)")
    model.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                       help=f"postings per shard, a multiple of --batch-size (default "
                       f"{DEFAULT_SHARD_SIZE}): the unit of work of one worker, of one output "
                       "file, and of resuming")
    model.add_argument("--threads", type=int, default=0,
                       help="TensorFlow threads per worker process (default 0: the machine's "
                       "cores divided by --direct_num_workers on the DirectRunner, TensorFlow's "
                       "own default elsewhere)")
    model.add_argument("--quiet", action="store_true", help="no progress or log lines")
    return parser


def _direct_workers(pipeline_args: list[str]) -> int:
    """``--direct_num_workers`` among the Beam options (1 when absent)."""
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

    return int(PipelineOptions(pipeline_args).view_as(DirectOptions).direct_num_workers or 1)


@exit_on_user_error
def main(argv=None) -> dict:
    """Entry point of ``python -m tf_shopee.beam``."""
    parser = build_argument_parser()
    arguments, pipeline_args = parser.parse_known_args(argv)
    # force: importing Beam (for the parser's defaults) already configured the root logger.
    logging.basicConfig(level=logging.WARNING if arguments.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr,
                        force=True)
    # Beam's own INFO lines (bundles, harness start and stop) would drown the progress lines.
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    try:
        import apache_beam  # noqa: F401
    except ImportError:
        raise UserError("beam embed needs apache-beam (pip install apache-beam==2.77.0, pinned "
                        "in requirements.txt)") from None
    from tf_shopee.beam.handler import cores_per_worker
    from tf_shopee.beam.pipeline import EmbedOptions, run_embed

    unknown = [value for value in pipeline_args if value.startswith("-")
               and not value.startswith("--")]
    if unknown:
        parser.error(f"unrecognised arguments: {' '.join(unknown)}")
    runner = next((value.split("=", 1)[1] for value in pipeline_args
                   if value.startswith("--runner=")), None)
    if runner is None and "--runner" in pipeline_args:
        runner = pipeline_args[pipeline_args.index("--runner") + 1]
    threads = arguments.threads
    if not threads and (runner or "DirectRunner") in ("DirectRunner", "direct"):
        workers = _direct_workers(pipeline_args)
        threads = cores_per_worker(workers) if workers > 1 else 0
    options = EmbedOptions(csv=arguments.csv, images=arguments.images,
                           tfrecords=arguments.tfrecords, fold=arguments.fold,
                           encoding=arguments.encoding, models=arguments.models,
                           out=arguments.out, batch_size=arguments.batch_size,
                           shard_size=arguments.shard_size, threads=threads,
                           progress=not arguments.quiet)
    manifest = run_embed(options, pipeline_args)
    counts = manifest["counts"]
    print(f"wrote embeddings of {counts['postings']} postings by "
          f"{', '.join(entry['source'] for entry in manifest['models'])} in "
          f"{len(manifest['shards'])} shard(s) to {options.out} ({counts['bad_photos']} photo(s) "
          "could not be used: listed in manifest.json)")
    return manifest
