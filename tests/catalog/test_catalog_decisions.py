"""Decisions for catalogue queries: a thresholds file's catalogue decision is used, and a decision
a catalogue cannot apply fails before any query is embedded."""

from __future__ import annotations

import json

import pytest
from catalog_helpers import run_main

from tf_shopee.catalog.index import BuildOptions, build_index
from tf_shopee.matching.decision import Decision, SourceRule, load_thresholds
from tf_shopee.predict import main as predict_main


@pytest.fixture(scope="module")
def text_index(catalogue_set, tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("decisions")
    build_index(BuildOptions(csv=str(catalogue_set / "all.csv"), images="", out=str(root / "index"),
                             models=[str(tiny_models["text"])], progress=False))
    return root / "index"


def _thresholds_file(path, decision: Decision, catalogue: Decision | None = None):
    payload = {"format": "tf_shopee.thresholds", "format_version": 2,
               "decision": decision.to_dict()}
    if catalogue is not None:
        payload["catalogue_decision"] = catalogue.to_dict()
        payload["uses"] = {"self-matching": "decision", "catalogue": "catalogue_decision"}
    path.write_text(json.dumps(payload))
    return path


BLENDING = Decision(sources=("text", "tfidf"), rules={
    "text": SourceRule(0.8, inb=0.7), "tfidf": SourceRule(0.5)}, search_rows=100)
PLAIN = Decision(sources=("text",), rules={"text": SourceRule(0.95)}, search_rows=100)


def _count_embedding(monkeypatch) -> list:
    from tf_shopee.matching import sources

    calls = []
    original = sources.embed_postings

    def counting(model, postings, **settings):
        calls.append(len(postings))
        return original(model, postings, **settings)

    monkeypatch.setattr(sources, "embed_postings", counting)
    return calls


def test_a_blending_decision_fails_before_any_query_is_embedded(text_index, catalogue_set,
                                                                tmp_path, capsys, monkeypatch):
    calls = _count_embedding(monkeypatch)
    thresholds = _thresholds_file(tmp_path / "thresholds.json", BLENDING)
    status, _, stderr = run_main(predict_main, [
        "--catalog", text_index, "--csv", catalogue_set / "queries.csv", "--thresholds",
        thresholds, "--out", tmp_path / "m.csv", "--quiet"], capsys)
    assert status == 2
    assert "which a catalogue cannot do per query" in stderr
    assert calls == []  # refused before the models ran


def test_the_files_catalogue_decision_is_used_for_queries(text_index, catalogue_set, tmp_path,
                                                          capsys):
    thresholds = _thresholds_file(tmp_path / "thresholds.json", BLENDING, PLAIN)
    assert load_thresholds(thresholds).rules["text"].inb == 0.7
    assert load_thresholds(thresholds, use="catalogue").rules["text"].threshold == 0.95
    report = tmp_path / "report.json"
    status, _, stderr = run_main(predict_main, [
        "--catalog", text_index, "--csv", catalogue_set / "queries.csv", "--thresholds",
        thresholds, "--out", tmp_path / "m.csv", "--report", report, "--quiet"], capsys)
    assert status == 0, stderr
    used = json.loads(report.read_text())["decision"]
    assert used["sources"] == ["text"] and used["rules"]["text"]["threshold"] == 0.95
