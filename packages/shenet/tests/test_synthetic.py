"""The §8c digits task: caption matching and the oracle R@1 ceiling of its gallery."""

from shenet.synthetic import DigitsSpec, caption_matches, make_split, oracle_recall_at_1


def spec(digit, adj, action, distractors=(), near=None):
    return DigitsSpec(digit, adj, action, 0, tuple(distractors), near)


def test_caption_matches_any_cell_and_near_clause():
    q = spec(3, "bright", "appears", near=5)
    assert caption_matches(q, spec(3, "bright", "appears", [(1, 5, "dim", "stays")]))
    assert not caption_matches(q, spec(3, "bright", "appears", [(1, 6, "dim", "stays")]))  # no five
    # a distractor of another video fits the caption exactly
    assert caption_matches(q, spec(5, "dim", "stays", [(1, 3, "bright", "appears")]))
    assert not caption_matches(q, spec(3, "dim", "appears", [(1, 5, "dim", "stays")]))  # adjective differs
    # appears / vanishes differ only in frame order
    v = spec(3, "bright", "vanishes", [(1, 5, "dim", "stays")])
    assert not caption_matches(q, v) and caption_matches(q, v, order_blind=True)


def test_oracle_recall_plain_loop():
    g = [spec(1, "dim", "stays"), spec(1, "dim", "stays"), spec(2, "dim", "stays"), spec(2, "dim", "appears")]
    assert oracle_recall_at_1(g) == 100 * (0.5 + 0.5 + 1 + 1) / 4
    specs = make_split("val", 40, seed=0)
    assert 100 / 40 <= oracle_recall_at_1(specs, order_blind=True) <= oracle_recall_at_1(specs) <= 100
