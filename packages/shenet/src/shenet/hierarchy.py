"""The text syntax hierarchy (spec §3.2): H1 the whole text, H2 verbs (actions), H3 nouns (entities), H4 adjectives
(attributes), with parent links noun → verb (or root) and adjective → noun (or root).

Three parser backends produce the same :class:`SyntaxHierarchy`:

* :class:`SpacyParser` — the reference (``spacy.load("en_core_web_sm")``: POS tags + dependencies).
* :class:`HeuristicParser` — a dependency-free rule parser (lexicons below), for tests and as a fallback.
* :class:`PrecomputedParser` — parses read from a JSON cache ``{raw text: {"nodes": [...]}}``.

Reconstruction: the paper says only that a syntax-analysis toolkit yields POS tags and dependencies; the toolkit
(spaCy), the node rules and the per-text caps are this package's choices (spec §3.2), each a config key of
:class:`ParserConfig`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal

from lightning.pytorch.utilities import rank_zero_warn
from mmzoo.config import check_literal_fields, check_range
from mmzoo.data import read_json, written_whole

__all__ = [
    "SyntaxNode",
    "SyntaxHierarchy",
    "ParserConfig",
    "HeuristicParser",
    "SpacyParser",
    "PrecomputedParser",
    "build_parser",
    "CachedParser",
    "ParseTable",
    "apply_caps",
    "write_parse_cache",
]

log = logging.getLogger(__name__)

Level = Literal["verb", "noun", "adj"]


@dataclass(frozen=True)
class SyntaxNode:
    """One hierarchy node: ``level`` verb|noun|adj, its ``text`` and character span ``[char_start, char_end)`` in
    the raw text, and ``parent``: the index of its parent in the same node list, or -1 for the root (H1)."""

    level: str
    text: str
    char_start: int
    char_end: int
    parent: int = -1


@dataclass(frozen=True)
class SyntaxHierarchy:
    """The parse of one text: its nodes in text order (parents index into ``nodes``)."""

    text: str
    nodes: tuple[SyntaxNode, ...]

    def of_level(self, level: str) -> list[int]:
        """Indices (into ``nodes``) of the nodes of one level, in text order."""
        return [i for i, n in enumerate(self.nodes) if n.level == level]

    def to_json(self) -> dict:
        """The precomputed-cache entry of this parse (spec §3.2 format)."""
        return {
            "nodes": [
                dict(level=n.level, text=n.text, char_start=n.char_start, char_end=n.char_end, parent=n.parent)
                for n in self.nodes
            ]
        }

    @staticmethod
    def from_json(text: str, entry: dict, source: str | Path = "parse cache") -> SyntaxHierarchy:
        """A cache entry (spec §3.2 format) checked against its text: each node's span must be a character span of
        ``text`` holding the node's ``text``, and its parent -1 (root) or a node of the level above (noun → verb,
        adj → noun; verbs hang from the root). ``source`` (the cache file) is named in the errors."""
        if not isinstance(entry, dict) or not isinstance(entry.get("nodes"), list):
            raise ValueError(f'{source}: parse of {text!r}: expected an object {{"nodes": [...]}}, got {entry!r}')
        raw = entry["nodes"]
        parent_level = {"verb": (), "noun": ("verb",), "adj": ("noun",)}
        nodes = []
        for k, n in enumerate(raw):

            def bad(why: str, k=k, n=n) -> ValueError:
                return ValueError(f"{source}: parse of {text!r}: node {k} {n}: {why}")

            missing = [key for key in ("level", "text", "char_start", "char_end", "parent") if key not in n]
            if missing:
                raise bad(f"missing key(s) {missing}")
            if n["level"] not in parent_level:
                raise bad(f"level {n['level']!r}; expected verb|noun|adj")
            start, end, parent = int(n["char_start"]), int(n["char_end"]), int(n["parent"])
            if not 0 <= start < end <= len(text) or text[start:end] != n["text"]:
                raise bad(
                    f"text[{start}:{end}] = {text[start:end]!r} is not the node text {n['text']!r} "
                    "(char_start/char_end must be character offsets into the raw text)"
                )
            if parent != -1:
                if not 0 <= parent < len(raw) or parent == k:
                    raise bad(f"parent {parent} is not -1 (root) or the index of another node (0..{len(raw) - 1})")
                if raw[parent]["level"] not in parent_level[n["level"]]:
                    allowed = " or ".join(("root", *parent_level[n["level"]]))
                    raise bad(f"parent {parent} is a {raw[parent]['level']} node; a {n['level']}'s parent is {allowed}")
            nodes.append(SyntaxNode(n["level"], n["text"], start, end, parent))
        return SyntaxHierarchy(text, tuple(nodes))


@dataclass
class ParserConfig:
    """How captions are parsed into the syntax hierarchy (spec §3.2)."""

    backend: Literal["auto", "spacy", "heuristic", "precomputed"] = "auto"
    """``spacy`` (reference), ``heuristic`` (built-in rules), ``precomputed`` (JSON cache) or ``auto`` (spaCy when the
    model loads, else heuristic with a warning: results are then not comparable to the paper)."""
    spacy_model: str = "en_core_web_sm"
    """spaCy pipeline name or path (``python -m spacy download en_core_web_sm``)."""
    cache_file: str | None = None
    """JSON parse cache ``{text: {"nodes": [...]}}``; required by ``precomputed`` (write one with ``shenet parse``)."""
    max_verbs: int = 4
    """Cap on verb nodes per sentence caption (spec §3.2; paragraphs: ``paragraph_max_verbs``)."""
    max_nouns: int = 8
    """Cap on noun nodes per sentence caption."""
    max_adjs: int = 8
    """Cap on adjective nodes per sentence caption."""
    paragraph: bool = False
    """Texts are paragraphs (DiDeMo, ActivityNet): the ``paragraph_*`` caps apply."""
    paragraph_max_verbs: int = 8
    paragraph_max_nouns: int = 16
    paragraph_max_adjs: int = 16

    def __post_init__(self) -> None:
        check_literal_fields(self, "data.parser")  # an unknown backend would be read as auto
        if self.backend == "precomputed" and not self.cache_file:
            raise ValueError(
                "data.parser.backend='precomputed' needs data.parser.cache_file (a JSON parse cache; "
                "write one with `shenet parse`)"
            )
        for key in (
            "max_verbs",
            "max_nouns",
            "max_adjs",
            "paragraph_max_verbs",
            "paragraph_max_nouns",
            "paragraph_max_adjs",
        ):
            check_range(f"data.parser.{key}", getattr(self, key), ge=0, integer=True)

    @property
    def caps(self) -> dict[str, int]:
        """The node caps that apply: ``{"verb": V, "noun": M, "adj": A}``."""
        if self.paragraph:
            return {"verb": self.paragraph_max_verbs, "noun": self.paragraph_max_nouns, "adj": self.paragraph_max_adjs}
        return {"verb": self.max_verbs, "noun": self.max_nouns, "adj": self.max_adjs}


def apply_caps(h: SyntaxHierarchy, caps: dict[str, int]) -> SyntaxHierarchy:
    """Keep the first ``caps[level]`` nodes of each level (text order); children of dropped nodes go to the root."""
    kept: list[int] = []
    count = {"verb": 0, "noun": 0, "adj": 0}
    for i, n in enumerate(h.nodes):
        if count[n.level] < caps[n.level]:
            kept.append(i)
            count[n.level] += 1
    new_index = {old: new for new, old in enumerate(kept)}
    nodes = tuple(
        SyntaxNode(n.level, n.text, n.char_start, n.char_end, new_index.get(n.parent, -1))
        for n in (h.nodes[i] for i in kept)
    )
    return SyntaxHierarchy(h.text, nodes)


# ------------------------------------------------------------------------------------------------ heuristic

_STOP = set(
    # determiners, numerals, pronouns
    "a an the this that these those some any each every another all both no one two three four five six seven "
    "eight nine ten several many few he she it they we i you him her them his its their our my your me us "
    "someone something somebody anyone anything who whom which what whose there here "
    "myself yourself himself herself itself ourselves yourselves themselves yours hers ours theirs "
    "everyone everybody everything nobody nothing none anybody either neither such whoever whatever "
    # prepositions, particles, conjunctions, adverbs
    "in on at of with by from to into onto over under near for about through across behind beside besides around "
    "up down out off inside outside next front along between against during after before above below beneath "
    "among amongst amid upon within without beyond underneath throughout past via like until since despite except "
    "alongside per because although though if unless whether nor yet when where how why "
    "towards toward while as and or but then so than too very also just not again away back together "
    # auxiliaries (spec §3.2) and modals
    "is are was were be been being has have had does do did am will would can could shall should may might must "
    "s t".split()
)
# Words that read as numerals in captions are stop-words above; in the digits task the digit names are nouns.
_DIGIT_NOUNS = {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}

_VERBS = set(
    "run runs ran walk walks walked play plays played ride rides rode talk talks talked sing sings sang dance dances "
    "cook cooks cut cuts jump jumps swim swims drive drives drove eat eats ate drink drinks throw throws catch "
    "catches kick kicks hit hits hold holds holds open opens close closes fall falls fell sit sits sat stand stands "
    "stood show shows shown explain explains speak speaks spoke fight fights make makes made put puts take takes "
    "took give gives gave look looks looked watch watches move moves wear wears pour pours mix mixes climb climbs "
    "fly flies flew push pushes pull pulls shoot shoots score scores laugh laughs smile smiles cry cries "
    "appear appears appeared vanish vanishes vanished stay stays stayed disappear disappears disappeared "
    "enter enters leave leaves left turn turns roll rolls slide slides skate skates ski skis surf surfs "
    "paint paints draw draws write writes read reads type types wash washes clean cleans brush brushes".split()
)
_NOT_VERBS_ING = {
    "thing",
    "things",
    "nothing",
    "something",
    "anything",
    "everything",
    "king",
    "ring",
    "spring",
    "evening",
    "morning",
    "ceiling",
    "clothing",
    "building",
    "buildings",
    "wedding",
    "painting",
    "string",
    "wing",
    "swing",
    "sibling",
    "darling",
    "pudding",
    "stocking",
}
_ADJS = set(
    # colours
    "red green blue yellow black white orange purple pink brown grey gray golden silver dark light bright dim "
    # sizes and ages
    "big small large little tiny huge tall short long old young new giant "
    # common descriptors
    "good bad beautiful pretty cute ugly happy sad angry funny hot cold wet dry fast slow loud quiet busy empty "
    "full clean dirty heavy thin fat strong weak rich poor real fake famous strange shiny wooden plastic metal "
    "first last other same different open closed".split()
)


@cache
def _clip_word_pattern():
    """CLIP's BPE word regex (open_clip's ``SimpleTokenizer.pat`` without the special tokens). It needs the ``regex``
    module (Unicode letter classes), which open_clip itself depends on."""
    import regex

    return regex.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+", regex.IGNORECASE)


def clip_words(text: str) -> list[tuple[str, int, int]]:
    """The alphabetic words of ``text`` as CLIP's tokenizer splits it: ``(lower-cased word, char_start, char_end)``.

    The text is split with CLIP's word regex (case-insensitive, so character offsets into the raw text hold); pieces
    that are not alphabetic — contraction suffixes such as ``'re``/``'ll``/``'s``, single digits, punctuation — are
    not words. A word keeps its non-ASCII letters ("café" is one word)."""
    return [
        (m.group(0).lower(), m.start(), m.end()) for m in _clip_word_pattern().finditer(text) if m.group(0).isalpha()
    ]


def _is_verb(w: str) -> bool:
    return w in _VERBS or (w.endswith("ing") and len(w) > 4 and w not in _NOT_VERBS_ING)


class HeuristicParser:
    """Dependency-free rule parser (spec §3.2 "Heuristic backend").

    Splits the text with CLIP's word regex and keeps its alphabetic pieces, lower-cased (:func:`clip_words`: a
    contraction suffix such as ``'re`` or ``'ll`` is not a word); stop-words (determiners, numerals, pronouns,
    prepositions, conjunctions, auxiliaries) are skipped; verbs are words of a verb lexicon or ``-ing`` words longer
    than 4 letters; adjectives are words of an adjective lexicon (colours, sizes, ages, descriptors); every other
    word is a noun. Parents: a noun's is the nearest preceding verb, else the following verb, else the root; an
    adjective's is the next noun, else the previous noun, else the root.

    Deviations (none changes the digits task): the lexicons live in this module (not as package data files); a digit
    name (``zero`` ... ``nine``) counts as a noun unless a noun follows it ("two dogs"), so the digits task of spec
    §8c parses exactly; the stop-words also hold modals, the auxiliaries ``had/do/did/am`` and common adverbs and
    particles (``very``, ``not``, ``up``, ``away``); a short list of ``-ing`` nouns (``_NOT_VERBS_ING``: "morning",
    "building", "painting", ...) are nouns, not verbs; and nouns separated only by spaces are merged into one node
    (the analogue of spaCy's compounds: "soccer player").
    """

    name = "heuristic"

    def __call__(self, text: str) -> SyntaxHierarchy:
        words = clip_words(text)
        tagged: list[tuple[str, int, int]] = []  # (level, start, end)
        for k, (w, s, e) in enumerate(words):
            nxt = words[k + 1][0] if k + 1 < len(words) else None
            if w in _DIGIT_NOUNS and not (nxt is not None and _plain_noun(nxt)):
                level = "noun"  # "a bright seven appears" (but "two dogs": a numeral)
            elif w in _STOP:
                continue
            elif _is_verb(w):
                level = "verb"
            elif w in _ADJS:
                level = "adj"
            else:
                level = "noun"
            if level == "noun" and tagged and tagged[-1][0] == "noun" and _adjacent(text, tagged[-1][2], s):
                tagged[-1] = ("noun", tagged[-1][1], e)  # merge a compound "soccer player"
                continue
            tagged.append((level, s, e))
        verbs = [k for k, t in enumerate(tagged) if t[0] == "verb"]
        nouns = [k for k, t in enumerate(tagged) if t[0] == "noun"]
        parents = []
        for k, (level, _, _) in enumerate(tagged):
            if level == "verb":
                parents.append(-1)
            elif level == "noun":
                before = [v for v in verbs if v < k]
                after = [v for v in verbs if v > k]
                parents.append(before[-1] if before else (after[0] if after else -1))
            else:
                after = [n for n in nouns if n > k]
                before = [n for n in nouns if n < k]
                parents.append(after[0] if after else (before[-1] if before else -1))
        nodes = tuple(SyntaxNode(lv, text[s:e], s, e, p) for (lv, s, e), p in zip(tagged, parents, strict=True))
        return SyntaxHierarchy(text, nodes)


def _plain_noun(w: str) -> bool:
    """A word the heuristic parser would tag as a noun on its own."""
    return w not in _STOP and w not in _DIGIT_NOUNS and not _is_verb(w) and w not in _ADJS


def _adjacent(text: str, end: int, start: int) -> bool:
    """True when only spaces separate two words."""
    return text[end:start].strip() == ""


# ---------------------------------------------------------------------------------------------------- spaCy


class SpacyParser:
    """spaCy-based parser (spec §3.2 node rules).

    H2 verbs: ``pos_ == "VERB"`` (``AUX`` excluded). H3 nouns: ``pos_ in {NOUN, PROPN}``; a ``compound`` noun is merged
    into its head noun. H4 adjectives: ``pos_ == "ADJ"``. A noun's parent is the nearest VERB on its head chain, else
    the root. An adjective's parent is its head when that is a noun; else the ``nsubj`` noun of its head; else the
    closest noun by token distance; else the root. Verbs hang from the root.

    Args:
        model: a loaded ``spacy.Language`` or the name/path to ``spacy.load``.
    """

    name = "spacy"

    def __init__(self, model: str | object = "en_core_web_sm"):
        if isinstance(model, str):
            self.nlp = load_spacy(model)
        else:
            self.nlp = model

    def __call__(self, text: str) -> SyntaxHierarchy:
        return hierarchy_from_doc(self.nlp(text))


def load_spacy(model: str):
    """``spacy.load(model)`` with an error that says how to install the model."""
    try:
        import spacy
    except ImportError as err:  # pragma: no cover - spacy is a dependency
        raise ImportError("data.parser.backend='spacy' needs spaCy: pip install spacy") from err
    try:
        return spacy.load(model)
    except OSError as err:
        raise OSError(
            f"data.parser.spacy_model={model!r}: the spaCy model could not be loaded. Install it with "
            f"`python -m spacy download {model}` (spaCy's release channel, not PyPI), point data.parser.spacy_model at a "
            "model folder, or use data.parser.backend: heuristic / precomputed (see README, Text parsing)."
        ) from err


def hierarchy_from_doc(doc) -> SyntaxHierarchy:
    """Apply the spec §3.2 node rules to a parsed spaCy ``Doc`` (tests build Docs with hand-set heads/POS/deps)."""
    tokens = list(doc)

    def is_noun(t) -> bool:
        return t.pos_ in ("NOUN", "PROPN")

    def compound_head(t):
        """The noun a compound chain attaches to (``t`` itself when not a compound of a noun)."""
        seen = 0
        while t.dep_ == "compound" and is_noun(t) and is_noun(t.head) and t.head.i != t.i and seen < len(tokens):
            t = t.head
            seen += 1
        return t

    # one node per verb / adjective token / non-compound noun token; compounds widen their head's span
    spans: dict[int, list[int]] = {}  # node token index -> [start char, end char]
    level_of: dict[int, str] = {}
    for t in tokens:
        if t.pos_ == "VERB":
            level_of[t.i] = "verb"
            spans[t.i] = [t.idx, t.idx + len(t.text)]
        elif t.pos_ == "ADJ":
            level_of[t.i] = "adj"
            spans[t.i] = [t.idx, t.idx + len(t.text)]
        elif is_noun(t):
            h = compound_head(t)
            level_of.setdefault(h.i, "noun")
            span = spans.setdefault(h.i, [h.idx, h.idx + len(h.text)])
            span[0] = min(span[0], t.idx)
            span[1] = max(span[1], t.idx + len(t.text))
    order = sorted(level_of)
    node_of_token = {ti: k for k, ti in enumerate(order)}
    noun_tokens = [ti for ti in order if level_of[ti] == "noun"]

    def noun_node(t) -> int | None:
        if is_noun(t):
            h = compound_head(t)
            if level_of.get(h.i) == "noun":
                return node_of_token[h.i]
        return None

    parents = []
    for ti in order:
        t = doc[ti]
        level = level_of[ti]
        parent = -1
        if level == "noun":
            a, steps = t, 0
            while a.head.i != a.i and steps < len(tokens):
                a = a.head
                steps += 1
                if a.pos_ == "VERB":
                    parent = node_of_token[a.i]
                    break
        elif level == "adj":
            head_node = noun_node(t.head) if t.head.i != t.i else None
            if head_node is not None:
                parent = head_node
            else:
                subj = [c for c in t.head.children if c.dep_ in ("nsubj", "nsubjpass") and noun_node(c) is not None]
                if t.head.i != t.i and subj:
                    parent = noun_node(subj[0])
                elif noun_tokens:
                    closest = min(noun_tokens, key=lambda n: (abs(n - ti), n))
                    parent = node_of_token[closest]
        parents.append(parent)
    text = doc.text
    nodes = tuple(
        SyntaxNode(level_of[ti], text[spans[ti][0] : spans[ti][1]], spans[ti][0], spans[ti][1], p)
        for ti, p in zip(order, parents, strict=True)
    )
    return SyntaxHierarchy(text, nodes)


# ----------------------------------------------------------------------------------------------- precomputed


class PrecomputedParser:
    """Parses read from a JSON cache ``{raw text: {"nodes": [{level, text, char_start, char_end, parent}]}}``."""

    name = "precomputed"

    def __init__(self, cache_file: str | Path):
        path = Path(cache_file)
        if not path.is_file():
            raise FileNotFoundError(
                f"data.parser.cache_file={str(path)!r}: no such parse cache; write one with "
                "`shenet parse` (see README, Text parsing)"
            )
        self.path = path
        self.entries: dict = read_json(path, "data.parser.cache_file")
        if not isinstance(self.entries, dict):
            raise ValueError(f"data.parser.cache_file={str(path)!r}: expected an object mapping texts to parses")

    def __call__(self, text: str) -> SyntaxHierarchy:
        if text not in self.entries:
            raise KeyError(
                f"data.parser.cache_file={str(self.path)!r} has no parse of the text {text!r}; regenerate the "
                "cache with `shenet parse` for this dataset"
            )
        return SyntaxHierarchy.from_json(text, self.entries[text], f"data.parser.cache_file={str(self.path)!r}")


@dataclass
class CachedParser:
    """A parser plus the caps, memoised per text (a text is never parsed twice in one process)."""

    parser: object
    caps: dict[str, int]
    cache: dict[str, SyntaxHierarchy] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.parser.name

    def __call__(self, text: str) -> SyntaxHierarchy:
        h = self.cache.get(text)
        if h is None:
            h = apply_caps(self.parser(text), self.caps)
            self.cache[text] = h
        return h

    def prefill(self, texts: list[str], progress: bool = True) -> None:
        """Parse every not-yet-cached text once (spaCy: batched with ``nlp.pipe``), with a progress bar."""
        from tqdm.auto import tqdm

        todo = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if not todo:
            return
        if isinstance(self.parser, SpacyParser):
            docs = self.parser.nlp.pipe(todo, batch_size=256)
            parses = (hierarchy_from_doc(d) for d in docs)
        else:
            parses = (self.parser(t) for t in todo)
        bar = tqdm(
            parses, total=len(todo), desc=f"parsing captions ({self.name})", disable=not progress or len(todo) < 2000
        )
        for t, h in zip(todo, bar, strict=True):
            self.cache[t] = apply_caps(h, self.caps)


class ParseTable:
    """Frozen parses (text → :class:`SyntaxHierarchy`, already capped) handed to DataLoader workers."""

    def __init__(self, parses: dict[str, SyntaxHierarchy], name: str):
        self.parses, self.name = parses, name

    def __call__(self, text: str) -> SyntaxHierarchy:
        try:
            return self.parses[text]
        except KeyError as err:
            raise KeyError(f"text {text!r} was not parsed in SHENetDataModule.setup") from err


def build_parser(cfg: ParserConfig) -> CachedParser:
    """The parser ``cfg.backend`` asks for; ``auto`` falls back to the heuristic parser with a one-time warning."""
    if cfg.backend == "heuristic":
        parser: object = HeuristicParser()
    elif cfg.backend == "spacy":
        parser = SpacyParser(cfg.spacy_model)
    elif cfg.backend == "precomputed":
        parser = PrecomputedParser(cfg.cache_file)
    else:
        try:
            parser = SpacyParser(cfg.spacy_model)
        except (OSError, ImportError) as err:
            rank_zero_warn(
                f"data.parser.backend='auto': spaCy model {cfg.spacy_model!r} unavailable ({type(err).__name__}); using "
                "the heuristic parser. Results are NOT comparable to the paper's; install it with "
                f"`python -m spacy download {cfg.spacy_model}`."
            )
            parser = HeuristicParser()
    return CachedParser(parser, cfg.caps)


def write_parse_cache(texts: list[str], parser, path: str | Path) -> Path:
    """Parse ``texts`` (uncapped) and write the spec §3.2 JSON cache to ``path``."""
    path = Path(path)
    entries = {t: parser(t).to_json() for t in dict.fromkeys(texts)}
    with written_whole(path) as tmp:  # a parse stopped part-way leaves no cache that lacks captions
        tmp.write_text(json.dumps(entries))
    return path
