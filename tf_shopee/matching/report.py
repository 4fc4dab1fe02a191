"""What a run hands back: the matches CSV, the ``--evaluate`` table, the unusable photos.
"""

from __future__ import annotations

import csv
import logging

import numpy as np

from tf_shopee.io_utils import atomic_path
from tf_shopee.matching.decision import Decision, describe_min2
from tf_shopee.matching.postings import Postings

logger = logging.getLogger("tf_shopee.matching")


def write_matches(path: str, query_ids: list[str], target_ids: list[str],
                  matches: list[np.ndarray]) -> None:
    """Write ``posting_id,matches`` atomically: per query, the ids of its matches (rows of
    ``target_ids``) separated by spaces. A half-written CSV never sits under the final name. Ids
    are written verbatim, quoted where CSV needs it (a comma or a quote inside an id).

    Self-matching writes the postings' own ids (``target_ids`` is ``query_ids``); catalogue
    queries write catalogue ids.
    """
    ids = np.asarray(target_ids, dtype=object)
    with atomic_path(path) as temporary:
        with open(temporary, "w", encoding="utf-8", newline="") as stream:
            writer = csv.writer(stream, lineterminator="\n")
            writer.writerow(["posting_id", "matches"])
            for query_id, found in zip(query_ids, matches):
                writer.writerow([query_id, " ".join(ids[np.asarray(found, dtype=np.int64)])])


def format_f1_table(report: dict) -> str:
    """The ``--evaluate`` table of a :func:`run_prediction` report.

    One row per source: its rule (thresholds in the source's units, for this pool) and its mean
    F1 alone (no min2) when it is in the union; a source the decision leaves out says so and
    shows no F1. Then the combined row, what min2 and blending did, and where the thresholds
    came from.
    """
    decision = Decision.from_dict(report["decision"], where="report")
    thresholds = report["thresholds"]
    f1 = report["f1"]
    recall = report.get("recall_at_1") or {}
    rows = []
    for name in report["sources"]:
        if name in decision.sources:
            rule = decision.rules[name].describe(name, thresholds.get(name))
            rows.append((name, rule, "yes", f"{f1[name]:.4f}", recall.get(name)))
        else:
            rows.append((name, "-", "no (left out of the union)", "-", recall.get(name)))
    union = f"union of {len(decision.sources)} source(s), min2 {describe_min2(decision)}"
    rows.append(("combined", union, "submission", f"{f1['combined']:.4f}", None))
    header = ["source", "rule", "in submission", "mean F1"]
    if recall:
        header.append("recall@1")
    table = [header] + [
        [*row[:4], *([] if not recall else
                     ["-" if row[4] is None else f"{row[4]:.4f}"])] for row in rows
    ]
    widths = [max(len(line[column]) for line in table) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
             for line in table]
    lines.insert(1, "  ".join("-" * width for width in widths))
    origins = sorted(set(report.get("threshold_origin", {}).values()))
    lines.append(f"method: {decision.method}; thresholds from: {', '.join(origins) or '-'}; "
                 "F1 of a source is its matches alone, without min2")
    if report.get("inb"):
        blended = ", ".join(
            f"{name} at {entry['threshold']:g}"
            + ("" if entry.get("neighbours") is None
               else f" over the {entry['neighbours']} nearest")
            + ("" if entry.get("photos_within_bits") is None
               else f" with photos <= {int(entry['photos_within_bits'])} bits")
            + f" ({entry['iterations']} round(s))" for name, entry in report["inb"].items())
        lines.append(f"neighbourhood blending: {blended}")
    return "\n".join(lines)



def report_bad_images(postings: Postings, image_based: set[str]) -> list[dict]:
    """Warn about postings whose photo could not be used; the report's list of them."""
    if not postings.bad_images:
        return []
    listed = [
        {"posting_id": postings.posting_ids[row],
         "image": postings.image_names[row] if postings.image_names is not None else None,
         "reason": reason}
        for row, reason in sorted(postings.bad_images.items())
    ]
    used_by = sorted(image_based) or ["no source (no image model was given)"]
    shown = "\n".join(f"  {item['posting_id']}: {item['reason']}" for item in listed[:10])
    more = ""
    if len(listed) > 10:
        more = f"\n  ... and {len(listed) - 10} more (all in the --report JSON)"
    logger.warning(
        "%d posting(s) have an image that cannot be used; %s leave them out and their other "
        "sources (titles, image_phash) match them:\n%s%s",
        len(listed), ", ".join(used_by), shown, more,
    )
    return listed
