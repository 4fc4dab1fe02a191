"""Writing a synthetic set: :func:`generate_dataset` plans the families, renders them in a
pool of worker processes (one family at a time, each from its own random stream) and writes
``train.csv`` and ``train_images/``; :func:`main` is its command line
(``tf-shopee-synthetic``, ``python -m tf_shopee.synthetic``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import imagehash
import numpy as np
import pandas as pd
from PIL import Image

from tf_shopee.config import MIN_IMAGE_SIZE
from tf_shopee.errors import UserError, exit_on_user_error
from tf_shopee.io_utils import atomic_path
from tf_shopee.synthetic.drawing import draw_product
from tf_shopee.synthetic.photos import Shot, encode_jpeg, make_shot, render_shot, reupload
from tf_shopee.synthetic.plans import (
    FAMILY_STREAM,
    MAX_GROUP_SIZE,
    FamilyTask,
    Product,
    Seller,
    make_product,
    make_sellers,
    plan_families,
)
from tf_shopee.synthetic.titles import compose_title, relist_title

CSV_COLUMNS = ("posting_id", "image", "image_phash", "title", "label_group")
CSV_NAME = "train.csv"
IMAGES_DIRNAME = "train_images"
DEFAULT_IMAGE_SIZE = 256
MAX_IMAGE_SIZE = 1024
MAX_POSTINGS = 1_000_000

# Set in each worker by _initialise_worker: (sellers, image size, images folder).
_WORKER_STATE: dict = {}

# How a posting's photo is obtained (the rest are new photos of the product).
REUSE_FILE_RATE = 0.08  # the same image file as an earlier posting of the group
REUPLOAD_RATE = 0.28  # a recompressed / lightly edited copy of an earlier posting's photo
OFFICIAL_PHOTO_RATE = 0.8  # copies take the group's first photo rather than any earlier one
SIBLING_TEMPLATE_RATE = 0.2  # a variant photographed in the same set-up as its sibling
SIBLING_FILE_RATE = 0.01  # a posting showing the sibling variant's photo (a wrong photo)
RELIST_TITLE_RATE = 0.25  # a title copied from an earlier posting of the group, touched up


def _initialise_worker(sellers: tuple[Seller, ...], image_size: int, images_dir: str) -> None:
    _WORKER_STATE.update(sellers=sellers, image_size=image_size, images_dir=Path(images_dir))


def _write_image(jpeg: bytes) -> tuple[str, str]:
    """Store the JPEG under its MD5 name (atomically); return (file name, phash hex)."""
    name = hashlib.md5(jpeg).hexdigest() + ".jpg"
    path = _WORKER_STATE["images_dir"] / name
    if not path.exists():
        temporary = path.with_name(f".{name}.{os.getpid()}.tmp")
        temporary.write_bytes(jpeg)
        os.replace(temporary, path)
    with Image.open(io.BytesIO(jpeg)) as decoded:
        phash = str(imagehash.phash(decoded))
    return name, phash


def _generate_family(task: FamilyTask) -> list[tuple[str, str, str, str, int]]:
    """Rows (posting_id, image, image_phash, title, label_group) of every posting in a family."""
    sellers = _WORKER_STATE["sellers"]
    product_rng, seller_rng, title_rng, photo_rng = (
        np.random.default_rng([task.seed, FAMILY_STREAM, task.index, stream])
        for stream in range(4)
    )
    product = make_product(product_rng, len(task.groups))
    group_sellers = [
        [sellers[int(index)]
         for index in seller_rng.integers(len(sellers), size=len(group.posting_ids))]
        for group in task.groups
    ]
    titles = _family_titles(title_rng, product, group_sellers)
    images = _family_images(photo_rng, product, group_sellers, _WORKER_STATE["image_size"])
    rows = []
    for group_index, group in enumerate(task.groups):
        for index, posting_id in enumerate(group.posting_ids):
            name, phash = images[group_index][index]
            rows.append((posting_id, name, phash, titles[group_index][index], group.label_group))
    return rows


def _family_titles(rng: np.random.Generator, product: Product,
                   group_sellers: list[list[Seller]]) -> list[list[str]]:
    """Titles of every posting, per group: mostly written afresh by each seller, sometimes
    copied from an earlier listing of the same product and touched up."""
    family_titles = []
    for variant, sellers in zip(product.variants, group_sellers):
        titles: list[str] = []
        for seller in sellers:
            if titles and rng.random() < RELIST_TITLE_RATE:
                title = relist_title(rng, titles[int(rng.integers(len(titles)))], seller)
            else:
                title = compose_title(rng, product, variant, seller)
            titles.append(title)
        family_titles.append(titles)
    return family_titles


def _pick_source(rng: np.random.Generator, items: list):
    """An earlier photo to copy: the group's first ("official") one most of the time."""
    if rng.random() < OFFICIAL_PHOTO_RATE:
        return items[0]
    return items[int(rng.integers(len(items)))]


def _family_images(rng: np.random.Generator, product: Product,
                   group_sellers: list[list[Seller]], side: int) -> list[list[tuple[str, str]]]:
    """(file name, phash) of every posting's photo, per group; new files are written."""
    first_shot: Shot | None = None
    family_images: list[tuple[str, str]] = []
    result = []
    for variant, sellers in zip(product.variants, group_sellers):
        product_image = draw_product(variant.design, side)
        shots: list[Shot] = []
        images: list[tuple[str, str]] = []
        for index, seller in enumerate(sellers):
            choice = rng.random()
            image = shot = None
            if images and choice < REUSE_FILE_RATE:
                image = _pick_source(rng, images)
            elif shots and choice < REUSE_FILE_RATE + REUPLOAD_RATE:
                shot = reupload(rng, _pick_source(rng, shots))
            elif family_images and choice > 1.0 - SIBLING_FILE_RATE:
                image = family_images[int(rng.integers(len(family_images)))]
            elif first_shot is not None and index == 0 and rng.random() < SIBLING_TEMPLATE_RATE:
                shot = dataclasses.replace(reupload(rng, first_shot), sticker=None)
            else:
                shot = make_shot(rng, seller)
            if image is None:
                photo = render_shot(product_image, shot, side)
                image = _write_image(encode_jpeg(photo, shot.quality))
                shots.append(shot)
                if first_shot is None:
                    first_shot = shot
            images.append(image)
        family_images.extend(images)
        result.append(images)
    return result


# --------------------------------------------------------------------------------------------
# Public API.
# --------------------------------------------------------------------------------------------


def _check_int(name: str, value, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise UserError(f"--{name.replace('_', '-')} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise UserError(f"--{name.replace('_', '-')} must be {bounds}, got {value}")
    return value


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def generate_dataset(
    out_dir: str | os.PathLike,
    *,
    postings: int,
    seed: int,
    image_size: int = DEFAULT_IMAGE_SIZE,
    workers: int | None = None,
    progress: bool = False,
    group_size: int | None = None,
) -> pd.DataFrame:
    """Write a synthetic mini-Shopee set: ``out_dir/train.csv`` and ``out_dir/train_images/``.

    Args:
        out_dir: Output folder (created if missing). An existing train.csv is replaced; image files
            are named by the MD5 of their bytes, so rerunning into the same folder rewrites nothing
            twice (images of an earlier, different run stay in train_images/ unreferenced).
        postings: Number of postings (rows), at least 2.
        seed: Non-negative random seed; the same seed gives the same CSV and image bytes, whatever
            ``workers`` is.
        image_size: Side of the square JPEG photos in pixels, from
            :data:`tf_shopee.config.MIN_IMAGE_SIZE` (32) to 1024.
        workers: Processes to render with; default: the CPUs this process may use.
        progress: Print a progress line to stderr as families finish.
        group_size: Give every label group this many postings (2..50) instead of drawing sizes
            from the real Shopee histogram: a set with many photos of each product, for
            pretraining an image backbone on classes it can actually learn from.

    Returns:
        The rows of train.csv: posting_id, image, image_phash, title (str) and label_group (int64),
        sorted by image file name like Kaggle's train.csv.

    Raises:
        UserError: an argument is out of range, or ``out_dir`` cannot be written.
    """
    postings = _check_int("postings", postings, 2, MAX_POSTINGS)
    seed = _check_int("seed", seed, 0)
    image_size = _check_int("image_size", image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
    workers = _default_workers() if workers is None else _check_int("workers", workers, 1, 256)
    if group_size is not None:
        group_size = _check_int("group_size", group_size, 2, MAX_GROUP_SIZE)

    out_dir = Path(out_dir)
    images_dir = out_dir / IMAGES_DIRNAME
    try:
        images_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create output folder {images_dir}: {error}") from error

    families = plan_families(postings, seed, group_size)
    # About one seller per four postings, so sellers recur across products like real shops.
    sellers = make_sellers(seed, max(2, postings // 4))
    initial_arguments = (sellers, image_size, str(images_dir))
    workers = min(workers, len(families))
    rows: list[tuple] = []
    started = time.perf_counter()

    # On a terminal the progress line rewrites itself; in a log, about ten lines in all.
    interactive = sys.stderr.isatty()
    log_every = max(1, len(families) // 10)

    def report(done: int) -> None:
        if not progress or not (interactive or done % log_every == 0 or done == len(families)):
            return
        print(f"{chr(13) if interactive else ''}synthetic: {done}/{len(families)} product "
              f"families ({time.perf_counter() - started:.0f} s)",
              end="" if interactive else "\n", file=sys.stderr, flush=True)

    if workers == 1:
        _initialise_worker(*initial_arguments)
        for done, family_rows in enumerate(map(_generate_family, families), start=1):
            rows.extend(family_rows)
            report(done)
    else:
        # "spawn": a fresh interpreter per worker, safe even when the caller has TensorFlow's
        # threads running (forking those can deadlock).
        context = multiprocessing.get_context("spawn")
        with context.Pool(workers, initializer=_initialise_worker,
                          initargs=initial_arguments) as pool:
            chunk = max(1, min(16, len(families) // (workers * 8)))
            for done, family_rows in enumerate(pool.imap(_generate_family, families, chunk),
                                               start=1):
                rows.extend(family_rows)
                report(done)
    if progress and interactive:
        print(file=sys.stderr)

    frame = pd.DataFrame(rows, columns=list(CSV_COLUMNS))
    frame["label_group"] = frame["label_group"].astype(np.int64)
    frame = frame.sort_values(["image", "posting_id"], kind="stable").reset_index(drop=True)
    with atomic_path(out_dir / CSV_NAME) as temporary:
        frame.to_csv(temporary, index=False, lineterminator="\n")
    return frame


def build_argument_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``python -m tf_shopee.synthetic``."""
    parser = argparse.ArgumentParser(
        prog="python -m tf_shopee.synthetic",
        description="Write a synthetic mini-Shopee set: OUT/train.csv (posting_id, image, "
        "image_phash, title, label_group) and OUT/train_images/*.jpg.",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--postings", type=int, required=True, help="number of postings (>= 2)")
    parser.add_argument("--seed", type=int, required=True, help="random seed (>= 0)")
    parser.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE,
                        help=f"photo side in pixels (default {DEFAULT_IMAGE_SIZE})")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: all usable CPUs)")
    parser.add_argument("--group-size", type=int, default=None,
                        help="postings per label group, 2..50 (default: sizes drawn from the "
                        "real Shopee histogram)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    return parser


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point (``tf-shopee-synthetic``); bad arguments exit with status 2."""
    arguments = build_argument_parser().parse_args(argv)
    started = time.perf_counter()
    frame = generate_dataset(
        arguments.out,
        postings=arguments.postings,
        seed=arguments.seed,
        image_size=arguments.image_size,
        workers=arguments.workers,
        progress=not arguments.quiet,
        group_size=arguments.group_size,
    )
    elapsed = time.perf_counter() - started
    print(
        f"wrote {len(frame)} postings, {frame['label_group'].nunique()} label groups and "
        f"{frame['image'].nunique()} images to {Path(arguments.out) / CSV_NAME} in {elapsed:.1f} s"
    )

