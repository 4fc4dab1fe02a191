"""Catalogue-side augmentation (several views per catalogue photo, searched as one item),
test-time views of queries, and a LiteRT model in place of a SavedModel in the catalogue."""

from __future__ import annotations

import json

import numpy as np
import pytest
from catalog_helpers import run_main

from tf_shopee.catalog.cli import main as catalog_main
from tf_shopee.catalog.index import BuildOptions, add_to_index, build_index, load_index
from tf_shopee.catalog.search import ExactSearch, ViewsSearch
from tf_shopee.export import model_fingerprint
from tf_shopee.predict import main as predict_main

IMAGES = ("data", "train_images")


def _options(root, csv, out="", models=(), **extra) -> BuildOptions:
    return BuildOptions(csv=str(root / csv), images=str(root.joinpath(*IMAGES)), out=str(out),
                        models=[str(model) for model in models], progress=False, **extra)


def test_views_search_scores_an_item_by_its_best_view():
    rng = np.random.default_rng(0)
    items, views, dim = 12, 3, 8
    catalogue = rng.normal(size=(items, views, dim)).astype(np.float32)
    catalogue /= np.linalg.norm(catalogue, axis=-1, keepdims=True)
    queries = rng.normal(size=(5, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    search = ViewsSearch(ExactSearch(catalogue.reshape(-1, dim)), views)
    assert search.num_rows == items and search.mode == "exact"
    found = search.search(queries, k=4)
    best = np.einsum("qd,ivd->qiv", queries, catalogue).max(axis=-1)
    expected = np.argsort(-best, axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(found.indices, expected)
    np.testing.assert_allclose(found.scores, np.take_along_axis(best, expected, axis=1),
                               rtol=1e-5)
    wide = search.search(queries, k=items + 5)  # more than the items: padded
    assert (wide.indices[:, items:] == -1).all()


@pytest.fixture(scope="module")
def augmented(catalogue_set, tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("augmented")
    model = [tiny_models["image"]]
    build_index(_options(catalogue_set, "all.csv", root / "whole", model, catalog_augment=3,
                         tta="flip"))
    build_index(_options(catalogue_set, "part_a.csv", root / "grown", model, catalog_augment=3,
                         tta="flip"))
    add_to_index(str(root / "grown"), _options(catalogue_set, "part_b.csv"))
    return root


def test_an_augmented_index_stores_views_and_grows_like_a_build(augmented):
    whole = load_index(augmented / "whole")
    assert whole.manifest["views"] == {"tta": "flip", "catalog_augment": 3}
    views = whole.views["image"]
    assert views.shape == (100, 3, 16)
    np.testing.assert_allclose(views[:, 0], whole.embeddings["image"], atol=1e-6)
    assert not np.allclose(views[:, 1], views[:, 0])
    grown = load_index(augmented / "grown")  # add embedded the new rows the same way
    np.testing.assert_allclose(grown.views["image"], views, atol=1e-5)
    np.testing.assert_allclose(grown.embeddings["image"], whole.embeddings["image"], atol=1e-5)


def test_queries_with_views_against_an_augmented_index(augmented, catalogue_set, tmp_path,
                                                       capsys):
    status, stdout, _ = run_main(catalog_main, ["info", "--index", augmented / "whole"], capsys)
    assert status == 0 and "views per photo searched as one item: 3" in stdout
    report_path = tmp_path / "report.json"
    status, _, stderr = run_main(predict_main, [
        "--catalog", augmented / "whole", "--csv", catalogue_set / "queries.csv", "--images",
        catalogue_set.joinpath(*IMAGES), "--out", tmp_path / "matches.csv", "--evaluate",
        "--report", report_path, "--quiet", "--no-tfidf", "--tta", "flip,crop"], capsys)
    assert status == 0, stderr
    report = json.loads(report_path.read_text())
    assert report["options"]["tta"] == "flip,crop"
    assert report["top1_accuracy"] is not None
    status, _, stderr = run_main(predict_main, [
        "--catalog", augmented / "whole", "--csv", catalogue_set / "queries.csv", "--images",
        catalogue_set.joinpath(*IMAGES), "--out", tmp_path / "m.csv", "--tta", "mirror"], capsys)
    assert status == 2 and "--tta: unknown view(s) mirror" in stderr


def test_a_litert_model_builds_and_queries_a_catalogue(catalogue_set, tiny_models, tmp_path,
                                                       capsys):
    from tf_shopee.export import convert_to_litert

    tflite = tmp_path / "image.tflite"
    convert_to_litert(tiny_models["image"], tflite, quantization="float32",
                      say=lambda message: None)
    status, _, stderr = run_main(catalog_main, [
        "build", "--csv", catalogue_set / "all.csv", "--images", catalogue_set.joinpath(*IMAGES),
        "--model", tflite, "--out", tmp_path / "index", "--quiet"], capsys)
    assert status == 0, stderr
    index = load_index(tmp_path / "index")
    (entry,) = index.models
    assert entry["path"] == str(tflite.resolve())
    assert entry["fingerprint"] == model_fingerprint(tflite)
    reference = load_index_embeddings(catalogue_set, tiny_models["image"], tmp_path)
    # float32 LiteRT: the same embeddings as the SavedModel it came from.
    np.testing.assert_allclose(index.embeddings["image"], reference, atol=1e-4)
    status, _, stderr = run_main(predict_main, [
        "--catalog", tmp_path / "index", "--csv", catalogue_set / "queries.csv", "--images",
        catalogue_set.joinpath(*IMAGES), "--out", tmp_path / "matches.csv", "--quiet"], capsys)
    assert status == 0, stderr
    # The SavedModel it came from is another model: refused, naming both identities.
    status, _, stderr = run_main(predict_main, [
        "--catalog", tmp_path / "index", "--model", tiny_models["image"], "--csv",
        catalogue_set / "queries.csv", "--images", catalogue_set.joinpath(*IMAGES), "--out",
        tmp_path / "m2.csv", "--quiet"], capsys)
    assert status == 2 and "not a model this catalogue index was built with" in stderr


def load_index_embeddings(catalogue_set, model_dir, tmp_path):
    build_index(_options(catalogue_set, "all.csv", tmp_path / "saved_model_index", [model_dir]))
    return load_index(tmp_path / "saved_model_index").embeddings["image"]


def test_predict_tta_embeds_each_photo_as_the_mean_of_its_views(catalogue_set, tiny_models,
                                                                 tmp_path, capsys):
    """Self-matching with ``--tta flip``: every photo's embedding is the normalised mean of the
    photo's and its mirror image's (the mirror made independently, in NumPy, as a PNG),
    cached apart from the plain embeddings, and the report names the views."""
    import io

    import pandas as pd
    import tensorflow as tf
    from PIL import Image

    from tf_shopee.export import load_exported

    frame = pd.read_csv(catalogue_set / "all.csv", dtype=str).iloc[:24]
    csv = tmp_path / "postings.csv"
    frame.to_csv(csv, index=False)
    images = catalogue_set.joinpath(*IMAGES)
    cache = tmp_path / "cache"
    for tta in ("", "flip"):
        status, _, stderr = run_main(predict_main, [
            "--csv", csv, "--images", images, "--model", tiny_models["image"], "--no-tfidf",
            "--no-phash", "--out", tmp_path / f"matches{tta}.csv", "--report",
            tmp_path / f"report{tta}.json", "--cache-dir", cache, "--quiet",
            *(["--tta", tta] if tta else [])], capsys)
        assert status == 0, stderr
    assert json.loads((tmp_path / "reportflip.json").read_text())["options"]["tta"] == "flip"
    cached = sorted(cache.glob("image-*.npy"))
    flipped_file = [path for path in cached if "views_flip" in path.name]
    assert len(flipped_file) == 1 and len(cached) == 2
    flipped = np.load(flipped_file[0])
    model = load_exported(tiny_models["image"])
    photos, mirrors = [], []
    for name in frame["image"]:
        photos.append((images / name).read_bytes())
        # Decoded as the serving graph decodes it, mirrored in NumPy, stored losslessly.
        pixels = tf.io.decode_image(photos[-1], channels=3, expand_animations=False).numpy()
        stream = io.BytesIO()
        Image.fromarray(pixels[:, ::-1]).save(stream, "PNG")
        mirrors.append(stream.getvalue())
    plain, mirrored = model.embed(images=photos), model.embed(images=mirrors)
    expected = plain + mirrored
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    # Mirrored after resizing there, before it here: the same up to the resize's rounding.
    np.testing.assert_allclose(flipped, expected, atol=2e-3)
    assert not np.allclose(flipped, plain, atol=2e-3)


def test_the_app_embeds_uploads_as_the_index_embedded_its_photos(augmented, catalogue_set):
    """The app's queries get the index's test-time views unless --tta says otherwise; an
    uploaded copy of a catalogue photo finds that posting first, at similarity 1 (its stored
    embedding is the same mean of views)."""
    import pandas as pd

    from tf_shopee.catalog.live import LiveCatalog
    from tf_shopee.catalog.photos import prepare_query_photo

    live = LiveCatalog(augmented / "whole", [], check_seconds=3600)
    assert live.state.matcher.options.tta == "flip"
    assert LiveCatalog(augmented / "whole", [], tta="none",
                       check_seconds=3600).state.matcher.options.views.is_plain
    frame = pd.read_csv(catalogue_set / "all.csv", dtype=str)
    row = 7
    photo = prepare_query_photo(catalogue_set.joinpath(*IMAGES, frame["image"][row]).read_bytes())
    _, ranking = live.search(photo, "")
    first = ranking.matches[0]
    assert first.row == row or frame["image"][first.row] == frame["image"][row]
    assert first.scores["image"] > 0.999


def test_adding_plain_embeddings_to_an_index_of_views_is_refused(augmented, catalogue_set,
                                                                 tmp_path):
    from tf_shopee.errors import UserError

    before = load_index(augmented / "grown").manifest["rows"]
    (tmp_path / "embeddings").mkdir()
    with pytest.raises(UserError, match="embedded with views .*--tta flip, --catalog-augment 3"):
        add_to_index(str(augmented / "grown"), _options(
            catalogue_set, "queries.csv", embeddings=str(tmp_path / "embeddings")))
    assert load_index(augmented / "grown").manifest["rows"] == before
