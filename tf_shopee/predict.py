"""predict.py: the command line, and the self-matching job it runs.

For a set of postings (a Shopee-style CSV with an image folder, or a TFRecord folder written by
``convert_tfrecords.py``) :func:`run_prediction`

1. reads them (:mod:`tf_shopee.matching.postings`) and plans the sources and the decision before
   anything is embedded (:mod:`tf_shopee.matching.sources`, :mod:`tf_shopee.matching.plan`), so
   a bad name or value fails fast;
2. embeds them with each exported model, with a cache (:mod:`tf_shopee.matching.embedding`), and
   finds every posting's nearest neighbours in every source: each model, ``concat``, TF-IDF over
   titles, image_phash (:mod:`tf_shopee.matching.topk`, :mod:`tf_shopee.matching.model_free`);
3. with ``--search-thresholds``, chooses the decision on these labelled postings
   (:mod:`tf_shopee.matching.search`);
4. blends, thresholds, unites and applies min2 (:mod:`tf_shopee.matching.blend`,
   :mod:`tf_shopee.matching.decision`), writes ``posting_id,matches`` atomically and, with
   ``--evaluate``, the F1 table and a JSON report (:mod:`tf_shopee.matching.report`).

``--catalog INDEX`` matches the postings against a catalogue index instead
(:func:`tf_shopee.catalog.query.run_catalog_prediction`); :func:`main` dispatches.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from tf_shopee import import_tensorflow
from tf_shopee.catalog.query import format_catalog_table, run_catalog_prediction
from tf_shopee.errors import UserError, exit_on_user_error
from tf_shopee.export import load_exported, read_export_metadata
from tf_shopee.io_utils import read_json, refuse_overwriting_inputs, write_json_atomic
from tf_shopee.matching.blend import BLEND_PHASH_BITS, blend_embeddings
from tf_shopee.matching.decision import (
    THRESHOLD_METHOD_CHOICES,
    USE_CATALOGUE,
    Decision,
    apply_decision,
    blending_members,
    read_transfer_tests,
    write_thresholds,
)
from tf_shopee.matching.model_free import model_free_sources
from tf_shopee.matching.options import MatchOptions, PredictOptions, parse_threshold_overrides
from tf_shopee.matching.plan import MatchPlan, resolve_plan
from tf_shopee.matching.postings import Postings, read_postings
from tf_shopee.matching.precomputed import load_embeddings
from tf_shopee.matching.report import format_f1_table, report_bad_images, write_matches
from tf_shopee.matching.search import DEFAULT_INB_GRID, plot_thresholds
from tf_shopee.matching.sources import (
    COMBINED,
    PHASH,
    PlannedSources,
    Sources,
    embed_sources,
    image_based_sources,
    plan_sources,
)
from tf_shopee.matching.topk import top_k_neighbours
from tf_shopee.matching.transfer import format_transfer_table, search_with_transfer_test
from tf_shopee.metrics import mean_f1_from_matches, recall_at_1
from tf_shopee.models.kind import ModelKind
from tf_shopee.neighbours.phash import phash_neighbours

logger = logging.getLogger("tf_shopee.predict")


def planned_sources(postings: Postings, options: MatchOptions) -> PlannedSources:
    """The sources a self-matching run of ``postings`` builds, from the exports' metadata only
    (no model is loaded)."""
    return plan_sources(
        [(model_dir, read_export_metadata(model_dir)) for model_dir in options.models],
        has_phashes=postings.image_phashes is not None and any(postings.image_phashes),
        use_tfidf=options.use_tfidf, use_phash=options.use_phash, use_concat=options.use_concat)


def compute_sources(postings: Postings, options: MatchOptions,
                    planned: PlannedSources | None = None) -> Sources:
    """Embed with every model and find the top-k neighbours in every planned source
    (``planned``: :func:`planned_sources`, computed when not given)."""
    if planned is None:
        planned = planned_sources(postings, options)
    sources = Sources()
    if getattr(options, "embeddings", ""):  # made by python -m tf_shopee.beam embed
        sources.embeddings = load_embeddings(options.embeddings, planned.model_dirs, postings,
                                             use_concat=options.use_concat)
        sources.model_thresholds = {name: float(value)
                                    for name, value in planned.model_thresholds.items()}
        kinds = {name: ModelKind(read_export_metadata(model_dir)["kind"])
                 for name, model_dir in planned.model_dirs.items()}
    else:
        models = {name: load_exported(model_dir) for name, model_dir in planned.model_dirs.items()}
        sources.embeddings = embed_sources(
            models, postings, use_concat=options.use_concat, batch_size=options.batch_size,
            cache_dir=options.cache_dir, progress=options.progress, views=options.views)
        sources.model_thresholds = {name: float(model.threshold) for name, model in models.items()
                                    if model.threshold is not None}
        kinds = {name: ModelKind(model.kind) for name, model in models.items()}
    sources.image_based = image_based_sources(kinds)
    sources.bad_rows = tuple(sorted(postings.bad_images))
    for name, embeddings in sources.embeddings.items():
        started = time.perf_counter()
        sources.neighbours[name] = sources.usable(
            name, top_k_neighbours(embeddings, k=options.k, max_chunk_mb=options.max_chunk_mb))
        logger.info("%s: neighbours in %.1f s", name, time.perf_counter() - started)
    hashes = None
    if options.use_phash and postings.image_phashes is not None and any(postings.image_phashes):
        hashes = postings.image_phashes
    started = time.perf_counter()
    if options.use_tfidf:
        # TF-IDF (blended with its own and the phash neighbours), phash, and phash neighbours
        # whose titles agree: the settings chosen by benchmarks/quality_real.py.
        sources.neighbours.update(
            model_free_sources(postings.titles, hashes, max_chunk_mb=options.max_chunk_mb))
    elif hashes is not None:
        sources.neighbours[PHASH] = phash_neighbours(hashes, k=options.k,
                                                     max_chunk_mb=options.max_chunk_mb)
    if options.use_tfidf or hashes is not None:
        logger.info("model-free sources in %.1f s", time.perf_counter() - started)
    return sources


def run_prediction(options: PredictOptions) -> dict:
    """Read postings, match them with every source, write the submission (and the F1 report).

    Every name and value of ``--thresholds`` / ``--threshold`` is checked against the sources
    this run builds before anything is embedded.

    Returns:
        The report: ``{"rows", "sources", "used_sources", "decision", "thresholds" (of the
        sources in the union, in their units, for this pool's size), "threshold_origin", "min2",
        "inb", "options", "f1" (when labels are present and ``options.evaluate``: each source in
        the union alone, and ``combined``), "recall_at_1" (per embedding source, before
        blending; with ``f1``), "seconds", "submission"}``.
    """
    started = time.perf_counter()
    check_outputs(options)
    import_tensorflow()  # its start-up lines once, not twice
    postings = read_postings(**options.postings_arguments())
    check_outputs(options, postings)
    if options.needs_labels and postings.label_groups is None:
        raise UserError(
            "--evaluate and --search-thresholds need labels: a CSV with a label_group column "
            "(or a labelled TFRecord folder)"
        )
    logger.info("%d postings", len(postings))
    planned = planned_sources(postings, options)
    plan = resolve_plan(planned, options)  # fails on bad names or values before any embedding
    sources = compute_sources(postings, options, planned)
    transfer_tests = {}
    if options.search_thresholds:
        searched, _ = search_and_write_thresholds(sources, postings.label_groups, options)
        plan = resolve_plan(planned, options, searched=searched)
        transfer_tests = read_transfer_tests(Path(options.search_thresholds) / "thresholds.json")
    elif options.thresholds_file:
        transfer_tests = read_transfer_tests(options.thresholds_file)
    recall = None
    if options.evaluate:
        # Before blending: recall@1 measures the embeddings themselves.
        recall = {name: recall_at_1(sources.neighbours[name].indices, postings.label_groups)
                  for name in sources.embeddings}
    blend_sources(sources, plan, options)
    per_source, combined = apply_decision(sources.neighbours, plan.decision,
                                          max_matches=options.max_matches)
    matches = {**per_source, COMBINED: combined}
    write_matches(options.out, postings.posting_ids, postings.posting_ids, combined)
    bad_images = report_bad_images(postings, sources.image_based)
    decision = plan.decision
    report = {
        "rows": len(postings),
        "sources": list(sources.neighbours),
        "used_sources": list(decision.sources),
        "decision": decision.to_dict(),
        "thresholds": decision.thresholds_for(len(postings)),
        "threshold_origin": plan.origin,
        "min2": {"enabled": decision.min2, "source": decision.min2_source,
                 "floor": decision.min2_floor},
        "inb": {name: {"threshold": decision.rules[name].inb, "iterations": rounds,
                       "photos_within_bits": decision.rules[name].inb_phash,
                       "neighbours": decision.rules[name].inb_neighbours}
                for name, rounds in plan.inb_iterations.items()},
        "inb_iterations": options.inb_iterations,
        "options": options.describe(),
        "models": list(options.models),
        "submission": str(options.out),
        "bad_images": bad_images,
        "transfer_tests": transfer_tests,
    }
    if postings.encoding is not None:
        report["csv_encoding"] = postings.encoding.to_json()
    if options.evaluate:
        report["f1"] = {name: float(mean_f1_from_matches(match_lists, postings.label_groups))
                        for name, match_lists in matches.items()}
        report["recall_at_1"] = recall
        if options.search_thresholds:
            report["note"] = "thresholds were searched on this same labelled set (optimistic F1)"
    report["seconds"] = round(time.perf_counter() - started, 2)
    if options.report:
        write_json_atomic(options.report, report)
    return report



def _output_paths(options: PredictOptions) -> dict[str, Path | str]:
    outputs = {"--out": options.out, "--report": options.report}
    if options.search_thresholds:
        search = Path(options.search_thresholds)
        outputs.update({"--search-thresholds thresholds.json": search / "thresholds.json",
                        "--search-thresholds thresholds.png": search / "thresholds.png"})
    return outputs


def check_outputs(options: PredictOptions, postings: Postings | None = None) -> None:
    """Refuse outputs that would overwrite an input (the CSV, a TFRecord folder's file, a model,
    the thresholds file, one of the photos) or each other, before any work starts.

    Called twice: before reading (``postings`` None), and with the postings read, to compare
    the outputs with the photo files the CSV names (an image folder may also hold other files,
    such as the submission itself when it is the working folder).
    """
    if postings is None:
        inputs = {"--csv": options.csv, "--tfrecords": options.tfrecords,
                  "--thresholds": options.thresholds_file, "--embeddings": options.embeddings}
        inputs.update({f"--model {model}": model for model in options.models})
        refuse_overwriting_inputs(inputs, _output_paths(options))
        return
    if postings.image_paths is None:
        return
    photos = {os.path.realpath(path): row for row, path in enumerate(postings.image_paths)}
    for name, path in _output_paths(options).items():
        row = photos.get(os.path.realpath(path)) if path else None
        if row is not None:
            raise UserError(
                f"{name} {path} is the photo of posting {postings.posting_ids[row]} (an input): "
                "an output must never overwrite an input; choose another path"
            )



def blend_sources(sources: Sources, plan: MatchPlan, options: MatchOptions) -> None:
    """Neighbourhood blending of each embedding source the plan blends, in place: blend at its
    rule's ``inb`` threshold (with the photos ``inb_phash`` bits apart), search the neighbours
    again, as many rounds as planned."""
    for name, rounds in plan.inb_iterations.items():
        started = time.perf_counter()
        rule = plan.decision.rules[name]
        sources.embeddings[name], sources.neighbours[name] = _blend_rounds(
            sources, name, rule.inb, rule.inb_phash, rule.inb_neighbours, rounds, options)
        logger.info("%s: blended (%d round(s) at %.3f) in %.1f s", name, rounds, rule.inb,
                    time.perf_counter() - started)



def _blend_rounds(sources: Sources, name: str, threshold: float, phash_bits, max_neighbours,
                  rounds: int, options: MatchOptions):
    """``rounds`` rounds of :func:`blend_embeddings` of source ``name``, each over the previous
    round's neighbours: (blended embeddings, their usable neighbours)."""
    embeddings, neighbours = sources.embeddings[name], sources.neighbours[name]
    for _ in range(rounds):
        embeddings = blend_embeddings(embeddings, neighbours, threshold,
                                      phash_neighbours=sources.neighbours.get(PHASH),
                                      phash_bits=phash_bits, max_neighbours=max_neighbours)
        neighbours = sources.usable(name, top_k_neighbours(
            embeddings, k=options.k, max_chunk_mb=options.max_chunk_mb))
    return embeddings, neighbours


def search_rounds(options: MatchOptions) -> int:
    """Blending rounds of the options a search tries: ``--inb-iterations`` (default 1)."""
    return options.inb_iterations or 1


def blend_variants(sources: Sources, options: MatchOptions) -> dict[str, dict]:
    """Per embedding source, {(blend threshold, phash bits or None, neighbours blended or None)
    → neighbours after one round of :func:`blend_embeddings`} for every threshold of
    ``options.inb_grid`` (default :data:`~tf_shopee.matching.search.DEFAULT_INB_GRID`) and every
    count of ``options.inb_neighbours``, without and (when the postings have phashes) with the
    photos :data:`BLEND_PHASH_BITS` apart: the blending options the search tries (none with
    ``--inb-iterations 0``), each blended ``--inb-iterations`` rounds (default 1).
    :func:`blend_sources` reproduces the chosen one exactly."""
    variants: dict[str, dict] = {}
    if options.inb_iterations == 0:
        return variants
    phash = sources.neighbours.get(PHASH)
    photo_options = [None] if phash is None else [None, BLEND_PHASH_BITS]
    grid = tuple(options.inb_grid) or DEFAULT_INB_GRID
    rounds = search_rounds(options)
    for name in sources.embeddings:
        started = time.perf_counter()
        variants[name] = {
            (blend, bits, count): _blend_rounds(sources, name, blend, bits, count, rounds,
                                                options)[1]
            for blend in grid for bits in photo_options for count in options.inb_neighbours
        }
        logger.info("%s: %d blended variants for the search in %.1f s", name,
                    len(variants[name]), time.perf_counter() - started)
    return variants


def models_trained_on_search_postings(options: MatchOptions) -> list[str]:
    """The ``--model`` folders trained on the postings a search runs on: ``--tfrecords`` is
    the model's training folder and ``--fold`` one of its training folds (or no fold). A search
    on a model's training products sees its cosines tighter than on new products, a shift no
    transfer test on those postings can see: the decision then transfers worse than it looks
    (benchmarks/quality_transfer.py: 0.013-0.017 F1 below the best method on such rows)."""
    tfrecords, fold = getattr(options, "tfrecords", ""), getattr(options, "fold", None)
    if not tfrecords:
        return []
    trained = []
    for model_dir in options.models:
        workdir = read_export_metadata(model_dir).get("workdir")
        config_path = Path(workdir) / "config.json" if workdir else None
        try:
            data = read_json(config_path)["data"] if config_path else None
        except (OSError, UserError, KeyError, TypeError):
            data = None
        if not data or not data.get("tfrecords"):
            continue
        if os.path.realpath(data["tfrecords"]) != os.path.realpath(tfrecords):
            continue
        held_out = {int(data.get("validation_fold", -1))} | {
            int(part) for part in str(data.get("holdout_folds", "")).split(",")
            if part.strip().isdigit()}
        if fold is None or fold not in held_out:
            trained.append(str(model_dir))
    return trained


def search_and_write_thresholds(sources: Sources, labels: np.ndarray,
                                options: MatchOptions) -> tuple[Decision, dict]:
    """Choose the decision on this labelled set, the threshold method by the transfer test
    (:func:`tf_shopee.matching.transfer.search_with_transfer_test` over every source, with the
    blending options of :func:`blend_variants`); when it blends neighbours, also a decision
    for catalogue queries (no blending, its own transfer test). Write ``thresholds.json`` and
    ``thresholds.png`` into ``options.search_thresholds``; return the decision and the
    file's content."""
    trained_on = models_trained_on_search_postings(options)
    if trained_on:
        logger.warning(
            "the thresholds are searched on postings that %s was trained on: its scores are "
            "tighter on them than on new products, which the transfer test cannot see, so the "
            "decision may hold worse on new products than the search reports; search on a fold "
            "the model never trained on (train.py --set data.holdout_folds=N, or its "
            "validation fold)", ", ".join(trained_on))
    inb_variants = blend_variants(sources, options)
    started = time.perf_counter()
    result = search_with_transfer_test(sources.neighbours, labels,
                                       method=options.threshold_method,
                                       inb_variants=inb_variants, max_matches=options.max_matches)
    rounds = search_rounds(options)
    if rounds != 1:  # the blending options were blended that many rounds: the rules say so
        rules = [*result["decision"]["rules"].values(),
                 *(entry["best_alone"]["rule"] for entry in result["sources"].values())]
        for rule in rules:
            if rule.get("inb") is not None:
                rule["inb_iterations"] = rounds
    decision = Decision.from_dict(result["decision"], where="search result")
    catalogue = None
    if blending_members(decision):
        logger.info("the decision blends %s, which a catalogue cannot do per query: searching a "
                    "decision for catalogue queries too (no blending)",
                    ", ".join(blending_members(decision)))
        catalogue = search_with_transfer_test(sources.neighbours, labels,
                                              method=options.threshold_method,
                                              max_matches=options.max_matches, use=USE_CATALOGUE)
    out = Path(options.search_thresholds)
    payload = write_thresholds(out / "thresholds.json", result, catalogue=catalogue, settings={
        "searched_on_rows": len(labels), "k": options.k, "models": list(options.models),
        "use_tfidf": options.use_tfidf, "use_phash": options.use_phash,
        "use_concat": options.use_concat, "threshold_method": options.threshold_method,
        "models_trained_on_these_postings": trained_on,
    })
    plot_thresholds(out / "thresholds.png", result)
    logger.info("thresholds searched on %d labelled postings in %.1f s (F1 %.4f on them; best "
                "single source %s %.4f): %s → %s", len(labels), time.perf_counter() - started,
                result["f1"], result["best_single"]["source"], result["best_single"]["f1"],
                decision.describe(), out)
    for use, test in read_transfer_tests(out / "thresholds.json").items():
        logger.info("transfer test (%s), why method %s was chosen:\n%s", use, test["chosen"],
                    format_transfer_table(test))
    return decision, payload



def _parse_neighbour_counts(text: str) -> tuple[int | None, ...]:
    """``--inb-neighbours``: '10,20,all' → (10, 20, None)."""
    counts = []
    for part in text.split(","):
        part = part.strip().lower()
        if part == "all":
            counts.append(None)
        elif part.isdigit():
            counts.append(int(part))
        else:
            raise argparse.ArgumentTypeError(f"not a neighbour count or 'all': {part!r}")
    if not counts:
        raise argparse.ArgumentTypeError("give at least one count")
    return tuple(dict.fromkeys(counts))


def _parse_float_list(text: str) -> tuple[float, ...]:
    """``--inb-grid``: '0.2,0.3' → (0.2, 0.3)."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from error
    if not values:
        raise argparse.ArgumentTypeError("give at least one number")
    return values


def build_argument_parser() -> argparse.ArgumentParser:
    """The command line of ``predict.py``; every default is :class:`PredictOptions`' own."""
    defaults = PredictOptions()
    parser = argparse.ArgumentParser(
        prog="predict.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Match postings: embed with exported models, find neighbours (embeddings, TF-IDF "
            "titles, image_phash), apply thresholds, union and min2, write posting_id,matches."
        ),
        epilog=(
            "Sources: one per --model (named by its kind: image, text, multimodal), 'concat' (image"
            " + text embeddings) when both kinds are given, 'tfidf' (titles), 'phash' and "
            "'phash_text' (photos a few bits apart whose titles agree; when the CSV has "
            "image_phash). Without --model only the model-free sources are used.\n\n"
            "Units: phash and phash_text thresholds are Hamming distances in bits (phash=8 "
            "matches photos at most 8 of 64 bits apart); every other threshold is a similarity "
            "in [0, 1].\n\n"
            "Decision, later wins: shipped defaults (chosen on the real Shopee train.csv by "
            "benchmarks/quality_real.py: TF-IDF alone, phash and phash_text left out of the "
            "union) with each model joining the union at its validation threshold < "
            "--thresholds FILE (which sources enter the union, their "
            "thresholds, local scaling, blending and min2, applied exactly as searched) < "
            "--threshold SOURCE=VALUE (a plain threshold; adds the source to the union). "
            "--search-thresholds DIR chooses all of it on this labelled set and writes "
            "DIR/thresholds.json and DIR/thresholds.png.\n\n"
            "examples:\n"
            "  python predict.py --csv test.csv --images test_images --model saved_models/image "
            "--model saved_models/text --out submission.csv\n"
            "  python predict.py --csv train.csv --out train_matches.csv --evaluate "
            "--report report.json\n"
            "  python predict.py --tfrecords tfrecords/train --fold 1 --model saved_models/text "
            "--out fold1.csv --search-thresholds thresholds/\n"
            "  python predict.py --tfrecords tfrecords/train --fold 0 --model saved_models/text "
            "--thresholds thresholds/thresholds.json --out fold0.csv --evaluate\n"
            "  python predict.py --catalog index/ --csv new_listings.csv --images photos "
            "--out matches.csv\n\n"
            "Exit status: 0 done; 2 for bad input (message on stderr)."
        ),
    )
    data = parser.add_argument_group("postings")
    data.add_argument("--csv", default=defaults.csv, help="Shopee-style CSV (posting_id, title; "
                      "image, image_phash, label_group when present), or a .zip holding one")
    data.add_argument("--images", default=defaults.images, metavar="DIR",
                      help="folder the CSV's image column is relative to")
    data.add_argument("--tfrecords", default=defaults.tfrecords, metavar="DIR",
                      help="a folder written by convert_tfrecords.py (instead of --images; with "
                      "--csv only the CSV's postings are matched)")
    data.add_argument("--fold", type=int, default=defaults.fold,
                      help="with --tfrecords: match only the postings of this fold")
    data.add_argument("--catalog", default=defaults.catalog, metavar="INDEX",
                      help="match the postings against this catalogue index (built by python -m "
                      "tf_shopee.catalog build) instead of against each other; matches are "
                      "catalogue posting ids; --model defaults to the index's models")
    data.add_argument("--search", default=defaults.search, choices=("exact", "ann", "auto"),
                      help="with --catalog: exact search, approximate (FAISS IVF), or auto "
                      "(approximate from 200,000 catalogue rows on; default)")
    data.add_argument("--nprobe", type=int, default=defaults.nprobe,
                      help="with --search ann: IVF cells probed per query (default 16)")
    data.add_argument("--query-blend", type=int, default=defaults.query_blend, metavar="N",
                      help="with --catalog: blend each query's embeddings with those of its N "
                      "nearest other queries in this CSV (a batch of listings often holds several "
                      "photos of one product) before the catalogue search (default 0: off)")
    data.add_argument("--query-blend-threshold", type=float,
                      default=defaults.query_blend_threshold, metavar="T",
                      help="with --query-blend: only queries at least this similar are blended "
                      "(default %(default)s)")
    model = parser.add_argument_group("models and thresholds")
    model.add_argument("--model", action="append", default=[], dest="models", metavar="DIR",
                       help="exported model: a SavedModel folder or a LiteRT .tflite file "
                       "(python -m tf_shopee.export litert; repeatable)")
    model.add_argument("--tta", default=defaults.tta, metavar="VIEWS",
                       help="test-time augmentation of image models: each photo is embedded as "
                       "the mean of its views: flip (mirror image), crop (centre and corner "
                       "crops of 80%% of the side), or flip,crop (default: none)")
    model.add_argument("--embeddings", default=defaults.embeddings, metavar="DIR",
                       help="read the postings' embeddings from this python -m tf_shopee.beam "
                       "embed output instead of embedding them (no --images needed); it must "
                       "have been made with every --model (checked by fingerprint)")
    model.add_argument("--thresholds", default=defaults.thresholds_file, metavar="FILE",
                       help="thresholds.json from a threshold search: applied exactly")
    model.add_argument("--threshold", action="append", default=[], metavar="SOURCE=VALUE",
                       help="match SOURCE at a plain threshold (bits for phash sources; "
                       "repeatable)")
    model.add_argument("--search-thresholds", default=defaults.search_thresholds, metavar="DIR",
                       help="choose the decision on this labelled set; write "
                       "DIR/thresholds.json+png")
    model.add_argument("--threshold-method", default=defaults.threshold_method,
                       choices=THRESHOLD_METHOD_CHOICES,
                       help="how the search makes thresholds hold on a bigger pool: local "
                       "scaling, refitting on sub-pools (size), both, a background shift, the "
                       "search data's matches per posting (count: a pool of unseen products with "
                       "groups of the same size), or plain fixed thresholds; auto (default): the "
                       "transfer test chooses, i.e. each method is fitted on sub-pools of a "
                       "quarter of the label groups, applied to the whole set and scored on the "
                       "groups held out, and the best transferred F1 ships (the test runs and is "
                       "printed in every case)")
    model.add_argument("--no-tfidf", action="store_true", help="do not use TF-IDF title matches")
    model.add_argument("--no-phash", action="store_true", help="do not use image_phash matches")
    model.add_argument("--no-concat", action="store_true",
                       help="do not add the concatenated image+text source")
    model.add_argument("--no-min2", action="store_true",
                       help="do not give lonely postings their nearest neighbour")
    model.add_argument("--inb-iterations", type=int, default=defaults.inb_iterations,
                       help="neighbourhood blending rounds of embedding sources (default: as "
                       "the thresholds file or search decides, off without one; 0: off); with "
                       "--search-thresholds, every blending option tried is blended this many "
                       "rounds and the thresholds file records it")
    model.add_argument("--inb-neighbours", type=_parse_neighbour_counts, default=None,
                       metavar="LIST",
                       help="with --search-thresholds: how many nearest neighbours (itself "
                       "included) blending may pull in, comma-separated counts or 'all', each "
                       "tried, e.g. 10,20,all (default: all, i.e. --k); big product groups "
                       "blend best over a bounded neighbourhood")
    model.add_argument("--inb-grid", type=_parse_float_list, default=None, metavar="LIST",
                       help="with --search-thresholds: the blend thresholds tried, e.g. "
                       "0.2,0.3,0.4 (default 0.5 to 0.8 by 0.05)")
    model.add_argument("--k", type=int, default=defaults.k,
                       help=f"neighbours per posting (default {defaults.k})")
    model.add_argument("--max-matches", type=int, default=defaults.max_matches,
                       help=f"matches per posting, itself included (default "
                       f"{defaults.max_matches})")
    model.add_argument("--max-chunk-mb", type=int, default=defaults.max_chunk_mb,
                       help=f"memory budget of one similarity chunk in MiB (default "
                       f"{defaults.max_chunk_mb})")
    output = parser.add_argument_group("output")
    output.add_argument("--out", default=defaults.out, help="submission CSV to write")
    output.add_argument("--evaluate", action="store_true",
                        help="print mean F1 per source and combined, and recall@1 (the nearest "
                        "other posting is the same product) per embedding source (needs "
                        "label_group)")
    output.add_argument("--report", default=defaults.report, metavar="JSON",
                        help="write a JSON report")
    output.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help=f"postings per model call (default {defaults.batch_size})")
    output.add_argument("--cache-dir", default=defaults.cache_dir, metavar="DIR",
                        help="embedding cache (default: .embedding_cache beside --out)")
    data.add_argument("--encoding", default=None, metavar="NAME",
                      help="the CSV's text encoding, e.g. cp1252 (default: detected, as "
                      "convert_tfrecords.py does; the decision is printed and reported)")
    output.add_argument("--quiet", action="store_true",
                        help="no progress bars or log lines (warnings stay)")
    return parser


def options_from_arguments(arguments: argparse.Namespace) -> PredictOptions:
    """The :class:`PredictOptions` of parsed ``predict.py`` arguments."""
    return PredictOptions(
        csv=arguments.csv,
        images=arguments.images,
        tfrecords=arguments.tfrecords,
        fold=arguments.fold,
        models=arguments.models,
        thresholds_file=arguments.thresholds,
        threshold_overrides=parse_threshold_overrides(arguments.threshold),
        out=arguments.out,
        evaluate=arguments.evaluate,
        report=arguments.report,
        search_thresholds=arguments.search_thresholds,
        batch_size=arguments.batch_size,
        cache_dir=arguments.cache_dir,
        use_tfidf=not arguments.no_tfidf,
        use_phash=not arguments.no_phash,
        use_concat=not arguments.no_concat,
        min2=not arguments.no_min2,
        inb_iterations=arguments.inb_iterations,
        inb_neighbours=(arguments.inb_neighbours if arguments.inb_neighbours is not None
                        else PredictOptions.inb_neighbours),
        inb_grid=arguments.inb_grid or PredictOptions.inb_grid,
        threshold_method=arguments.threshold_method,
        k=arguments.k,
        max_matches=arguments.max_matches,
        max_chunk_mb=arguments.max_chunk_mb,
        progress=not arguments.quiet,
        tta=arguments.tta,
        query_blend=arguments.query_blend,
        query_blend_threshold=arguments.query_blend_threshold,
        catalog=arguments.catalog,
        search=arguments.search,
        nprobe=arguments.nprobe,
        encoding=arguments.encoding,
        embeddings=arguments.embeddings,
    )



@exit_on_user_error
def main(argv=None) -> dict:
    """Entry point of ``predict.py``: self-matching, or queries against ``--catalog``."""
    arguments = build_argument_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if arguments.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    options = options_from_arguments(arguments)
    if options.catalog:
        report = run_catalog_prediction(options)
        print(f"wrote {report['rows']} rows to {options.out}")
        if options.evaluate:
            print(format_catalog_table(report))
        return report
    report = run_prediction(options)
    print(f"wrote {report['rows']} rows to {options.out}")
    if options.evaluate:
        print(format_f1_table(report))
        for use, test in report.get("transfer_tests", {}).items():
            print(f"\ntransfer test of the thresholds ({use}): why method {test['chosen']} "
                  "was chosen")
            print(format_transfer_table(test))
    return report
