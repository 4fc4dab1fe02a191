"""Helpers of the Beam pipeline tests (a module of its own name: ``conftest`` is ambiguous when
several test folders have one)."""

from __future__ import annotations

# 96 postings in shards of 16, batches of 8: 6 shards over 2 workers.
BATCH_SIZE = 8
SHARD_SIZE = 16
TWO_WORKERS = ("--direct_num_workers=2", "--direct_running_mode=multi_processing")


def embed_arguments(beam_set, csv: str, out, *extra) -> list[str]:
    """``beam embed`` arguments over ``csv`` with both tiny models, in small shards."""
    root = beam_set["root"]
    return ["embed", "--csv", str(root / csv), "--images", str(beam_set["images"]),
            "--model", str(beam_set["image"]), "--model", str(beam_set["text"]),
            "--out", str(out), "--batch-size", str(BATCH_SIZE), "--shard-size", str(SHARD_SIZE),
            "--quiet", *extra]
