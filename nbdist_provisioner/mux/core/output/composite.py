"""How the outputs of several ranks become one output a person can tell apart.

Identical outputs of every shown rank go out unaltered. Anything else is shown
with rank labels that every frontend displays: JupyterLab and nbconvert HTML
render ``text/html`` and hide ``text/plain`` behind it, so a label only in
``text/plain`` is invisible next to a figure. One composite output holds the
ranks' outputs side by side (a grid of figures with rank captions, a table of
per-rank values), with ``text/plain`` labelled line by line for consoles and
terminals, and each rank's own mime bundle kept in ``metadata["nbdist"]
["outputs"]`` so nothing of what the ranks sent is lost in the saved notebook.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from typing import Any

from ....rankset import format_ranks

Json = dict[str, Any]

#: Mime types a composite can show inside its HTML.
_IMAGES = ("image/png", "image/jpeg", "image/gif")
_SHOWABLE = frozenset({*_IMAGES, "image/svg+xml", "text/html", "text/plain", "text/markdown",
                       "text/latex"})
#: Bytes of rank data one composite may hold; past it each rank's output goes out alone.
MAX_COMPOSITE = 8 * 1024 * 1024


def label_for(ranks: list[int]) -> str:
    """``[rank 2] `` or ``[ranks 0-3] ``: the label of a line or a plain-text output."""
    return f"[rank {ranks[0]}] " if len(ranks) == 1 else f"[ranks {format_ranks(ranks)}] "


def caption_for(ranks: list[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {format_ranks(ranks)}"


def fingerprint(msg_type: str, content: Json) -> str:
    """Equal for outputs a person cannot tell apart (what identical means)."""
    return json.dumps([msg_type, content.get("data"), content.get("metadata"),
                       content.get("ename"), content.get("evalue"), content.get("traceback")],
                      sort_keys=True, default=str)


def mime_shape(content: Json) -> frozenset[str]:
    """The mime types of an output: outputs of the same shape are shown side by side."""
    data = content.get("data")
    return frozenset(data) if isinstance(data, dict) else frozenset()


def can_compose(content: Json) -> bool:
    """Can this output be shown inside a composite's HTML (no widget view, no script)?"""
    shape = mime_shape(content)
    return bool(shape) and shape <= _SHOWABLE


def data_size(content: Json) -> int:
    data = content.get("data")
    return sum(len(str(v)) for v in data.values()) if isinstance(data, dict) else 0


@dataclass
class Member:
    """One distinct output of a group and the ranks that sent exactly it."""

    ranks: list[int]
    content: Json
    #: the rank message's own metadata (passed through when the output goes out unaltered)
    metadata: Json = field(default_factory=dict)


def with_ranks(content: Json, ranks: list[int], extra: Json | None = None) -> Json:
    """``content`` with ``metadata["nbdist"]["ranks"]`` (and ``rank`` for one)."""
    metadata = dict(content.get("metadata") or {})
    info: Json = {"ranks": sorted(ranks), **(extra or {})}
    if len(ranks) == 1:
        info["rank"] = ranks[0]
    metadata["nbdist"] = info
    return {**content, "metadata": metadata}


def label_text(content: Json, ranks: list[int]) -> Json:
    """Labels ``text/plain`` only: for outputs whose other mime types cannot be wrapped
    (a widget view), where the label is all that can be done."""
    data = content.get("data")
    if not isinstance(data, dict) or "text/plain" not in data:
        return with_ranks(content, ranks)
    return with_ranks({**content, "data": {**data, "text/plain": label_for(ranks)
                                           + str(data["text/plain"])}}, ranks)


def label_error(content: Json, ranks: list[int]) -> Json:
    """An error with its rank label on top of the traceback; ename/evalue stay as sent."""
    tb = list(content.get("traceback") or [])
    return with_ranks({**content, "traceback": [label_for(ranks).strip(), *tb]}, ranks)


def render(members: list[Member], all_ranks: tuple[int, ...]) -> Json:
    """One output (``data`` and ``metadata``, plus what else the first member carries)
    showing ``members``; unaltered when it is one output every rank in ``all_ranks`` sent."""
    members = sorted(members, key=lambda m: min(m.ranks))
    ranks = sorted(r for m in members for r in m.ranks)
    if len(members) == 1 and set(ranks) >= set(all_ranks):
        return with_ranks(members[0].content, ranks)
    kept = [{"ranks": sorted(m.ranks), "data": m.content.get("data") or {},
             "metadata": m.content.get("metadata") or {}} for m in members]
    text = "\n".join(_labelled_text(m) for m in members)
    data: Json = {"text/plain": text}
    if not all(mime_shape(m.content) <= {"text/plain"} for m in members) or len(members) > 1:
        data["text/html"] = _html(members)
    base = {k: v for k, v in members[0].content.items() if k not in ("data", "metadata")}
    return {**base, "data": data,
            "metadata": {"nbdist": {"ranks": ranks, **({"rank": ranks[0]} if len(ranks) == 1
                                                         else {}),
                                    "outputs": kept}}}


def composable(members: list[Member]) -> bool:
    return (all(can_compose(m.content) for m in members)
            and sum(data_size(m.content) for m in members) <= MAX_COMPOSITE)


# -- rendering ----------------------------------------------------------------------------
def _plain(content: Json) -> str:
    data = content.get("data") or {}
    return str(data.get("text/plain", next((f"<{k}>" for k in data), "")))


def _labelled_text(member: Member) -> str:
    label = label_for(sorted(member.ranks))
    lines = _plain(member.content).split("\n")
    pad = " " * len(label)
    return label + ("\n" + pad).join(lines)


_GRID = ("display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,{w}px),1fr));"
         "gap:8px 16px;align-items:start")
_CAPTION = "font-weight:600;font-size:90%;opacity:0.8;margin-bottom:2px"


def _html(members: list[Member]) -> str:
    if all(mime_shape(m.content) <= {"text/plain"} for m in members):
        return _table(members)
    width = 260 if any(_IMAGES[0] in mime_shape(m.content) or "image/svg+xml"
                       in mime_shape(m.content) for m in members) else 320
    cells = "".join(
        f'<figure class="nbdist-rank" data-ranks="{format_ranks(sorted(m.ranks))}" '
        f'style="margin:0;min-width:0;overflow:auto">'
        f'<figcaption style="{_CAPTION}">{html.escape(caption_for(sorted(m.ranks)))}'
        f"</figcaption>{_body(m.content)}</figure>" for m in members)
    return f'<div class="nbdist-ranks" style="{_GRID.format(w=width)}">{cells}</div>'


def _table(members: list[Member]) -> str:
    rows = "".join(
        f'<tr><th style="text-align:left;white-space:nowrap;vertical-align:top">'
        f"{html.escape(caption_for(sorted(m.ranks)))}</th>"
        f'<td style="text-align:left"><pre style="margin:0">{html.escape(_plain(m.content))}'
        f"</pre></td></tr>" for m in members)
    return f'<table class="nbdist-ranks"><tbody>{rows}</tbody></table>'


def _body(content: Json) -> str:
    data = content.get("data") or {}
    meta = content.get("metadata") or {}
    for mime in _IMAGES:
        if mime in data:
            size = meta.get(mime)
            size = size if isinstance(size, dict) else {}
            dims = "".join(f' {k}="{int(v)}"' for k, v in size.items()
                           if k in ("width", "height") and isinstance(v, (int, float)))
            src = str(data[mime]).replace("\n", "")
            return (f'<img src="data:{mime};base64,{src}"{dims} '
                    f'style="max-width:100%;height:auto" alt="figure">')
    if "image/svg+xml" in data:
        return f'<div style="max-width:100%">{data["image/svg+xml"]}</div>'
    if "text/html" in data:
        return f'<div style="max-width:100%;overflow:auto">{data["text/html"]}</div>'
    return f'<pre style="margin:0">{html.escape(_plain(content))}</pre>'
