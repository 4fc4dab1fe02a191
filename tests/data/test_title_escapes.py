"""Titles with literal UTF-8 byte escapes (how the scraped Shopee data writes emoji) are decoded
once, by the one CSV reader: convert (hence training), predict and the catalogue see the same
title (issue 21, "What the page tells a user")."""

from __future__ import annotations

from tf_shopee.data.postings_csv import decode_byte_escapes, read_csv_table

CSV = (
    "posting_id,title,label_group\n"
    "a,\\xe2\\x9c\\x85cod Speaker bluetooth,1\n"
    "b,Nescafe \\xc3\\x89clair Latte 220ml,1\n"
    "c,bad \\xe2\\x9d end,2\n"  # not valid UTF-8: kept as written
    "d,plain title,2\n"
)


def test_byte_escapes_are_decoded_where_titles_are_read(tmp_path):
    assert decode_byte_escapes("\\xe2\\x9d\\xa4 RATU \\xe2\\x9d\\xa4") == "❤ RATU ❤"
    csv_path = tmp_path / "titles.csv"
    csv_path.write_text(CSV, encoding="utf-8")
    table = read_csv_table(csv_path)
    expected = ["✅cod Speaker bluetooth", "Nescafe Éclair Latte 220ml", "bad \\xe2\\x9d end",
                "plain title"]
    assert table.titles == expected and table.decoded_escape_titles == 2


def test_training_prediction_and_the_catalogue_see_the_same_titles(tmp_path):
    import tensorflow as tf

    from tf_shopee.catalog.index import BuildOptions, build_index, load_index
    from tf_shopee.data.convert import convert_csv
    from tf_shopee.data.manifest import shard_paths
    from tf_shopee.data.schema import parse_postings
    from tf_shopee.matching.postings import read_postings

    csv_path = tmp_path / "titles.csv"
    csv_path.write_text(CSV, encoding="utf-8")
    convert_csv(csv_path, None, tmp_path / "records", folds=2, workers=1, progress=False)
    trained_on = {}
    for batch in tf.data.TFRecordDataset(shard_paths(tmp_path / "records")).batch(8).map(
            parse_postings):
        for posting_id, title in zip(batch["posting_id"].numpy(), batch["title"].numpy()):
            trained_on[posting_id.decode()] = title.decode("utf-8")
    predicted_from_csv = read_postings(csv=str(csv_path))
    predicted_from_records = read_postings(tfrecords=str(tmp_path / "records"))
    build_index(BuildOptions(csv=str(csv_path), out=str(tmp_path / "index"), progress=False))
    catalogue = load_index(tmp_path / "index")
    for postings in (predicted_from_csv, predicted_from_records, catalogue):
        assert dict(zip(postings.posting_ids, postings.titles)) == trained_on
    assert trained_on["a"] == "✅cod Speaker bluetooth"
