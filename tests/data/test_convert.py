"""CSV → TFRecord conversion: round trip, bad inputs, rejects, test/text-only sets, resume.

Images are tiny files made here with Pillow; the real-data tests skip when ../shared is absent.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tf_shopee.data.convert import (
    PROGRESS_NAME,
    assign_folds,
    convert_csv,
    read_csv_table,
    shard_order,
)
from tf_shopee.data.manifest import load_label_map, load_manifest, shard_paths
from tf_shopee.data.postings_csv import decode_byte_escapes
from tf_shopee.data.schema import parse_postings
from tf_shopee.errors import UserError

REPOSITORY = Path(__file__).resolve().parents[2]
SCRIPT = REPOSITORY / "convert_tfrecords.py"
REAL_DATA = REPOSITORY.parent / "shared" / "data" / "shopee"
KAGGLE_COLUMNS = ["posting_id", "image", "image_phash", "title", "label_group"]


# ------------------------------------------------------------------------------------------
# helpers


def picture(size: tuple[int, int], seed: int) -> np.ndarray:
    """A smooth random RGB picture (gradients + blobs) so perceptual hashes differ by seed."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for _ in range(3):
        a, b, c = rng.uniform(-1, 1, 3)
        channels.append(128 + 100 * np.sin(a * x / 7 + b * y / 5 + c * 6))
    return np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)


def save_image(path: Path, *, size=(40, 32), seed=0, mode="RGB", image_format="JPEG") -> bytes:
    """Write a picture in the given PIL mode and format; return the file bytes."""
    image = Image.fromarray(picture(size, seed))
    if mode == "RGBA":
        image = image.convert("RGBA")
        alpha = np.full((size[1], size[0]), 255, dtype=np.uint8)
        alpha[:, : size[0] // 2] = 0  # left half fully transparent
        image.putalpha(Image.fromarray(alpha))
    elif mode != "RGB":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=image_format)
    return path.read_bytes()


def write_csv(path: Path, rows: list[dict], columns=KAGGLE_COLUMNS) -> Path:
    """Write rows (dicts) as a CSV with exactly ``columns``."""
    with open(path, "w", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([row.get(column, "") for column in columns])
    return path


def simple_dataset(root: Path, count: int = 12, group_size: int = 2) -> tuple[Path, Path]:
    """``count`` small JPEG postings in groups of ``group_size``; returns (csv, images dir)."""
    images = root / "images"
    rows = []
    for index in range(count):
        save_image(images / f"{index}.jpg", seed=index)
        rows.append(
            {
                "posting_id": f"posting_{index}",
                "image": f"{index}.jpg",
                "title": f"Product {index // group_size} variant {index}",
                "label_group": 1000 + index // group_size,
            }
        )
    return write_csv(root / "train.csv", rows), images


def read_postings(out_dir: Path) -> list[dict]:
    """Every posting in the folder's shards (manifest order), as plain Python values."""
    import tensorflow as tf

    postings = []
    for path in shard_paths(out_dir):
        serialized = [record.numpy() for record in tf.data.TFRecordDataset(path)]
        if not serialized:
            continue
        parsed = {key: tensor.numpy() for key, tensor in parse_postings(serialized).items()}
        for index in range(len(serialized)):
            posting = {}
            for key, values in parsed.items():
                value = values[index]
                posting[key] = value if isinstance(value, bytes) else int(value)
            postings.append(posting)
    return postings


def run_cli(*arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run convert_tfrecords.py in a subprocess and return the finished process."""
    return subprocess.run(
        [sys.executable, str(SCRIPT), *arguments],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def shard_files(out_dir: Path) -> list[Path]:
    return sorted(out_dir.glob("*.tfrec")) if out_dir.exists() else []


def png_with_claimed_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header (IHDR) claims ``width`` x ``height``: a decompression bomb stand-in.

    Only the header is rewritten (with a valid CRC); the pixel data stays that of a 1x1 image, so
    a converter that decoded before checking the size would fail with a different error.
    """
    stream = io.BytesIO()
    Image.new("L", (1, 1)).save(stream, format="PNG")
    data = bytearray(stream.getvalue())
    ihdr_start = 8  # after the PNG signature: length(4) "IHDR"(4) data(13) crc(4)
    chunk_data = bytearray(data[ihdr_start + 8 : ihdr_start + 8 + 13])
    chunk_data[0:8] = struct.pack(">II", width, height)
    crc = zlib.crc32(b"IHDR" + bytes(chunk_data)) & 0xFFFFFFFF
    data[ihdr_start + 8 : ihdr_start + 8 + 13] = chunk_data
    data[ihdr_start + 21 : ihdr_start + 25] = struct.pack(">I", crc)
    return bytes(data)


# ------------------------------------------------------------------------------------------
# round trip


def test_round_trip_of_every_field_with_mixed_image_formats(tmp_path):
    import imagehash
    import tensorflow as tf

    images = tmp_path / "images"
    originals = {
        "rgb.jpg": save_image(images / "rgb.jpg", seed=1),
        "grey.jpg": save_image(images / "grey.jpg", seed=2, mode="L"),
        "cmyk.jpg": save_image(images / "cmyk.jpg", seed=3, mode="CMYK"),
        "alpha.png": save_image(images / "alpha.png", seed=4, mode="RGBA", image_format="PNG"),
        "big.jpg": save_image(images / "big.jpg", size=(120, 60), seed=5),
        "sub/nested.jpg": save_image(images / "sub" / "nested.jpg", seed=6),
        # A PNG saved under a .jpg name: the format, not the file name, decides re-encoding.
        "misnamed.jpg": save_image(images / "misnamed.jpg", seed=7, image_format="PNG"),
    }
    names = list(originals) + ["rgb.jpg"]  # two postings may share one image file, as in Kaggle
    rows = []
    for index, name in enumerate(names):
        rows.append(
            {
                "posting_id": f"id_{index}",
                "image": name,
                # Half the rows carry a phash, the others get one computed from the photo.
                "image_phash": "8F0f00ff00ff00ff" if index % 2 == 0 else "",
                "title": f"Título {index} ✓" if index != 3 else "",
                "label_group": [7, 7, 9, 9, 5, 5, 11, 11][index],
            }
        )
    csv_path = write_csv(tmp_path / "train.csv", rows)
    out_dir = tmp_path / "out"

    manifest = convert_csv(
        csv_path,
        images,
        out_dir,
        folds=2,
        examples_per_shard=3,
        max_side=64,
        workers=1,
        progress=False,
    )

    assert manifest == load_manifest(out_dir, verify_checksums=True)
    assert manifest["schema_version"] == 1 and manifest["split"] == "train"
    assert manifest["source_csv"] == str(csv_path) and manifest["images_dir"] == str(images)
    assert manifest["has_images"] and manifest["has_labels"]
    assert [shard["file"] for shard in manifest["shards"]] == [
        f"train-0000{index}-of-00003.tfrec" for index in range(3)
    ]
    counts = manifest["counts"]
    assert counts["rows"] == counts["written"] == 8 and counts["rejected"] == 0
    assert counts["empty_titles"] == 1 and counts["invalid_utf8_titles"] == 0
    # alpha.png, big.jpg (120 px > 64) and misnamed.jpg (really a PNG) are re-encoded.
    assert counts["reencoded_images"] == 3
    assert counts["computed_phashes"] == 4

    label_map = load_label_map(out_dir)
    assert label_map == {5: 0, 7: 1, 9: 2, 11: 3}
    assert manifest["num_labels"] == 4 and manifest["label_counts"] == [2, 2, 2, 2]
    expected_folds = assign_folds([row["label_group"] for row in rows], 2)
    assert manifest["num_folds"] == 2
    assert manifest["fold_counts"] == {str(fold): expected_folds.count(fold) for fold in range(2)}

    postings = {posting["posting_id"].decode(): posting for posting in read_postings(out_dir)}
    assert len(postings) == 8
    for index, row in enumerate(rows):
        posting = postings[row["posting_id"]]
        name = row["image"]
        assert posting["title"].decode("utf-8") == row["title"]
        assert posting["label_group"] == row["label_group"]
        assert posting["label"] == label_map[row["label_group"]]
        assert posting["fold"] == expected_folds[index]
        stored = posting["image"]
        decoded = tf.io.decode_jpeg(stored, channels=3).numpy()
        assert decoded.shape == (posting["height"], posting["width"], 3)
        original = Image.open(images / name)
        if name in ("rgb.jpg", "grey.jpg", "cmyk.jpg", "sub/nested.jpg"):
            assert stored == originals[name]  # small JPEGs are kept byte for byte
        else:
            assert stored[:2] == b"\xff\xd8" and stored != originals[name]
            assert max(posting["height"], posting["width"]) <= 64
        if name == "big.jpg":
            assert (posting["width"], posting["height"]) == (64, 32)
        if row["image_phash"]:
            assert posting["image_phash"] == row["image_phash"].lower().encode()
        else:
            assert posting["image_phash"] == str(imagehash.phash(original)).encode()
        if name == "alpha.png":
            # The transparent left half is composited on white, the opaque right half kept.
            assert decoded[:, :10].mean() > 245
            reference = np.asarray(original.convert("RGB"))[:, 30:]
            assert np.abs(decoded[:, 30:].astype(int) - reference).mean() < 12


def test_folds_follow_group_k_fold_in_row_order_and_keep_groups_whole():
    from sklearn.model_selection import GroupKFold

    rng = np.random.default_rng(3)
    label_groups = rng.integers(0, 40, size=150).tolist()
    folds = assign_folds(label_groups, 3)
    splits = list(GroupKFold(n_splits=3).split(np.zeros(150), groups=label_groups))
    for fold, (_, test_rows) in enumerate(splits):
        assert sorted(np.flatnonzero(np.asarray(folds) == fold)) == sorted(test_rows)
    fold_of_group = {}
    for group, fold in zip(label_groups, folds):
        assert fold_of_group.setdefault(group, fold) == fold
    with pytest.raises(UserError, match="--folds 5 needs at least 5 label groups"):
        assign_folds([1, 1, 2, 3], 5)


def test_shard_order_depends_on_ids_and_seed_only():
    ids = [f"id_{index}" for index in range(50)]
    order = shard_order(ids, 0)
    assert sorted(order) == list(range(50)) and order != list(range(50))
    reversed_ids = ids[::-1]
    # The same ids in another row order land in the same hash order.
    assert [reversed_ids[row] for row in shard_order(reversed_ids, 0)] == [ids[r] for r in order]
    assert shard_order(ids, 1) != order
    assert shard_order(ids, -1) == list(range(50))


# ------------------------------------------------------------------------------------------
# bad CSVs: exit 2 before anything is written


def _bad_csv_cases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good_rows = [
        {"posting_id": "a", "image": "a.jpg", "title": "x", "label_group": 1},
        {"posting_id": "b", "image": "b.jpg", "title": "y", "label_group": 2},
    ]
    cases = {}
    cases["missing_column"] = (
        write_csv(tmp_path / "no_title.csv", good_rows, ["posting_id", "image", "label_group"]),
        "missing required column(s) title",
    )
    cases["missing_file"] = (tmp_path / "absent.csv", "CSV file not found")
    binary = tmp_path / "binary.csv"
    save_image(binary, seed=0, image_format="PNG")
    cases["binary"] = (binary, "not a UTF-8 CSV")
    utf16 = tmp_path / "utf16.csv"
    utf16.write_text("posting_id,title\na,x\n", encoding="utf-16")
    cases["utf16"] = (utf16, "UTF-16")
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("posting_id,title\na,x\nb,y,extra,fields\n", encoding="utf-8")
    cases["not_csv"] = (ragged, "row 1 (line 3) has 4 fields but the header has 2")
    bad_id = tmp_path / "bad_id.csv"
    # UTF-8 (the é of row 0) with damaged bytes in an id: not a legacy code page, not decodable.
    bad_id.write_bytes(b"posting_id,title\nok,caf\xc3\xa9\nbad\xff\xfe,y\n")
    cases["invalid_utf8_id"] = (bad_id, "row 1 column posting_id is not valid UTF-8")
    cases["duplicate_id"] = (
        write_csv(tmp_path / "dup.csv", good_rows + [dict(good_rows[0], title="z")]),
        "duplicate posting_id 'a' in rows 0 and 2",
    )
    cases["label_not_integer"] = (
        write_csv(tmp_path / "label.csv", good_rows + [dict(posting_id="c", label_group="abc")]),
        "row 2 (posting_id 'c') has label_group 'abc', which is not an integer",
    )
    cases["bad_phash"] = (
        write_csv(tmp_path / "phash.csv", [dict(good_rows[0], image_phash="xyz")]),
        "has image_phash 'xyz'",
    )
    return cases


def test_bad_csvs_raise_user_error_before_writing(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name, (csv_path, message) in _bad_csv_cases(tmp_path).items():
        out_dir = tmp_path / f"out_{name}"
        with pytest.raises(UserError) as raised:
            convert_csv(csv_path, images, out_dir, folds=2, workers=1, progress=False)
        assert message in str(raised.value), name
        assert not out_dir.exists(), name


@pytest.mark.parametrize(
    "case", ["missing_column", "missing_file", "binary", "duplicate_id", "label_not_integer"]
)
def test_cli_exits_2_on_bad_csv(tmp_path, case):
    csv_path, message = _bad_csv_cases(tmp_path)[case]
    out_dir = tmp_path / "out"
    finished = run_cli("--csv", str(csv_path), "--out", str(out_dir), "--folds", "2", cwd=tmp_path)
    assert finished.returncode == 2, finished.stderr
    assert finished.stderr.startswith("error: ") and message in finished.stderr
    assert "Traceback" not in finished.stderr
    assert shard_files(out_dir) == []


def test_cli_rejects_bad_options_and_shows_help(tmp_path):
    csv_path, images = simple_dataset(tmp_path, count=4)
    finished = run_cli("--help", cwd=tmp_path)
    assert finished.returncode == 0
    for option in (
        "--csv",
        "--images",
        "--out",
        "--folds",
        "--examples-per-shard",
        "--max-side",
        "--max-reject-fraction",
        "--overwrite",
        "--workers",
        "rejects.csv",
    ):
        assert option in finished.stdout
    finished = run_cli(
        "--csv",
        str(csv_path),
        "--images",
        str(images),
        "--out",
        str(tmp_path / "o"),
        "--max-reject-fraction",
        "1.5",
        cwd=tmp_path,
    )
    assert finished.returncode == 2 and "--max-reject-fraction must be in 0..1" in finished.stderr
    finished = run_cli(
        "--csv",
        str(csv_path),
        "--images",
        str(tmp_path / "nowhere"),
        "--out",
        str(tmp_path / "o"),
        cwd=tmp_path,
    )
    assert finished.returncode == 2 and "is not a folder" in finished.stderr


# ------------------------------------------------------------------------------------------
# bad images: rejects.csv


def _dataset_with_bad_images(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """Eight good postings plus one posting per kind of bad image; returns expected reasons."""
    images = tmp_path / "images"
    rows = []
    for index in range(8):
        save_image(images / f"good_{index}.jpg", seed=index)
        rows.append(
            {
                "posting_id": f"good_{index}",
                "image": f"good_{index}.jpg",
                "title": "t",
                "label_group": index // 2,
            }
        )
    full = save_image(tmp_path / "full.jpg", size=(64, 64), seed=99)
    (images / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (images / "garbage.jpg").write_bytes(os.urandom(300))
    (images / "bomb.png").write_bytes(png_with_claimed_size(100_000, 100_000))
    (images / "folder.jpg").mkdir()
    outside = tmp_path / "outside.jpg"
    save_image(outside, seed=50)
    (images / "link.jpg").symlink_to(outside)
    expected = {
        "missing": ("nothere.jpg", "image file not found: nothere.jpg"),
        "truncated": ("truncated.jpg", "corrupt image truncated.jpg"),
        "garbage": ("garbage.jpg", "garbage.jpg is not an image"),
        "bomb": ("bomb.png", "10000000000 pixels, over the --max-pixels limit"),
        "absolute": (str(outside), "absolute image path"),
        "dotdot": ("../outside.jpg", "escapes the image folder ('..')"),
        "symlink": ("link.jpg", "escapes the image folder (symlink to"),
        "folder": ("folder.jpg", "folder.jpg is not a regular file"),
        "empty": ("", "empty image path"),
    }
    for index, (posting_id, (image, _)) in enumerate(expected.items()):
        rows.append(
            {"posting_id": posting_id, "image": image, "title": "t", "label_group": 100 + index}
        )
    csv_path = write_csv(tmp_path / "train.csv", rows)
    return csv_path, images, {key: reason for key, (_, reason) in expected.items()}


def test_bad_images_go_to_rejects_csv_with_reasons(tmp_path):
    csv_path, images, expected = _dataset_with_bad_images(tmp_path)
    out_dir = tmp_path / "out"
    manifest = convert_csv(
        csv_path,
        images,
        out_dir,
        folds=2,
        examples_per_shard=5,
        max_reject_fraction=0.6,
        workers=2,
        progress=False,
    )
    with open(out_dir / "rejects.csv", encoding="utf-8", newline="") as stream:
        rejects = list(csv.DictReader(stream))
    assert [reject["posting_id"] for reject in rejects] == list(expected)  # sorted by row
    assert [int(reject["row"]) for reject in rejects] == list(range(8, 8 + len(expected)))
    for reject in rejects:
        assert expected[reject["posting_id"]] in reject["reason"], reject
    assert manifest["counts"]["rejected"] == len(expected)
    assert manifest["counts"]["written"] == 8
    written_ids = {posting["posting_id"].decode() for posting in read_postings(out_dir)}
    assert written_ids == {f"good_{index}" for index in range(8)}
    # The label map comes from the CSV alone: rejected rows' groups stay, with zero examples.
    assert manifest["num_labels"] == 4 + len(expected)
    assert manifest["label_counts"] == [2, 2, 2, 2] + [0] * len(expected)
    assert sum(manifest["fold_counts"].values()) == 8


def test_too_many_rejects_fail_with_counts_and_no_manifest(tmp_path):
    csv_path, images, expected = _dataset_with_bad_images(tmp_path)
    out_dir = tmp_path / "out"
    with pytest.raises(UserError) as raised:
        convert_csv(
            csv_path,
            images,
            out_dir,
            folds=2,
            examples_per_shard=5,
            max_reject_fraction=0.2,
            workers=1,
            progress=False,
        )
    message = str(raised.value)
    assert "rows rejected, more than --max-reject-fraction 0.2 allows (3)" in message
    assert str(out_dir / "rejects.csv") in message
    assert not (out_dir / "manifest.json").exists()
    assert (out_dir / "rejects.csv").read_text().count("\n") >= 4  # header + more than 3
    # The CLI: exit 2, and a rerun with a looser limit finishes, keeping the finished shards.
    finished = run_cli(
        "--csv",
        str(csv_path),
        "--images",
        str(images),
        "--out",
        str(out_dir),
        "--folds",
        "2",
        "--examples-per-shard",
        "5",
        "--quiet",
        cwd=tmp_path,
    )
    assert finished.returncode == 2 and "rejects.csv" in finished.stderr
    manifest = convert_csv(
        csv_path,
        images,
        out_dir,
        folds=2,
        examples_per_shard=5,
        max_reject_fraction=0.6,
        workers=1,
        progress=False,
    )
    assert manifest["counts"]["rejected"] == len(expected)


# ------------------------------------------------------------------------------------------
# test sets, text-only sets, titles


def test_csv_without_label_group_is_a_test_split(tmp_path):
    images = tmp_path / "images"
    rows = []
    for index in range(5):
        save_image(images / f"{index}.jpg", seed=index)
        rows.append(
            {
                "posting_id": f"t{index}",
                "image": f"{index}.jpg",
                "title": "a",
                "image_phash": "0123456789abcdef",
            }
        )
    csv_path = write_csv(
        tmp_path / "test.csv", rows, ["posting_id", "image", "image_phash", "title"]
    )
    out_dir = tmp_path / "out"
    manifest = convert_csv(
        csv_path, images, out_dir, examples_per_shard=2, workers=1, progress=False
    )
    assert manifest["split"] == "test" and not manifest["has_labels"]
    assert manifest["num_folds"] == 0 and manifest["fold_counts"] == {}
    assert manifest["num_labels"] == 0 and manifest["label_counts"] == []
    assert [path.name for path in shard_files(out_dir)] == [
        f"test-0000{index}-of-00003.tfrec" for index in range(3)
    ]
    assert not (out_dir / "label_map.json").exists()
    with pytest.raises(UserError, match="without label_group"):
        load_label_map(out_dir)
    postings = read_postings(out_dir)
    assert len(postings) == 5
    assert {(p["label_group"], p["label"], p["fold"]) for p in postings} == {(-1, -1, -1)}
    assert all(p["image"] and p["height"] == 32 for p in postings)


def test_text_only_without_image_column_or_without_images_folder(tmp_path):
    rows = [
        {
            "posting_id": f"p{index}",
            "title": f"title {index}",
            "label_group": index // 2,
            "image": f"{index}.jpg",
        }
        for index in range(6)
    ]
    no_image_column = write_csv(tmp_path / "a.csv", rows, ["posting_id", "title", "label_group"])
    with_image_column = write_csv(tmp_path / "b.csv", rows)
    for csv_path, images_dir in ((no_image_column, tmp_path), (with_image_column, None)):
        out_dir = tmp_path / f"out_{csv_path.stem}"
        manifest = convert_csv(csv_path, images_dir, out_dir, folds=3, workers=1, progress=False)
        assert not manifest["has_images"] and manifest["images_dir"] is None
        assert manifest["counts"]["written"] == 6 and manifest["counts"]["rejected"] == 0
        postings = read_postings(out_dir)
        assert {(p["image"], p["height"], p["width"], p["image_phash"]) for p in postings} == {
            (b"", 0, 0, b"")
        }
        assert sorted(p["title"].decode() for p in postings) == [f"title {i}" for i in range(6)]


def test_empty_and_invalid_utf8_titles_are_counted(tmp_path):
    csv_path = tmp_path / "titles.csv"
    csv_path.write_bytes(
        b"\xef\xbb\xbfposting_id,title,label_group\n"  # with a UTF-8 byte-order mark
        b"a,fine title,1\n"
        b"b,,1\n"
        b'c,"  ",2\n'
        b"d,caf\xe9 latin-1,2\n"
        b"e,bad \xff\xfe bytes,3\n"
        b'f,"multi\nline ""quoted""",3\n'
    )
    table = read_csv_table(csv_path)
    assert table.empty_titles == 2 and table.invalid_utf8_titles == 2
    out_dir = tmp_path / "out"
    manifest = convert_csv(csv_path, None, out_dir, folds=2, workers=1, progress=False)
    assert manifest["counts"]["empty_titles"] == 2
    assert manifest["counts"]["wordless_titles"] == 2  # the two empty ones; "bad" has a word
    assert manifest["counts"]["invalid_utf8_titles"] == 2
    titles = {p["posting_id"].decode(): p["title"].decode("utf-8") for p in read_postings(out_dir)}
    assert titles == {
        "a": "fine title",
        "b": "",
        "c": "",
        "d": "caf\ufffd latin-1",
        "e": "bad \ufffd\ufffd bytes",
        "f": 'multi\nline "quoted"',
    }


def test_titles_without_a_word_are_converted_with_a_warning(tmp_path, capsys):
    # Every title empty or punctuation: photos and phashes could still match these postings, so
    # the conversion goes on, but it says that no text model can train on them.
    csv_path = tmp_path / "titles.csv"
    csv_path.write_text("posting_id,title,label_group\na,,1\nb,!!! ...,1\nc,- -,2\nd,x,2\n",
                        encoding="utf-8")
    manifest = convert_csv(csv_path, None, tmp_path / "out", folds=2, workers=1, progress=False)
    assert manifest["counts"]["written"] == 4
    assert manifest["counts"]["wordless_titles"] == 4
    warning = capsys.readouterr().err
    assert "none of the 4 titles has a word" in warning and "--model text" in warning


# ------------------------------------------------------------------------------------------
# resume, overwrite, refusal


def _slow_dataset(tmp_path: Path) -> tuple[Path, Path]:
    """4 small postings first, then 16 postings sharing one big PNG that is slow to shrink."""
    images = tmp_path / "images"
    rows = []
    for index in range(4):
        save_image(images / f"small_{index}.jpg", seed=index)
        rows.append(
            {
                "posting_id": f"s{index}",
                "image": f"small_{index}.jpg",
                "title": "s",
                "label_group": index,
            }
        )
    big = Image.fromarray(picture((100, 100), 7)).resize((3000, 3000), Image.Resampling.NEAREST)
    big.save(images / "big.png", compress_level=1)
    for index in range(16):
        rows.append(
            {
                "posting_id": f"b{index}",
                "image": "big.png",
                "image_phash": "00ff00ff00ff00ff",  # given, so only decode + resize are slow
                "title": "b",
                "label_group": 10 + index // 3,
            }
        )
    return write_csv(tmp_path / "train.csv", rows), images


def test_killed_conversion_resumes_to_byte_identical_shards(tmp_path):
    csv_path, images = _slow_dataset(tmp_path)
    out_dir = tmp_path / "out"
    arguments = [
        "--csv",
        str(csv_path),
        "--images",
        str(images),
        "--out",
        str(out_dir),
        "--folds",
        "2",
        "--examples-per-shard",
        "4",
        "--max-side",
        "48",
        "--shuffle-seed",
        "-1",
        "--workers",
        "2",
        "--quiet",
    ]
    # A session of its own, so the kill also reaches the spawned image workers.
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), *arguments],
        cwd=tmp_path,
        start_new_session=True,
        stderr=subprocess.PIPE,
    )
    progress_path = out_dir / PROGRESS_NAME
    deadline = time.monotonic() + 240
    finished_shards = []
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if progress_path.exists():
                try:
                    finished_shards = json.loads(progress_path.read_text())["shards"]
                except (json.JSONDecodeError, KeyError):
                    finished_shards = []
                if finished_shards:
                    break
            time.sleep(0.005)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert finished_shards, process.stderr.read().decode()[-2000:]
    assert not (out_dir / "manifest.json").exists(), "the run finished before it was killed"
    assert len(shard_files(out_dir)) < 5
    first = out_dir / "train-00000-of-00005.tfrec"
    first_status = first.stat()

    resumed = run_cli(*arguments, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert first.stat().st_ino == first_status.st_ino  # kept, not rewritten
    assert first.stat().st_mtime_ns == first_status.st_mtime_ns
    assert not list(out_dir.glob(".*.tmp"))

    clean_dir = tmp_path / "clean"
    clean = convert_csv(
        csv_path,
        images,
        clean_dir,
        folds=2,
        examples_per_shard=4,
        max_side=48,
        shuffle_seed=-1,
        workers=1,
        progress=False,
    )
    resumed_manifest = load_manifest(out_dir, verify_checksums=True)
    assert resumed_manifest["shards"] == clean["shards"]
    assert resumed_manifest["counts"] == clean["counts"]
    for path in shard_files(clean_dir):
        assert (out_dir / path.name).read_bytes() == path.read_bytes()


def test_rerun_repairs_a_damaged_shard_and_refuses_other_inputs(tmp_path):
    csv_path, images = simple_dataset(tmp_path, count=10)
    out_dir = tmp_path / "out"
    options = dict(folds=2, examples_per_shard=4, workers=1, progress=False)
    manifest = convert_csv(csv_path, images, out_dir, **options)
    pristine = {path.name: path.read_bytes() for path in shard_files(out_dir)}
    assert len(pristine) == 3

    # Same command again: nothing to do, same manifest.
    assert convert_csv(csv_path, images, out_dir, **options) == manifest

    # A damaged shard is found by its checksum and rewritten; the others are kept.
    damaged = out_dir / "train-00001-of-00003.tfrec"
    damaged.write_bytes(b"garbage")
    kept_status = (out_dir / "train-00000-of-00003.tfrec").stat()
    assert convert_csv(csv_path, images, out_dir, **options) == manifest
    assert {path.name: path.read_bytes() for path in shard_files(out_dir)} == pristine
    assert (out_dir / "train-00000-of-00003.tfrec").stat().st_ino == kept_status.st_ino

    # Other options or another CSV: refused without --overwrite, nothing touched.
    with pytest.raises(UserError, match="examples_per_shard: 4 → 5.*--overwrite"):
        convert_csv(csv_path, images, out_dir, **dict(options, examples_per_shard=5))
    other_csv = tmp_path / "other.csv"
    other_csv.write_text(csv_path.read_text().replace("variant 3", "variant three"))
    with pytest.raises(UserError, match="source_csv_sha256"):
        convert_csv(other_csv, images, out_dir, **options)
    assert {path.name: path.read_bytes() for path in shard_files(out_dir)} == pristine

    # --overwrite starts clean: old shards with another count are gone.
    manifest = convert_csv(
        other_csv, images, out_dir, overwrite=True, **dict(options, examples_per_shard=5)
    )
    assert [path.name for path in shard_files(out_dir)] == [
        "train-00000-of-00002.tfrec",
        "train-00001-of-00002.tfrec",
    ]
    assert manifest["counts"]["written"] == 10


def test_folder_with_foreign_shards_is_refused(tmp_path):
    csv_path, images = simple_dataset(tmp_path, count=4)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "train-00000-of-00001.tfrec").write_bytes(b"someone else's")
    with pytest.raises(UserError, match="--overwrite"):
        convert_csv(csv_path, images, out_dir, folds=2, workers=1, progress=False)


# ------------------------------------------------------------------------------------------
# real Shopee data (skipped on a fresh clone)


def _real_train_csv() -> Path:
    zipped = REAL_DATA / "train.csv.zip"
    if not zipped.exists():
        pytest.skip(f"{zipped} is absent")
    return zipped


@pytest.mark.real_data
def test_real_sample_photos_convert(tmp_path):
    import imagehash
    import pandas as pd
    import tensorflow as tf

    zipped = _real_train_csv()
    sample_dir = REAL_DATA / "train_images_sample"
    if not sample_dir.is_dir():
        pytest.skip(f"{sample_dir} is absent")
    train = pd.read_csv(zipped)
    sample = train[train["image"].isin({path.name for path in sample_dir.glob("*.jpg")})]
    assert len(sample) >= 30
    csv_path = tmp_path / "sample.csv"
    sample.to_csv(csv_path, index=False)
    out_dir = tmp_path / "out"
    manifest = convert_csv(
        csv_path, sample_dir, out_dir, folds=2, examples_per_shard=8, workers=2, progress=False
    )
    assert manifest["counts"]["written"] == len(sample) and manifest["counts"]["rejected"] == 0
    expected = sample.set_index("posting_id")
    for posting in read_postings(out_dir):
        row = expected.loc[posting["posting_id"].decode()]
        # The title as the CSV reader gives it: literal byte escapes decoded (issue 21).
        assert posting["title"].decode() == decode_byte_escapes(row["title"])
        assert posting["image_phash"].decode() == row["image_phash"]
        assert posting["label_group"] == row["label_group"]
        decoded = tf.io.decode_jpeg(posting["image"], channels=3)
        assert decoded.shape == (posting["height"], posting["width"], 3)
        assert max(posting["height"], posting["width"]) <= 512

    # Without the image_phash column the converter computes it: Kaggle's hash, give or take a bit.
    sample.drop(columns=["image_phash"]).to_csv(csv_path, index=False)
    manifest = convert_csv(
        csv_path, sample_dir, out_dir, folds=2, overwrite=True, workers=1, progress=False
    )
    assert manifest["counts"]["computed_phashes"] == len(sample)
    distances = [
        imagehash.hex_to_hash(posting["image_phash"].decode())
        - imagehash.hex_to_hash(expected.loc[posting["posting_id"].decode(), "image_phash"])
        for posting in read_postings(out_dir)
    ]
    assert max(distances) <= 2 and distances.count(0) >= len(sample) - 2


@pytest.mark.real_data
def test_real_csv_three_folds_match_the_protocol_fold(tmp_path):
    import pandas as pd
    from sklearn.model_selection import GroupKFold

    zipped = _real_train_csv()
    out_dir = tmp_path / "out"
    manifest = convert_csv(zipped, None, out_dir, folds=3, workers=1, progress=False)
    assert manifest["counts"]["rows"] == manifest["counts"]["written"] == 34250
    assert manifest["num_labels"] == 11014 and manifest["fold_counts"]["0"] == 11418
    assert manifest["counts"]["invalid_utf8_titles"] == 0
    train = pd.read_csv(zipped)
    _, protocol_rows = next(GroupKFold(n_splits=3).split(train, groups=train["label_group"]))
    protocol_ids = set(train["posting_id"].iloc[protocol_rows])
    fold_zero = {p["posting_id"].decode() for p in read_postings(out_dir) if p["fold"] == 0}
    assert fold_zero == protocol_ids


def test_unwritable_output_is_a_user_error(tmp_path):
    csv_path, images = simple_dataset(tmp_path, count=4)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="is not a folder"):
        convert_csv(csv_path, images, blocker, folds=2, workers=1, progress=False)
    with pytest.raises(UserError, match="cannot write the output folder"):
        convert_csv(csv_path, images, blocker / "out", folds=2, workers=1, progress=False)
