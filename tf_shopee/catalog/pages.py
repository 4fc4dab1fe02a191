"""The web app's HTML pages: plain server-rendered HTML, no script, every value escaped.

Posting pages and thumbnails are addressed by posting id (stable across ``catalog add``; a row
number is not, after a rebuild); thumbnail URLs carry the index version, so a browser's cache
never shows one version's photo for another version's posting.
"""

from __future__ import annotations

import base64
import html
import urllib.parse

from tf_shopee.catalog.live import (
    CatalogState,
    Match,
    Ranking,
    describe_rule,
    source_meaning,
)
from tf_shopee.matching.sources import is_phash_source

PAGE_SIZE = 48

_STYLE = """
body{font-family:system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d232a}
header{background:#ee4d2d;color:#fff;padding:12px 24px}header a{color:#fff;margin-right:18px}
main{padding:16px 24px}form.search{background:#fff;padding:16px;border-radius:8px;
box-shadow:0 1px 3px #0002;display:flex;gap:12px;flex-wrap:wrap;align-items:end}
form.search label{display:flex;flex-direction:column;font-size:13px;gap:4px}
input[type=text]{width:360px;padding:6px}button{padding:8px 18px;background:#ee4d2d;color:#fff;
border:0;border-radius:4px;cursor:pointer}.grid{display:flex;flex-wrap:wrap;gap:12px;margin-top:16px}
.card{background:#fff;width:190px;border-radius:8px;box-shadow:0 1px 3px #0002;padding:8px;
font-size:12px}.card img,.query img{width:174px;height:174px;object-fit:contain;background:#eee}
.card .title{height:3.6em;overflow:hidden}.card.below{opacity:.6}.rank{font-weight:bold}
.sources span{display:inline-block;background:#e8f0fe;border-radius:3px;padding:1px 4px;margin:1px}
.sources span.hit{background:#d7f5dd}.query{display:flex;gap:16px;align-items:center;
background:#fff;padding:12px;border-radius:8px;margin-top:12px}.error{color:#b00020}
.note{background:#fff4e5;border-left:4px solid #f0a030;padding:8px 12px;margin:12px 0}
.help{background:#fff;padding:12px 16px;border-radius:8px;margin-top:16px;font-size:14px}
.help td{padding:2px 12px 2px 0;vertical-align:top}.nav a{margin-right:10px}
"""


def posting_url(posting_id: str) -> str:
    """The page of a catalogue posting."""
    return "/postings/" + urllib.parse.quote(posting_id, safe="")


def thumbnail_url(state: CatalogState, posting_id: str) -> str:
    """The stored thumbnail of a catalogue posting, for this version."""
    return (f"/thumbs/{urllib.parse.quote(posting_id, safe='')}.jpg"
            f"?v={state.index.version}")


def page(state: CatalogState, title: str, body: str) -> str:
    """A whole HTML page."""
    sources = ", ".join(state.matcher.sources) or "none"
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        "<header><a href='/'><b>tf_shopee catalogue</b></a><a href='/browse'>browse</a>"
        "<a href='/docs'>API</a>"
        f"<span>{len(state.index):,} postings · sources: {html.escape(sources)}</span></header>"
        f"<main>{body}</main></body></html>"
    )


def _form(title: str = "") -> str:
    return (
        "<form class='search' method='post' action='/search' enctype='multipart/form-data'>"
        "<label>photo<input type='file' name='photo' id='photo' accept='image/*'></label>"
        "<label>title<input type='text' name='title' id='title' maxlength='1000' "
        f"value='{html.escape(title, quote=True)}' placeholder='e.g. Kopi sachet 10 pcs'>"
        "</label><button type='submit' id='submit'>find matches</button></form>"
    )


def _decision_note(state: CatalogState) -> str:
    if state.decided:
        return ""
    return f"<p class='note' id='no-decision'>{html.escape(state.decision)}</p>"


def home(state: CatalogState, *, error: str = "", title: str = "") -> str:
    """The search form, what to do, and what the sources and the decision are."""
    message = f"<p class='error' id='error'>{html.escape(error)}</p>" if error else ""
    rows = "".join(
        f"<tr><td><b>{html.escape(name)}</b></td><td>{html.escape(source_meaning(name))}</td>"
        f"<td>{html.escape(describe_rule(state, name))}</td></tr>"
        for name in state.matcher.sources)
    decided = (f"<p>A catalogue posting is listed as a match when its sources' rules say so "
               f"(<code>{html.escape(state.decision)}</code>); below the matches, the nearest "
               "other postings are shown faded.</p>" if state.decided else "")
    help_text = (
        "<div class='help' id='help'><p><b>Find a product in the catalogue.</b> Upload a photo "
        "of it, type its title, or both, and press <i>find matches</i>: the app compares your "
        f"query with the {len(state.index):,} catalogue postings and lists the closest, with "
        "the score of every source that found them. <a href='/browse'>Browse</a> the catalogue "
        "to see any posting's own matches; programs can use the <a href='/docs'>JSON API</a>."
        f"</p>{decided}<table><tr><th align='left'>source</th><th align='left'>compares</th>"
        f"<th align='left'>match rule</th></tr>{rows}</table></div>")
    return page(state, "search the catalogue",
                _form(title) + message + _decision_note(state) + help_text)


def results(state: CatalogState, ranking: Ranking, *, title: str,
            shown_photo: bytes | None) -> str:
    """The results page of an uploaded query."""
    query = "<div class='query'>"
    if shown_photo:
        encoded = base64.b64encode(shown_photo).decode("ascii")
        query += f"<img alt='your photo' src='data:image/jpeg;base64,{encoded}'>"
    query += (f"<div><b>your query</b><br>{html.escape(title) or '<i>no title</i>'}"
              f"<br><small>{len(ranking.matches)} shown, {ranking.seconds:.2f} s</small>"
              "</div></div>")
    return page(state, "matches",
                _form(title) + _decision_note(state) + query + grid(state, ranking))


def posting(state: CatalogState, row: int, ranking: Ranking) -> str:
    """A catalogue posting and its matches."""
    index = state.index
    posting_id = index.posting_ids[row]
    head = (f"<div class='query'><img alt='' src='{thumbnail_url(state, posting_id)}'><div>"
            f"<b>{html.escape(posting_id)}</b><br>{html.escape(index.titles[row])}"
            f"{_label(state, row)}</div></div>"
            "<h3>its matches in the catalogue</h3>")
    return page(state, posting_id, _decision_note(state) + head + grid(state, ranking))


def browse(state: CatalogState, page_number: int) -> str:
    """A page of the catalogue, :data:`PAGE_SIZE` postings."""
    total = len(state.index)
    pages = max(1, -(-total // PAGE_SIZE))
    page_number = min(max(page_number, 0), pages - 1)
    rows = range(page_number * PAGE_SIZE, min((page_number + 1) * PAGE_SIZE, total))
    cards = "".join(card(state, row) for row in rows)
    navigation = "<p class='nav'>" + (f"<a href='/browse?page={page_number - 1}'>previous</a>"
                                      if page_number else "")
    navigation += f"page {page_number + 1} of {pages} " + (
        f"<a href='/browse?page={page_number + 1}'>next</a>" if page_number + 1 < pages
        else "") + "</p>"
    return page(state, "browse", navigation + f"<div class='grid'>{cards}</div>" + navigation)


def not_found(state: CatalogState, message: str) -> str:
    """A page for a missing posting or page."""
    return page(state, "not found", f"<p class='error' id='error'>{html.escape(message)}</p>"
                "<p><a href='/'>search the catalogue</a></p>")


def _label(state: CatalogState, row: int) -> str:
    if state.index.label_groups is None:
        return ""
    return f"<br><small>label_group {int(state.index.label_groups[row])}</small>"


def card(state: CatalogState, row: int, match: Match | None = None,
         rank: int | None = None) -> str:
    """One catalogue posting as a card (with its scores when it answers a query)."""
    index = state.index
    posting_id = index.posting_ids[row]
    link = posting_url(posting_id)
    faded = " below" if match is not None and not match.matched else ""
    parts = [f"<div class='card{faded}' data-posting-id='{html.escape(posting_id, quote=True)}'>"
             f"<a href='{link}'><img alt='' loading='lazy' "
             f"src='{thumbnail_url(state, posting_id)}'></a>"]
    ranked = f"<span class='rank'>#{rank}</span> " if rank is not None else ""
    parts.append(f"<div>{ranked}<a class='posting-id' href='{link}'>"
                 f"{html.escape(posting_id)}</a></div>")
    parts.append(f"<div class='title'>{html.escape(index.titles[row])}</div>")
    if match is not None:
        chips = []
        # Best first in each source's own terms: higher similarity, fewer bits.
        for name, value in sorted(match.scores.items(), key=lambda item: (
                is_phash_source(item[0]), item[1] if is_phash_source(item[0]) else -item[1])):
            hit = " class='hit'" if name in match.matched_by else ""
            shown = (f"{int(value)} bits" if is_phash_source(name) else f"{value:.3f}")
            chips.append(f"<span{hit}>{html.escape(name)} {shown}</span>")
        if not state.decided:
            verdict = "nearest by similarity (no match decision set)"
        elif match.matched_by:
            verdict = "matched by " + ", ".join(match.matched_by)
        elif match.matched:
            verdict = "matched (nearest neighbour: min2)"
        else:
            verdict = "nearest, below every threshold"
        parts.append(f"<div class='sources'>{''.join(chips)}</div>"
                     f"<div class='verdict'>{html.escape(verdict)}</div>")
    parts.append(_label(state, row) + "</div>")
    return "".join(parts)


def grid(state: CatalogState, ranking: Ranking) -> str:
    """The ranked matches as cards."""
    if not ranking.matches:
        return "<p>no catalogue posting found by any source</p>"
    cards = "".join(card(state, match.row, match, rank)
                    for rank, match in enumerate(ranking.matches, start=1))
    return f"<div class='grid' id='matches'>{cards}</div>"

