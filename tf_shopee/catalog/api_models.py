"""The JSON API's response bodies (pydantic models: the OpenAPI schema at ``/docs`` is made from
them) and their construction from a :class:`tf_shopee.catalog.live.Ranking`."""

from __future__ import annotations

from pydantic import BaseModel, Field

from tf_shopee.catalog.live import CatalogState, Ranking

_SCORES = ("source → this posting's score for the query, in the source's units: a cosine "
           "similarity (higher is closer), or for phash and phash_text a Hamming distance in "
           "bits of 64 (lower is closer)")


class MatchItem(BaseModel):
    """One catalogue posting in a ranking."""

    rank: int = Field(description="1 for the first")
    posting_id: str
    title: str
    label_group: int | None = Field(None, description="when the catalogue has labels")
    matched: bool = Field(description="listed by the match decision (false: only among the "
                          "nearest, or no decision is set)")
    matched_by: list[str] = Field(description="sources whose rule matches it")
    scores: dict[str, float] = Field(description=_SCORES)
    thumbnail: str | None = Field(None, description="URL of its stored thumbnail")


class DecisionInfo(BaseModel):
    """Whether matches are decided, and how."""

    set: bool = Field(description="false: no rule for some sources; results are a ranking by "
                      "similarity and nothing is marked matched")
    description: str = Field(description="the decision in one line, or how to set one")
    undecided_sources: list[str]


class PhotoInfo(BaseModel):
    """The uploaded photo as read."""

    width: int
    height: int
    phash: str = Field(description="its 64-bit perceptual hash, 16 hex digits")


class MatchResponse(BaseModel):
    """``POST /api/match``."""

    index_version: str
    title: str
    photo: PhotoInfo | None
    decision: DecisionInfo
    sources: list[str] = Field(description="the sources that searched for this query")
    matches: list[MatchItem]
    seconds: float = Field(description="time of the model calls and searches")


class PostingResponse(BaseModel):
    """``GET /api/postings/{posting_id}``."""

    index_version: str
    posting_id: str
    title: str
    label_group: int | None
    image_phash: str | None
    thumbnail: str | None
    decision: DecisionInfo
    matches: list[MatchItem] = Field(description="its own matches in the catalogue")


class ModelInfo(BaseModel):
    """A model of the index."""

    source: str
    kind: str
    fingerprint: str = Field(description="first 12 hex digits of its sha256 fingerprint")


class HealthResponse(BaseModel):
    """``GET /api/health``."""

    status: str
    index: str
    index_version: str = Field(description="changes with every catalog build or add; the app "
                               "reloads the index when it does")
    postings: int
    sources: list[str]
    models: list[ModelInfo]
    decision: DecisionInfo
    loaded_at: str
    reload_error: str | None = Field(None, description="why a newer version of the index could "
                                     "not be loaded (the previous one is still served)")


def decision_info(state: CatalogState) -> DecisionInfo:
    """The state's decision for the API."""
    return DecisionInfo(set=state.decided, description=state.decision,
                        undecided_sources=state.undecided)


def match_items(state: CatalogState, ranking: Ranking, thumbnail_url) -> list[MatchItem]:
    """A ranking's matches for the API."""
    index = state.index
    items = []
    for rank, match in enumerate(ranking.matches, start=1):
        posting_id = index.posting_ids[match.row]
        items.append(MatchItem(
            rank=rank, posting_id=posting_id, title=index.titles[match.row],
            label_group=None if index.label_groups is None
            else int(index.label_groups[match.row]),
            matched=match.matched, matched_by=match.matched_by, scores=match.scores,
            thumbnail=thumbnail_url(state, posting_id) if index.has_thumbnails else None))
    return items
