"""BPE alignment of hierarchy nodes (spec §3.3, §8d)."""

import torch
from open_clip.tokenizer import SimpleTokenizer

from shenet.hierarchy import HeuristicParser, ParserConfig, build_parser
from shenet.tokenization import TextEncoder, collate_texts


def encoder(max_words=32):
    return TextEncoder(build_parser(ParserConfig(backend="heuristic")), max_words, 4, 8, 8)


def test_ids_match_open_clip_tokenizer():
    enc = encoder(32)
    tok = SimpleTokenizer()
    texts = [
        "a man in a red shirt is playing a guitar",
        "Two dogs run, on the green-grass!",
        "tom &amp; jerry cartoon plays",  # HTML entities are unescaped, as open_clip does
        "a \u201cfunny\u201d clip &lt;b&gt;now",  # curly quotes straightened by ftfy
        "caf\u00e9 owner\u00a0talks  fast\tnow",
        "\uff26\uff55\uff4c\uff4c-width letters",
    ]
    for text in texts:
        ref = [tok.encoder["<start_of_text>"]] + tok.encode(text) + [tok.encoder["<end_of_text>"]]
        ids = enc(text).input_ids
        assert ids[: len(ref)].tolist() == ref and not ids[len(ref) :].any(), text


def test_cleaned_chunks_keep_node_alignment():
    enc = encoder(32)
    tok = SimpleTokenizer()
    text = "tom &amp; jerry cartoon plays"
    e = enc(text)
    nouns = [n.text for n in HeuristicParser()(text).nodes if n.level == "noun"]
    decoded = [tok.decode(e.input_ids[e.noun_pool[k].nonzero().flatten()].tolist()).strip() for k in range(len(nouns))]
    # words outside the changed chunk keep their own tokens; the node inside it ("amp" of "&amp;") gets the chunk's
    # cleaned token "&"
    assert nouns == ["tom", "amp", "jerry cartoon"] and decoded == ["tom", "&", "jerry cartoon"]
    assert "&" in tok.decode(e.input_ids.tolist()) and "amp" not in tok.decode(e.input_ids.tolist())


def test_node_spans_recover_characters():
    enc = encoder(32)
    tok = SimpleTokenizer()
    text = "The soccer player kicks the ball"
    e = enc(text)
    h = HeuristicParser()(text)
    for level, pool, mask in (("verb", e.verb_pool, e.verb_mask), ("noun", e.noun_pool, e.noun_mask)):
        level_nodes = [n for n in h.nodes if n.level == level]
        assert int(mask.sum()) == len(level_nodes)
        for k, n in enumerate(level_nodes):
            positions = pool[k].nonzero().flatten()
            assert torch.allclose(pool[k].sum(), torch.tensor(1.0))
            # decoding the node's tokens (SOT at position 0 shifts by one) gives the node's words
            decoded = tok.decode(e.input_ids[positions].tolist()).strip()
            assert decoded == n.text.lower()
    # parents: both nouns hang from the verb slot 0
    assert e.noun_parent[:2].tolist() == [0, 0] and e.noun_parent[2:].tolist() == [-1] * 6


def test_truncated_nodes_dropped_and_adj_parent():
    text = "a red car drives near a tall green building"
    full = encoder(32)(text)
    short = encoder(6)(text)  # SOT + 4 pieces + EOT: "a red car drives"
    assert short.input_ids[-1] == SimpleTokenizer().encoder["<end_of_text>"]
    assert full.noun_mask.sum() == 2 and short.noun_mask.sum() == 1
    assert full.adj_mask.sum() == 3 and short.adj_mask.sum() == 1
    assert short.adj_parent[0] == 0 and full.adj_parent[:3].tolist() == [0, 1, 1]
    assert short.verb_mask.sum() == 1
    # pooled positions never point past the EOT
    assert (short.noun_pool.nonzero()[:, 1] < 5).all()


def test_collate_shapes():
    enc = encoder(16)
    b = collate_texts([enc("a man plays a guitar"), enc("a woman is on stage")])
    assert b["text_input_ids"].shape == (2, 16)
    assert b["text_verb_pool"].shape == (2, 4, 16) and b["text_noun_pool"].shape == (2, 8, 16)
    assert b["text_verb_mask"].tolist()[1] == [False] * 4
