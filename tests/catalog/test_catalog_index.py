"""The catalogue index: build / add / info, queries against brute force, refused models and
interrupted builds."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from catalog_helpers import run_main, run_tool

from tf_shopee.catalog.cli import main as catalog_main
from tf_shopee.catalog.index import BuildOptions, add_to_index, build_index, load_index
from tf_shopee.errors import UserError
from tf_shopee.predict import main as predict_main

CATALOG = "-m", "tf_shopee.catalog"


def _options(root, csv, out="", models=(), **extra) -> BuildOptions:
    return BuildOptions(csv=str(root / csv), images=str(root / "data" / "train_images"),
                        out=str(out), models=[str(model) for model in models], progress=False,
                        **extra)


@pytest.fixture(scope="module")
def built(catalogue_set, tiny_models, tmp_path_factory):
    """Index of all 100 catalogue postings built at once, and one built from part A then
    added part B (the add's embedding calls are counted)."""
    from tf_shopee.matching import sources

    root = tmp_path_factory.mktemp("indexes")
    models = [tiny_models["image"], tiny_models["text"]]
    build_index(_options(catalogue_set, "all.csv", root / "whole", models))
    build_index(_options(catalogue_set, "part_a.csv", root / "grown", models))
    embedded = []
    original = sources.embed_postings

    def counting(model, postings, **settings):
        embedded.append((model.kind, len(postings)))
        return original(model, postings, **settings)

    sources.embed_postings = counting  # every model call goes through embed_sources
    try:
        add_to_index(str(root / "grown"), _options(catalogue_set, "part_b.csv"))
    finally:
        sources.embed_postings = original
    return {"whole": load_index(root / "whole"), "grown": load_index(root / "grown"),
            "add_embedded": embedded, "root": root}


def test_add_embeds_only_new_postings_and_equals_a_build_of_everything(built):
    whole, grown = built["whole"], built["grown"]
    assert sorted(built["add_embedded"]) == [("image", 20), ("text", 20)]
    assert grown.posting_ids == whole.posting_ids
    assert grown.titles == whole.titles
    assert grown.image_phashes == whole.image_phashes
    np.testing.assert_array_equal(grown.label_groups, whole.label_groups)
    assert set(grown.embeddings) == {"image", "text", "concat"} == set(whole.embeddings)
    for name in whole.embeddings:
        np.testing.assert_allclose(grown.embeddings[name], whole.embeddings[name], atol=1e-5)
    assert grown.vectorizer.vocabulary_ == whole.vectorizer.vocabulary_
    np.testing.assert_allclose(grown.vectorizer.idf_, whole.vectorizer.idf_)
    np.testing.assert_allclose(grown.tfidf_blended.toarray(), whole.tfidf_blended.toarray(),
                               atol=1e-6)
    assert [grown.thumbnail(row) for row in range(100)] == [whole.thumbnail(row)
                                                          for row in range(100)]
    assert [step["action"] for step in grown.manifest["history"]] == ["build", "add"]


def _brute_force(queries: np.ndarray, catalogue: np.ndarray, k: int):
    scores = queries @ catalogue.T
    order = np.lexsort((np.broadcast_to(np.arange(catalogue.shape[0]), scores.shape), -scores),
                       axis=1)[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def test_query_neighbours_equal_brute_force(built, catalogue_set, tiny_models, hamming_distances):
    from sklearn.preprocessing import normalize

    from tf_shopee.catalog.index import resolve_models
    from tf_shopee.catalog.query import CatalogMatcher
    from tf_shopee.matching.model_free import ModelFreeSettings
    from tf_shopee.matching.options import PredictOptions
    from tf_shopee.matching.postings import read_postings
    from tf_shopee.neighbours.tfidf import clean_title

    index = built["whole"]
    options = PredictOptions(csv=str(catalogue_set / "queries.csv"),
                             images=str(catalogue_set / "data" / "train_images"), k=10,
                             progress=False)
    matcher = CatalogMatcher(index, resolve_models(index.manifest, []), options, search="exact")
    postings = read_postings(**options.postings_arguments())
    result = matcher.match(postings)
    assert set(result.neighbours) == {"image", "text", "concat", "tfidf", "phash", "phash_text"}
    assert set(result.search.values()) == {"exact"}

    catalogue = pd.read_csv(catalogue_set / "all.csv", dtype=str)
    catalogue_images = [(catalogue_set / "data" / "train_images" / name).read_bytes()
                        for name in catalogue["image"]]
    for name, model in zip(("image", "text"), matcher.models):
        # The stored embeddings are the model's.
        np.testing.assert_allclose(
            index.embeddings[name],
            model.embed(images=catalogue_images, titles=catalogue["title"].tolist()), atol=1e-5)
        images = [open(path, "rb").read() for path in postings.image_paths]
        queries = model.embed(images=images, titles=postings.titles)
        indices, scores = _brute_force(queries, index.embeddings[name], 11)
        np.testing.assert_allclose(result.neighbours[name].scores, scores[:, :10], atol=1e-5)
        # Rows whose 11 best scores are apart by more than float rounding have one order.
        untied = np.abs(np.diff(scores, axis=1)).min(axis=1) > 1e-5
        np.testing.assert_array_equal(result.neighbours[name].indices[untied],
                                      indices[untied, :10])

    # phash: Hamming distances to every catalogue hash.
    valid = [hash_ for hash_ in index.image_phashes]
    distances = hamming_distances(postings.image_phashes, valid)
    found = result.neighbours["phash"]
    for row in range(len(postings)):
        real = found.indices[row] >= 0
        np.testing.assert_allclose(found.scores[row][real],
                                   1 - distances[row, found.indices[row][real]] / 64)
        if distances[row].min() <= 20:  # ModelFreeSettings.phash_max_distance
            assert found.scores[row][0] == pytest.approx(1 - distances[row].min() / 64)
        else:
            assert not real.any()

    # TF-IDF: the query blended with its catalogue neighbours, searched against the blended
    # catalogue, recomputed densely.
    settings = ModelFreeSettings(**index.manifest["model_free_settings"])
    vectors = normalize(index.vectorizer.transform([clean_title(title)
                                                    for title in postings.titles]))
    catalogue_raw = index.tfidf_vectors.toarray()
    query_raw = vectors.toarray()
    raw_scores = query_raw @ catalogue_raw.T
    weights = np.where(raw_scores >= settings.blend_threshold, raw_scores, 0.0)
    phash_scores = 1 - distances / 64
    weights = np.maximum(weights, np.where(
        phash_scores >= 1 - settings.blend_phash_distance / 64, phash_scores, 0.0))
    agree = (phash_scores >= 1 - settings.blend_agreement_distance / 64) & (
        raw_scores >= settings.agreement_min_cosine)
    weights = np.maximum(weights, np.where(agree, phash_scores, 0.0))
    blended = query_raw + weights @ catalogue_raw
    blended /= np.maximum(np.linalg.norm(blended, axis=1, keepdims=True), 1e-12)
    expected = blended @ index.tfidf_blended.toarray().T
    text = result.neighbours["tfidf"]
    for row in range(len(postings)):
        real = text.indices[row] >= 0
        np.testing.assert_allclose(text.scores[row][real], expected[row, text.indices[row][real]],
                                   atol=1e-5)
        assert text.scores[row][0] == pytest.approx(expected[row].max(), abs=1e-5)


def test_predict_catalog_writes_catalogue_ids_and_scores_them(built, catalogue_set, tmp_path,
                                                             capsys):
    from tf_shopee.catalog.query import COMBINED

    out, report_path = tmp_path / "matches.csv", tmp_path / "report.json"
    status, stdout, stderr = run_main(predict_main, [
        "--catalog", built["root"] / "whole", "--csv", catalogue_set / "queries.csv", "--images",
        catalogue_set / "data" / "train_images", "--out", out, "--evaluate", "--report",
        report_path, "--quiet"], capsys)
    assert status == 0, stderr
    assert "top-1 accuracy" in stdout
    queries = pd.read_csv(catalogue_set / "queries.csv", dtype=str)
    catalogue = pd.read_csv(catalogue_set / "all.csv", dtype=str)
    written = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert written["posting_id"].tolist() == queries["posting_id"].tolist()
    label_of = dict(zip(catalogue["posting_id"], catalogue["label_group"]))
    predicted = [matches.split() for matches in written["matches"]]
    assert all(ids and set(ids) <= set(label_of) for ids in predicted)  # min2: never empty
    report = json.loads(report_path.read_text())
    # F1 per source of the decision's union (a source left out of it has none), and combined.
    assert set(report["decision"]["sources"]) <= set(report["sources"])
    assert set(report["f1"]) == set(report["decision"]["sources"]) | {COMBINED}
    # The report's combined F1 and top-1 are those of the file written.
    f1, top1, counted = [], [], 0
    for query_label, ids in zip(queries["label_group"], predicted):
        truth = {posting for posting, label in label_of.items() if label == query_label}
        hits = len(truth & set(ids))
        f1.append(2 * hits / (len(ids) + len(truth)) if ids or truth else 1.0)
        if truth:
            counted += 1
            top1.append(label_of[ids[0]] == query_label)
    assert report["f1"][COMBINED] == pytest.approx(np.mean(f1))
    assert report["queries_with_product_in_catalogue"] == counted
    assert report["top1_accuracy"] == pytest.approx(np.mean(top1))


def test_a_model_other_than_the_indexs_is_refused(built, catalogue_set, tiny_models, tmp_path,
                                                  capsys):
    whole = built["root"] / "whole"
    status, _, stderr = run_main(predict_main, [
        "--catalog", whole, "--csv", catalogue_set / "queries.csv", "--images",
        catalogue_set / "data" / "train_images", "--model", tiny_models["other_image"],
        "--model", tiny_models["text"], "--out", tmp_path / "m.csv"], capsys)
    assert status == 2, stderr
    assert "is not a model this catalogue index was built with" in stderr
    # The same model folder, retrained (other weights) after the index was built.
    moved = tmp_path / "moved"
    shutil.copytree(whole, moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    changed = tmp_path / "image_model"
    shutil.copytree(tiny_models["other_image"], changed)
    manifest["models"][0]["path"] = str(changed)
    (moved / "manifest.json").write_text(json.dumps(manifest))
    status, _, stderr = run_main(catalog_main, [
        "add", "--index", moved, "--csv", catalogue_set / "queries.csv", "--images",
        catalogue_set / "data" / "train_images"], capsys)
    assert status == 2
    assert "has changed since the index was built" in stderr


def test_an_interrupted_build_or_add_leaves_nothing_taken_for_an_index(
        catalogue_set, tmp_path, monkeypatch):
    from tf_shopee.catalog import index as catalog_index

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # a Ctrl-C after the embeddings were written

    out = tmp_path / "index"
    monkeypatch.setattr(catalog_index, "model_free_state", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_index(_options(catalogue_set, "part_a.csv", out))
    assert not out.exists()
    # No partial folder either; only the writers' lock file stays (a lock is held, not owned).
    assert [path.name for path in tmp_path.iterdir()] == [".index.lock"]
    monkeypatch.undo()

    build_index(_options(catalogue_set, "part_a.csv", out))
    before = (out / "manifest.json").read_bytes()
    monkeypatch.setattr(catalog_index, "model_free_state", interrupted)
    with pytest.raises(KeyboardInterrupt):
        add_to_index(str(out), _options(catalogue_set, "part_b.csv"))
    monkeypatch.undo()
    assert (out / "manifest.json").read_bytes() == before
    assert len(load_index(out, verify_checksums=True)) == 80

    # A build killed with SIGKILL leaves its hidden partial folder: never an index, and removed
    # by the next run.
    killed = tmp_path / ".other.partial-999999999"
    shutil.copytree(out, killed)
    (killed / "manifest.json").unlink()
    completed = run_tool(*CATALOG, "info", "--index", killed, check=False)
    assert completed.returncode == 2 and "not a catalogue index" in completed.stderr
    build_index(_options(catalogue_set, "part_b.csv", tmp_path / "other"))
    assert not killed.exists()


def test_damaged_index_and_bad_commands_are_clear_errors(catalogue_set, tmp_path, capsys):
    out = tmp_path / "index"
    status, _, stderr = run_main(catalog_main, ["build", "--csv", catalogue_set / "part_a.csv",
                                                "--out", out, "--quiet"], capsys)
    assert status == 0, stderr
    info = run_tool(*CATALOG, "info", "--index", out, "--verify")  # as a user runs it
    assert "rows: 80" in info.stdout and "tfidf: vocabulary" in info.stdout
    for arguments, message in [
        (("build", "--csv", catalogue_set / "part_a.csv", "--out", out),
         "already holds a catalogue index"),
        (("build", "--csv", catalogue_set / "part_a.csv", "--out", catalogue_set / "part_a.csv"),
         "would overwrite"),
        (("add", "--index", out, "--csv", catalogue_set / "part_a.csv"),
         "already in the catalogue"),
        (("add", "--index", out, "--csv", catalogue_set / "part_b.csv", "--images",
          catalogue_set / "data" / "train_images"), "built without images"),
    ]:
        status, _, stderr = run_main(catalog_main, arguments, capsys)
        assert status == 2 and message in stderr, (arguments, stderr)
    with open(out / "postings.csv", "a") as stream:
        stream.write("extra,row,,\n")
    completed = run_tool(*CATALOG, "info", "--index", out, check=False)
    assert completed.returncode == 2 and "damaged index" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_a_text_only_catalogue_answers_title_queries(catalogue_set, tmp_path, capsys):
    out = tmp_path / "index"
    build_index(BuildOptions(csv=str(catalogue_set / "all.csv"), out=str(out), progress=False))
    index = load_index(out)
    assert not index.manifest["has_images"] and not index.has_thumbnails
    status, stdout, stderr = run_main(predict_main, [
        "--catalog", out, "--csv", catalogue_set / "queries.csv", "--out", tmp_path / "m.csv",
        "--evaluate", "--no-phash", "--quiet"], capsys)
    assert status == 0, stderr
    assert "tfidf" in stdout and "phash" not in stdout
    with pytest.raises(UserError, match="not a catalogue index"):
        load_index(tmp_path)


def test_the_stored_approximate_index_answers_like_the_exact_search(built, catalogue_set,
                                                                     tmp_path):
    from tf_shopee.catalog.index import resolve_models
    from tf_shopee.catalog.query import CatalogMatcher
    from tf_shopee.matching.options import PredictOptions
    from tf_shopee.matching.postings import read_postings

    index_dir = tmp_path / "index"
    shutil.copytree(built["root"] / "whole", index_dir)
    # An add with --ann always stores an IVF index per embedding source.
    add_to_index(str(index_dir), _options(catalogue_set, "queries.csv", ann="always"))
    index = load_index(index_dir, verify_checksums=True)
    assert set(index.manifest["ann"]) == {"image", "text", "concat"}
    options = PredictOptions(csv=str(catalogue_set / "part_b.csv"),
                             images=str(catalogue_set / "data" / "train_images"), k=10,
                             progress=False)
    postings = read_postings(**options.postings_arguments())
    models = resolve_models(index.manifest, [])
    exact = CatalogMatcher(index, models, options, search="exact").match(postings)
    approximate = CatalogMatcher(index, models, options, search="ann", nprobe=64).match(postings)
    assert set(approximate.search.values()) == {"ann"}
    for name in ("image", "text", "concat"):  # every cell probed: the same neighbours
        scores = exact.neighbours[name].scores
        np.testing.assert_allclose(approximate.neighbours[name].scores, scores, atol=1e-5)
        # Where no two scores of a row are within float rounding (FAISS and TF round the last
        # bits differently), the order is the same too (the last place competes with an 11th
        # candidate that is not returned, so it is left out).
        untied = np.abs(np.diff(scores, axis=1)).min(axis=1) > 1e-5
        assert untied.sum() >= len(untied) // 2
        np.testing.assert_array_equal(approximate.neighbours[name].indices[untied, :-1],
                                      exact.neighbours[name].indices[untied, :-1])


def test_the_catalogue_table_shows_rules_in_their_units():
    from tf_shopee.catalog.query import format_catalog_table
    from tf_shopee.matching.decision import Decision, SourceRule

    decision = Decision(("tfidf", "phash"), {"tfidf": SourceRule(0.35, beta=0.5),
                                             "phash": SourceRule(8.0)})
    report = {"decision": decision.to_dict(), "thresholds": {"tfidf": 0.3, "phash": 8.0},
              "f1": {"tfidf": 0.5, "phash": 0.4, "combined": 0.6},
              "recall_at_1": {"tfidf": 0.7}, "top1_accuracy": 0.8,
              "queries_with_product_in_catalogue": 5, "queries": 6}
    rows = {line.split()[0]: line for line in format_catalog_table(report).splitlines()}
    assert "<= 8 bits" in rows["phash"] and "0.300 + 0.5*bg" in rows["tfidf"]
    assert "0.6000" in rows["combined"]
