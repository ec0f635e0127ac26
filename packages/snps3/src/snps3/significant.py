"""Significant words (spec §3.3): POS-frequency mining over a caption corpus, the official JSON files, loading.

The mined file ``count_reprocess_<corpus>.json`` is one JSON object whose ten keys (``id``, ``name``,
``total_count``, ``verb_count``, ``noun_count``, ``adj_count``, ``rank``, ``verb_percentage``, ``noun_percentage``,
``adj_percentage``) are lists of length V indexed by vocabulary id. A word is significant iff ``rank[id] <= K_top``.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from mmzoo.data import read_json, read_jsonl, written_whole

log = logging.getLogger(__name__)

__all__ = [
    "OFFICIAL_KEYS",
    "ABANDON_WEBVID",
    "ABANDON_COCO_VG",
    "Tagger",
    "spacy_tagger",
    "count_pos",
    "build_count_table",
    "tie_sharing_rank",
    "mine_significant_words",
    "write_count_json",
    "load_rank",
    "significant_mask",
    "build_same_lemma_table",
    "load_same_lemma",
    "read_vocab",
    "mine_command",
    "lemma_command",
]

OFFICIAL_KEYS = (
    "id",
    "name",
    "total_count",
    "verb_count",
    "noun_count",
    "adj_count",
    "rank",
    "verb_percentage",
    "noun_percentage",
    "adj_percentage",
)
ABANDON_WEBVID = ("background", "backgrounds", "be", "is", "was", "were", "are")
"""Words dropped when mining WebVid (official list)."""
ABANDON_COCO_VG = ("be", "is", "was", "were", "are")
"""Words dropped when mining COCO / Visual Genome (official list)."""
COUNTED_POS = ("VERB", "NOUN", "ADJ", "NUM")

Tagger = Callable[[Sequence[str]], list[list[tuple[str, str]]]]
"""A POS tagger: a batch of captions -> per caption a list of (token text, coarse POS) pairs (spaCy's ``pos_``)."""


def spacy_tagger(model: str = "en_core_web_sm", batch_size: int = 256) -> Tagger:
    """A :data:`Tagger` backed by a spaCy pipeline (installed package name or model folder path)."""
    try:
        import spacy
    except ImportError as err:
        raise ImportError("significant-word mining needs spaCy: pip install spacy") from err
    try:
        nlp = spacy.load(model, disable=["parser", "ner", "lemmatizer"])
    except OSError as err:
        raise OSError(
            f"spaCy model {model!r} not found. Install it with `python -m spacy download en_core_web_sm` "
            "(or pass the path of a spaCy model folder, or a tagger callable)"
        ) from err

    def tag(captions: Sequence[str]) -> list[list[tuple[str, str]]]:
        return [[(tok.text, tok.pos_) for tok in doc] for doc in nlp.pipe(captions, batch_size=batch_size)]

    return tag


def count_pos(
    captions: Iterable[str], tagger: Tagger, batch_size: int = 256, total: int | None = None, progress: bool = True
) -> Counter:
    """Count ``(POS, token.text)`` for every token whose coarse POS is VERB, NOUN, ADJ or NUM (step 1)."""
    from tqdm import tqdm

    counts: Counter = Counter()
    batch: list[str] = []
    bar = tqdm(total=total, desc="mining significant words (POS tagging)", unit="caption", disable=not progress)

    def flush() -> None:
        for tokens in tagger(batch):
            for text, pos in tokens:
                if pos in COUNTED_POS:
                    counts[(pos, text)] += 1
        bar.update(len(batch))
        batch.clear()

    for caption in captions:
        batch.append(caption)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    bar.close()
    return counts


def tie_sharing_rank(total_count: np.ndarray) -> np.ndarray:
    """rank[id] = index of the first occurrence of total_count[id] in the counts sorted descending (step 3).

    Ties share a rank; e.g. counts [5, 0, 5, 3] -> ranks [0, 3, 0, 2].
    """
    neg_sorted = np.sort(-np.asarray(total_count, dtype=np.int64))  # ascending negatives = descending counts
    return np.searchsorted(neg_sorted, -np.asarray(total_count, dtype=np.int64), side="left").astype(np.int64)


def build_count_table(
    counts: Counter, vocab: Sequence[str], abandon: Iterable[str] = ABANDON_WEBVID, percentage_threshold: float = 0.25
) -> dict[str, list]:
    """Map ``(POS, string)`` counts to vocabulary ids by exact match and build the official 10-key table (step 2-5).

    Strings not in the vocabulary, strings of length 1 and ``abandon`` words are dropped; NUM is not counted.
    Reconstruction (step 5): percentages are verb/noun/adj shares of ``total_count``; shares below
    ``percentage_threshold`` are zeroed and the rest renormalised (does not affect ``rank``).
    """
    index = {w: i for i, w in enumerate(vocab)}
    drop = set(abandon)
    v = len(vocab)
    per_pos = {"VERB": np.zeros(v, np.int64), "NOUN": np.zeros(v, np.int64), "ADJ": np.zeros(v, np.int64)}
    for (pos, text), n in counts.items():
        if pos not in per_pos or len(text) <= 1 or text in drop or text not in index:
            continue
        per_pos[pos][index[text]] += n
    total = per_pos["VERB"] + per_pos["NOUN"] + per_pos["ADJ"]
    shares = np.stack([per_pos["VERB"], per_pos["NOUN"], per_pos["ADJ"]]).astype(np.float64)  # (3, V)
    shares = np.divide(shares, np.maximum(total, 1)[None])
    shares[shares < percentage_threshold] = 0.0
    shares = np.divide(shares, np.maximum(shares.sum(0, keepdims=True), 1e-12))
    return {
        "id": list(range(v)),
        "name": list(vocab),
        "total_count": total.tolist(),
        "verb_count": per_pos["VERB"].tolist(),
        "noun_count": per_pos["NOUN"].tolist(),
        "adj_count": per_pos["ADJ"].tolist(),
        "rank": tie_sharing_rank(total).tolist(),
        "verb_percentage": shares[0].tolist(),
        "noun_percentage": shares[1].tolist(),
        "adj_percentage": shares[2].tolist(),
    }


def mine_significant_words(
    captions: Iterable[str],
    vocab: Sequence[str],
    tagger: Tagger | None = None,
    spacy_model: str | None = None,
    abandon: Iterable[str] = ABANDON_WEBVID,
    total: int | None = None,
    progress: bool = True,
) -> dict[str, list]:
    """Mine the significant-word table of a caption corpus (spec §3.3). Give ``tagger`` or ``spacy_model``.

    Raises OSError naming ``en_core_web_sm`` when neither a tagger nor an installed spaCy model is available.
    """
    if tagger is None:
        tagger = spacy_tagger(spacy_model or "en_core_web_sm")
    return build_count_table(count_pos(captions, tagger, total=total, progress=progress), vocab, abandon)


def write_count_json(table: dict[str, list], path: str | Path) -> Path:
    """Write the table as the official ``count_reprocess_<corpus>.json`` (one JSON object)."""
    missing = [k for k in OFFICIAL_KEYS if k not in table]
    if missing:
        raise KeyError(f"significant-word table lacks keys {missing}")
    with written_whole(path) as tmp:  # whole or absent
        tmp.write_text(json.dumps({k: table[k] for k in OFFICIAL_KEYS}))
    return Path(path)


def load_rank(path: str | Path, vocab_size: int | None = None, vocab: Sequence[str] | None = None) -> np.ndarray:
    """``rank`` list of a ``count_reprocess_*.json`` as int64 (V,); checks its length against ``vocab_size`` and,
    when ``vocab`` (the tokenizer's strings by id) is given, its ``name`` list against it (spec §4.1): a table mined
    with another vocabulary would mark other words as significant."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"significant-word file {str(path)!r} does not exist (official "
            "count_reprocess_webvid.json, or mine one with `snps3 mine-words`); see README, "
            "Data preparation"
        )
    table = read_json(path, "significant-word file")
    if not isinstance(table, dict) or "rank" not in table:
        raise KeyError(f"{str(path)!r}: missing key 'rank' (expected the official 10-key format)")
    rank = np.asarray(table["rank"], dtype=np.int64)
    if vocab_size is not None and len(rank) != vocab_size:
        raise ValueError(f"{str(path)!r}: 'rank' has {len(rank)} entries but the tokenizer has {vocab_size} words")
    if vocab is not None and "name" in table:
        names = table["name"]
        if len(names) != len(vocab):
            raise ValueError(f"{str(path)!r}: 'name' has {len(names)} entries but the tokenizer has {len(vocab)} words")
        wrong = next((i for i, (a, b) in enumerate(zip(names, vocab)) if a != b), None)
        if wrong is not None:
            raise ValueError(f"{str(path)!r}: 'name'[{wrong}] is {names[wrong]!r} but the tokenizer's word {wrong} is "
                             f"{vocab[wrong]!r}: the table was mined with another vocabulary")  # fmt: skip
    return rank


def significant_mask(rank: np.ndarray, top_k: int = 3000) -> np.ndarray:
    """Boolean (V,): significant iff ``rank[id] <= top_k`` (step 4; ties at the boundary are included)."""
    return np.asarray(rank) <= top_k


def build_same_lemma_table(vocab: Sequence[str], lemmatize: Callable[[Sequence[str]], list[str]]) -> list[list[str]]:
    """Same-lemma table (spec §3.3 item 6): entry ``id`` lists the vocabulary strings sharing word ``id``'s lemma.

    Reconstruction: the official construction is unreleased; we lemmatise every alphabetic entry and group by
    lemma. Entries with no other word of the same lemma are empty, as in the official file.
    """
    words = [w if w.isalpha() else "" for w in vocab]
    lemmas = lemmatize(words)
    groups: dict[str, list[str]] = {}
    for w, lemma in zip(words, lemmas):
        if w:
            groups.setdefault(lemma, []).append(w)
    return [groups[lemma] if w and len(groups[lemma]) > 1 else [] for w, lemma in zip(words, lemmas)]


def load_same_lemma(path: str | Path, vocab_size: int | None = None) -> list[list[str]]:
    """Read ``vocab_simi_list_new.json`` (a list of length V of string lists)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"same-lemma file {str(path)!r} does not exist (official vocab_simi_list_new.json, "
            "or build one with `snps3 lemma-table`); see README, Data preparation"
        )
    table = read_json(path, "same-lemma file")
    if not isinstance(table, list) or (vocab_size is not None and len(table) != vocab_size):
        raise ValueError(f"{str(path)!r}: expected a JSON list of length {vocab_size} (one list per vocabulary id)")
    return table


def read_vocab(path: str | Path) -> list[str]:
    """Lines of a WordPiece ``vocab.txt`` (one token per line, the line index is the id)."""
    return Path(path).read_text(encoding="utf-8").splitlines()


def _caption_lines(paths: Sequence[str]) -> tuple[list[str], int]:
    captions = []
    for p in paths:
        if not Path(p).is_file():
            raise FileNotFoundError(f"annotation file {p!r} does not exist")
        for lineno, item in read_jsonl(p, "annotation file"):
            if not isinstance(item, dict) or "caption" not in item:
                raise KeyError(f"{p}:{lineno}: missing key 'caption'")
            if not isinstance(item["caption"], str):
                raise ValueError(f"{p}:{lineno}: 'caption' = {item['caption']!r} is not a string")
            captions.append(item["caption"])
    return captions, len(captions)


def mine_command(argv: list[str]) -> Path:
    """``snps3 mine-words``: mine ``count_reprocess_<corpus>.json`` from JSONL annotation files."""
    p = argparse.ArgumentParser(prog="snps3 mine-words", description=mine_command.__doc__)
    p.add_argument("annotations", nargs="+", help="JSONL annotation files with a 'caption' key per line")
    p.add_argument("--vocab", required=True, help="WordPiece vocab.txt (bert-base-uncased)")
    p.add_argument("--out", required=True, help="output JSON path, e.g. count_reprocess_webvid.json")
    p.add_argument(
        "--spacy-model", default="en_core_web_sm", help="spaCy model name or folder (default en_core_web_sm)"
    )
    p.add_argument("--abandon", choices=["webvid", "coco_vg"], default="webvid", help="official abandon list")
    a = p.parse_args(argv)
    captions, n = _caption_lines(a.annotations)
    table = mine_significant_words(
        captions,
        read_vocab(a.vocab),
        spacy_model=a.spacy_model,
        abandon=ABANDON_WEBVID if a.abandon == "webvid" else ABANDON_COCO_VG,
        total=n,
    )
    out = write_count_json(table, a.out)
    log.info("wrote %s", out)
    return out


def lemma_command(argv: list[str]) -> Path:
    """``snps3 lemma-table``: build ``vocab_simi_list_new.json`` by lemmatising the vocabulary with spaCy."""
    p = argparse.ArgumentParser(prog="snps3 lemma-table", description=lemma_command.__doc__)
    p.add_argument("--vocab", required=True, help="WordPiece vocab.txt")
    p.add_argument("--out", required=True, help="output JSON path (vocab_simi_list_new.json)")
    p.add_argument(
        "--spacy-model", default="en_core_web_sm", help="spaCy model name or folder (default en_core_web_sm)"
    )
    a = p.parse_args(argv)
    import spacy
    from tqdm import tqdm

    try:
        nlp = spacy.load(a.spacy_model, disable=["parser", "ner"])
    except OSError as err:
        raise OSError(
            f"spaCy model {a.spacy_model!r} not found: install en_core_web_sm "
            "(`python -m spacy download en_core_web_sm`) or pass --spacy-model PATH"
        ) from err
    vocab = read_vocab(a.vocab)

    def lemmatize(words: Sequence[str]) -> list[str]:
        docs = nlp.pipe(words, batch_size=1024)
        return [(doc[0].lemma_ if len(doc) else "") for doc in tqdm(docs, total=len(words), desc="lemmatising vocab")]

    out = Path(a.out)
    table = build_same_lemma_table(vocab, lemmatize)
    with written_whole(out) as tmp:  # whole or absent
        tmp.write_text(json.dumps(table))
    return out
