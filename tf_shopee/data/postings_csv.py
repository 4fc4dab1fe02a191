"""The one reader of posting CSVs, shared by ``convert_tfrecords.py`` and ``predict.py``.

Both tools must see the same postings in the same CSV: ids and titles as the text the file holds
(a posting_id ``NA`` or a title ``NaN`` is that text, not a missing value), the same label
groups, the same encoding decision. This module decides all of it:

* Encoding. ``encoding=None`` (the default) detects it: a file that is valid UTF-8 (with or
  without the byte-order mark spreadsheets write) is UTF-8; a file whose non-ASCII bytes are
  never valid UTF-8 sequences was written by a single-byte code page and is decoded as Windows
  cp1252 (Excel's "CSV" on Western systems; a superset of latin-1's printable range), or latin-1
  when it holds bytes cp1252 leaves undefined. A file that mixes valid UTF-8 sequences with
  invalid bytes is UTF-8 with damage: the damaged titles get U+FFFD and are counted, and a
  damaged posting_id, image or label cell is an error. A named ``encoding`` decodes strictly and
  names the line that does not fit. What was decided is in :attr:`CsvTable.encoding` and is
  reported by both tools (manifest / prediction report).
* Cells. posting_id, image, image_phash and label_group are stripped of surrounding whitespace;
  a posting_id must be non-empty, unique and free of whitespace (the submission's ``matches``
  column separates ids by spaces). label_group is an integer; ``2662813302.0``, the form a
  spreadsheet or pandas writes after a round trip through floats, is read as ``2662813302``.
  image_phash is 16 hexadecimal digits or empty. Titles are stripped; an empty cell is "".
* Byte escapes. The scraped Shopee titles spell emoji and accented letters as literal UTF-8 byte
  escapes (``\\xe2\\x9c\\x85`` for ✅; 671 of the 34,250 real titles). Each run of escapes
  that forms valid UTF-8 is decoded here, once, where titles are read (other runs stay as
  written). This reader feeds ``convert_tfrecords.py`` (whose TFRecords train the text models),
  ``predict.py`` and the catalogue, so a text model sees at prediction the same title it saw in
  training, and the web app shows ✅, not its escapes. TFRecords are not re-decoded when read:
  they hold what their conversion wrote, which is what a model trained on them saw.
* Rows are numbered from 0 in messages, header excluded, as in a pandas index.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tf_shopee.errors import UserError

REQUIRED_COLUMNS = ("posting_id", "title")
PHASH_PATTERN = re.compile(r"^[0-9a-fA-F]{16}$")
# An integer, optionally written as a float with a zero fraction ("2662813302.0").
LABEL_PATTERN = re.compile(r"^([+-]?\d+)(?:\.0*)?$")
# A word as TF-IDF (scikit-learn's default token pattern) and the text models' vocabulary learner
# see one: two letters or digits in a row. A title without one is empty to both.
WORD_PATTERN = re.compile(r"\w\w")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UTF8_BOM = b"\xef\xbb\xbf"


@dataclass
class CsvEncoding:
    """How the bytes of a CSV were turned into text.

    Attributes:
        name: the codec used (``utf-8``, ``cp1252``, ``latin-1`` or the one asked for).
        chosen_by: ``"utf-8"`` (the file is valid UTF-8), ``"detected"`` (not UTF-8: a
            single-byte code page), ``"utf-8 with damage"`` (mostly UTF-8, some invalid bytes),
            or ``"--encoding"`` (named by the user).
        replaced_titles: titles in which undecodable bytes were replaced by U+FFFD.
    """

    name: str
    chosen_by: str
    replaced_titles: int = 0

    def to_json(self) -> dict:
        """The record written into the manifest and the prediction report."""
        return {
            "name": self.name,
            "chosen_by": self.chosen_by,
            "replaced_titles": self.replaced_titles,
        }

    def notice(self, csv_path) -> str | None:
        """A sentence for the user when the text is not plain UTF-8 (None when it is)."""
        name = Path(csv_path).name
        if self.chosen_by == "detected":
            return (
                f"{name} is not UTF-8: decoded as {self.name} (detected; pass --encoding NAME "
                "if it is another code page)"
            )
        if self.replaced_titles:
            return (
                f"{name}: {self.replaced_titles} title(s) hold bytes that are not valid UTF-8; "
                "they were replaced with U+FFFD (pass --encoding NAME to decode the file with "
                "another code page)"
            )
        return None


@dataclass
class CsvTable:
    """The validated columns of a posting CSV (one entry per data row, in file order).

    ``images`` is None when the CSV has no ``image`` column, ``phashes`` entries are "" when
    absent, ``label_groups`` is None when the CSV has no ``label_group`` column.
    """

    posting_ids: list[str]
    titles: list[str]
    images: list[str] | None
    phashes: list[str]
    label_groups: list[int] | None
    encoding: CsvEncoding
    empty_titles: int = 0
    decoded_escape_titles: int = 0
    wordless_titles: int = 0  # empty ones included: no WORD_PATTERN match

    def __len__(self) -> int:
        return len(self.posting_ids)

    @property
    def invalid_utf8_titles(self) -> int:
        """Titles whose undecodable bytes were replaced (kept under the manifest's old name)."""
        return self.encoding.replaced_titles


def read_csv_bytes(csv_path: str | os.PathLike) -> bytes:
    """The bytes of a CSV file, or of the one CSV inside a .zip (Kaggle ships train.csv zipped).

    Raises:
        UserError: missing file, a directory, an unreadable file or a zip without exactly one file.
    """
    csv_path = Path(csv_path)
    if not csv_path.exists():
        raise UserError(f"CSV file not found: {csv_path}")
    if not csv_path.is_file():
        raise UserError(f"--csv {csv_path} is not a file")
    try:
        if zipfile.is_zipfile(csv_path):
            with zipfile.ZipFile(csv_path) as archive:
                members = [
                    name
                    for name in archive.namelist()
                    if not name.endswith("/") and not name.startswith("__MACOSX/")
                ]
                if len(members) != 1:
                    raise UserError(
                        f"{csv_path} is a zip archive with {len(members)} files; "
                        "it must hold exactly one CSV"
                    )
                return archive.read(members[0])
        return csv_path.read_bytes()
    except (OSError, zipfile.BadZipFile) as error:
        raise UserError(f"cannot read CSV file {csv_path}: {error}") from None


# A run of literal byte escapes such as "\xe2\x9c\x85".
_BYTE_ESCAPES = re.compile(r"(?:\\x[0-9a-fA-F]{2})+")


def decode_byte_escapes(title: str) -> str:
    """``title`` with every run of literal UTF-8 byte escapes that forms valid UTF-8 decoded
    (``"\\xe2\\x9c\\x85 cod"`` → ``"✅ cod"``); other runs stay as written."""
    if "\\x" not in title:
        return title

    def decode(match: re.Match) -> str:
        raw = bytes.fromhex(match.group(0).replace("\\x", ""))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return match.group(0)

    return _BYTE_ESCAPES.sub(decode, title)


def _has_invalid_utf8(text: str) -> bool:
    # Undecodable bytes survive "surrogateescape" decoding as lone surrogates U+DC80..U+DCFF.
    return any("\udc80" <= character <= "\udcff" for character in text)


def _has_valid_non_ascii(text: str) -> bool:
    return any(
        character > "\x7f" and not "\udc80" <= character <= "\udcff" for character in text
    )


def decode_csv(raw: bytes, csv_path, encoding: str | None = None) -> tuple[str, CsvEncoding]:
    """Decode a CSV's bytes (see the module docstring for the rules); return text and decision.

    In the "UTF-8 with damage" case the text keeps the undecodable bytes as lone surrogates
    (``surrogateescape``): :func:`read_csv_table` replaces them per title and refuses them in
    the other columns.
    """
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")) and encoding is None:
        raise UserError(
            f"{csv_path} is UTF-16 encoded; save it as UTF-8 (or pass --encoding utf-16)"
        )
    if encoding is not None:
        try:
            codec = codecs.lookup(encoding).name
        except LookupError:
            raise UserError(f"--encoding {encoding!r} is not an encoding Python knows") from None
        if codec == "utf-8" and raw.startswith(UTF8_BOM):
            raw = raw[len(UTF8_BOM):]
        try:
            text = raw.decode(codec)
        except UnicodeDecodeError as error:
            line = raw[: error.start].count(b"\n") + 1
            raise UserError(
                f"{csv_path}: line {line} is not valid {codec} ({error.reason} at byte "
                f"{error.start}); pass another --encoding, or leave it out to detect it"
            ) from None
        return text, CsvEncoding(codec, "--encoding")
    if b"\x00" in raw:
        raise UserError(f"{csv_path} contains NUL bytes: it is not a UTF-8 CSV file")
    declared_utf8 = raw.startswith(UTF8_BOM)
    if declared_utf8:
        raw = raw[len(UTF8_BOM):]
    try:
        return raw.decode("utf-8"), CsvEncoding("utf-8", "utf-8")
    except UnicodeDecodeError:
        pass
    text = raw.decode("utf-8", errors="surrogateescape")
    if declared_utf8 or _has_valid_non_ascii(text):
        return text, CsvEncoding("utf-8", "utf-8 with damage")
    try:
        return raw.decode("cp1252"), CsvEncoding("cp1252", "detected")
    except UnicodeDecodeError:  # 0x81, 0x8d, 0x8f, 0x90, 0x9d are undefined in cp1252
        return raw.decode("latin-1"), CsvEncoding("latin-1", "detected")


def read_csv_table(csv_path: str | os.PathLike, *, encoding: str | None = None) -> CsvTable:
    """Read and validate a posting CSV (plain or a zip holding one CSV).

    Required columns: posting_id, title. Optional: image, image_phash, label_group.

    Args:
        csv_path: the file.
        encoding: a codec name, or None to detect it (module docstring).

    Raises:
        UserError: missing or unreadable file, undecodable text, malformed CSV, missing required
            column, empty, duplicate or space-holding posting_id, non-integer label_group,
            malformed image_phash (each message names the file, row and column).
    """
    csv_path = Path(csv_path)
    raw = read_csv_bytes(csv_path)
    text, decision = decode_csv(raw, csv_path, encoding)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None or not any(name.strip() for name in header):
            raise UserError(f"{csv_path} is empty: expected a header row with posting_id,title,...")
        header = [name.strip() for name in header]
        if any(_has_invalid_utf8(name) for name in header):
            raise UserError(f"{csv_path}: the header row is not valid UTF-8: not a UTF-8 CSV")
        duplicated = sorted({name for name in header if header.count(name) > 1})
        if duplicated:
            raise UserError(f"{csv_path}: duplicate column(s) {', '.join(duplicated)}")
        missing = [name for name in REQUIRED_COLUMNS if name not in header]
        if missing:
            raise UserError(
                f"{csv_path} is missing required column(s) {', '.join(missing)} "
                f"(found: {', '.join(header)})"
            )
        records = []
        for record in reader:
            if not record:  # csv yields [] for blank lines
                continue
            if len(record) != len(header):
                raise UserError(
                    f"{csv_path}: row {len(records)} (line {reader.line_num}) has "
                    f"{len(record)} fields but the header has {len(header)}: not a valid CSV"
                )
            records.append(record)
    except csv.Error as error:
        raise UserError(
            f"{csv_path}: not a valid CSV near line {reader.line_num}: {error}"
        ) from None
    if not records:
        raise UserError(f"{csv_path} has a header but no rows")

    column = {name: index for index, name in enumerate(header)}
    table = CsvTable(
        posting_ids=[],
        titles=[],
        images=[] if "image" in column else None,
        phashes=[],
        label_groups=[] if "label_group" in column else None,
        encoding=decision,
    )

    def strict_field(row: int, record: list[str], name: str) -> str:
        value = record[column[name]].strip()
        if _has_invalid_utf8(value):
            raise UserError(
                f"{csv_path}: row {row} column {name} is not valid UTF-8: not a UTF-8 CSV "
                "(pass --encoding NAME if it was written with another code page)"
            )
        return value

    first_row_of_id: dict[str, int] = {}
    for row, record in enumerate(records):
        posting_id = strict_field(row, record, "posting_id")
        if not posting_id:
            raise UserError(f"{csv_path}: row {row} has an empty posting_id")
        if any(character.isspace() for character in posting_id):
            raise UserError(
                f"{csv_path}: row {row} has posting_id {posting_id!r}, which holds whitespace: "
                "a submission separates matched ids by spaces"
            )
        if posting_id in first_row_of_id:
            raise UserError(
                f"{csv_path}: duplicate posting_id {posting_id!r} in rows "
                f"{first_row_of_id[posting_id]} and {row}"
            )
        first_row_of_id[posting_id] = row
        table.posting_ids.append(posting_id)

        title = record[column["title"]].strip()
        if _has_invalid_utf8(title):
            decision.replaced_titles += 1
            title = title.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        decoded = decode_byte_escapes(title)
        if decoded != title:
            table.decoded_escape_titles += 1
            title = decoded
        if not title:
            table.empty_titles += 1
        if not WORD_PATTERN.search(title):
            table.wordless_titles += 1
        table.titles.append(title)

        if table.images is not None:
            table.images.append(strict_field(row, record, "image"))

        phash = strict_field(row, record, "image_phash") if "image_phash" in column else ""
        if phash and not PHASH_PATTERN.match(phash):
            raise UserError(
                f"{csv_path}: row {row} (posting_id {posting_id!r}) has image_phash {phash!r}; "
                "expected 16 hexadecimal digits or an empty cell"
            )
        table.phashes.append(phash.lower())

        if table.label_groups is not None:
            value = strict_field(row, record, "label_group")
            match = LABEL_PATTERN.match(value)
            if match is None:
                raise UserError(
                    f"{csv_path}: row {row} (posting_id {posting_id!r}) has label_group "
                    f"{value!r}, which is not an integer"
                )
            label_group = int(match.group(1))
            if not INT64_MIN <= label_group <= INT64_MAX:
                raise UserError(f"{csv_path}: row {row} label_group {value} does not fit int64")
            table.label_groups.append(label_group)
    return table
