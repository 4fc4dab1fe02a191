#!/usr/bin/env python3
"""What the transfer test costs: the threshold search on the 34,250 real Shopee postings with and
without it, side by side in one process.

Data: ``../shared/data/shopee/train.csv.zip`` (titles and image_phash; the model-free sources
TF-IDF, phash and phash_text, built once as ``predict.py --csv train.csv.zip`` builds them). When
it is absent the script says so and exits 0.

Timed, one after the other on the same neighbour lists:

1. ``search_decision(method="local+size")``: the search as it was before the transfer test
   (the default method then);
2. ``search_with_transfer_test(method="auto")``: what ``predict.py --search-thresholds`` runs
   now (every method fitted on 3 sub-pools of a quarter of the label groups and scored on the
   whole set, then the chosen method refitted on all of it).

The ratio is the number to read (the machine is shared; the load average is recorded).

    nice -n 10 python -m benchmarks.bench_transfer_test \\
        --json benchmarks/results/bench_transfer_test.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from benchmarks.common import (
    REPOSITORY,
    RESULTS,
    SHOPEE_TRAIN_CSV,
    command_line,
    data_absent,
    environment,
)
from tf_shopee.errors import exit_on_user_error
from tf_shopee.io_utils import relative_paths, write_json_atomic


@exit_on_user_error
def main(argv=None) -> int:
    """Time both searches (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(SHOPEE_TRAIN_CSV))
    parser.add_argument("--json", default=str(RESULTS / "bench_transfer_test.json"))
    args = parser.parse_args(argv)
    if data_absent(args.data):
        return 0
    from tf_shopee.matching.postings import read_postings
    from tf_shopee.matching.search import search_decision
    from tf_shopee.matching.transfer import format_transfer_table, search_with_transfer_test
    from tf_shopee.predict import (
        blend_variants,
        build_argument_parser,
        compute_sources,
        options_from_arguments,
    )

    report = {"command": command_line("bench_transfer_test", argv),
              "environment": environment()}
    options = options_from_arguments(build_argument_parser().parse_args(
        ["--csv", args.data, "--quiet"]))
    postings = read_postings(**options.postings_arguments())
    sources = compute_sources(postings, options)
    variants = blend_variants(sources, options)
    labels = postings.label_groups
    started = time.perf_counter()
    before = search_decision(sources.neighbours, labels, method="local+size",
                             inb_variants=variants)
    report["search_local_size"] = {"seconds": round(time.perf_counter() - started, 1),
                                   "f1": round(before["f1"], 4),
                                   "load_average_after": list(os.getloadavg())}
    started = time.perf_counter()
    after = search_with_transfer_test(sources.neighbours, labels, inb_variants=variants)
    report["search_with_transfer_test"] = {
        "seconds": round(time.perf_counter() - started, 1), "f1": round(after["f1"], 4),
        "method": after["method"], "transfer_table": format_transfer_table(after["transfer"]),
        "load_average_after": list(os.getloadavg())}
    report["rows"] = int(len(labels))
    report["ratio"] = round(report["search_with_transfer_test"]["seconds"]
                            / report["search_local_size"]["seconds"], 2)
    print(f"{len(labels)} postings: search {report['search_local_size']['seconds']} s, with the "
          f"transfer test {report['search_with_transfer_test']['seconds']} s "
          f"({report['ratio']}x)")
    print(report["search_with_transfer_test"]["transfer_table"])
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.json, relative_paths(report, REPOSITORY))
    return 0


if __name__ == "__main__":
    sys.exit(main())
