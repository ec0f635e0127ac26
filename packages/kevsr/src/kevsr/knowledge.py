"""Knowledge-graph embeddings (ConceptNet Numberbatch format, spec §4.2) and keyword extraction (spec §3.1).

Numberbatch files are word2vec text: a header ``<num_terms> <dim>``, then ``<term> v_1 … v_dim`` per line,
plain or gzipped. Terms are ConceptNet URIs (``/c/en/hot_pot``) in the multilingual file and bare terms in the
English-only one. Only the rows of a given vocabulary are kept while streaming the file once. A ``.npy``
matrix with a ``<name>.vocab.txt`` beside it (one term per line) is read the same way.
"""

from __future__ import annotations

import gzip
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import numpy as np
import torch

__all__ = ["normalize_term", "KnowledgeEmbeddings", "candidate_terms", "extract_keywords"]

log = logging.getLogger(__name__)
README_HINT = "see README, Data preparation"


def normalize_term(term: str) -> str:
    """ConceptNet normalisation: lower-case, trimmed, inner whitespace → ``_``. A ConceptNet URI given as a label's
    ``kg`` or as a keyword (``/c/zh/火锅``) is reduced to its term, the key under which the loader stores rows."""
    return re.sub(r"\s+", "_", _bare(term.strip())[1].strip().lower())


def _bare(term: str) -> tuple[str | None, str]:
    """``/c/en/hot_pot`` → ("en", "hot_pot"); ``hot_pot`` → (None, "hot_pot")."""
    if term.startswith("/c/"):
        parts = term.split("/")
        if len(parts) >= 4:
            return parts[2], parts[3]
    return None, term


class KnowledgeEmbeddings:
    """A term → vector table holding only the needed rows of a KG embedding file.

    Args:
        vectors: normalised bare term → (G,) tensor.
        dim: G.
    """

    def __init__(self, vectors: dict[str, torch.Tensor], dim: int) -> None:
        self.vectors, self.dim = vectors, dim

    def __contains__(self, term: str) -> bool:
        return normalize_term(term) in self.vectors

    def __len__(self) -> int:
        return len(self.vectors)

    def get(self, term: str) -> torch.Tensor | None:
        return self.vectors.get(normalize_term(term))

    def vocabulary(self) -> list[str]:
        """The loaded (normalised) terms in a fixed, sorted order: the ids of ``keyword_ids``."""
        return sorted(self.vectors)

    @classmethod
    def load(
        cls, path: str, vocabulary: Iterable[str] | None = None, lang: Literal["en", "zh", "none"] = "en"
    ) -> KnowledgeEmbeddings:
        """Stream ``path`` once and keep the rows of ``vocabulary`` (all rows if None).

        With ``lang`` ``en``/``zh`` a URI row is kept only for that language (bare rows always match); with
        ``none`` the language of URIs is ignored.
        """
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(
                f"data.kg_path={path!r} does not exist; supply ConceptNet Numberbatch 19.08 "
                f"(numberbatch-en-19.08.txt.gz or numberbatch-19.08.txt.gz); {README_HINT}"
            )
        wanted = None if vocabulary is None else {normalize_term(t) for t in vocabulary}
        vectors: dict[str, torch.Tensor] = {}

        def keep(raw: str) -> str | None:
            term_lang, bare = _bare(raw)
            if term_lang is not None and lang != "none" and term_lang != lang:
                return None
            bare = normalize_term(bare)
            return bare if (wanted is None or bare in wanted) and bare not in vectors else None

        if p.suffix == ".npy":
            vocab_file = p.with_suffix(".vocab.txt")
            if not vocab_file.is_file():
                raise FileNotFoundError(f"data.kg_path={path!r}: missing vocabulary file {vocab_file.name!r}")
            try:
                matrix = np.load(p, mmap_mode="r")
            except (ValueError, OSError, EOFError) as err:  # numpy's message names no file
                raise ValueError(f"data.kg_path={path!r} cannot be read as .npy ({err})") from err
            if matrix.ndim != 2:
                raise ValueError(f"{path}: expected a (terms, dim) matrix, got shape {matrix.shape}")
            terms = vocab_file.read_text(encoding="utf-8").splitlines()
            if len(terms) != matrix.shape[0]:
                raise ValueError(f"{vocab_file}: {len(terms)} terms but {p.name} has {matrix.shape[0]} rows")
            for i, raw in enumerate(terms):
                term = keep(raw)
                if term is not None:
                    vectors[term] = torch.tensor(np.asarray(matrix[i]), dtype=torch.float32)
            return cls(vectors, int(matrix.shape[1]))
        opener = gzip.open if p.suffix == ".gz" else open
        with opener(p, "rt", encoding="utf-8") as fh:
            header = fh.readline().split()
            if len(header) != 2 or not all(h.isdigit() for h in header):
                raise ValueError(f"{path}: first line must be '<num_terms> <dim>' (word2vec text format)")
            dim = int(header[1])
            for lineno, line in enumerate(fh, start=2):
                raw, _, rest = line.rstrip("\n").partition(" ")
                term = keep(raw)
                if term is None:
                    continue
                try:
                    values = np.array(rest.split(), dtype=np.float32)
                except ValueError as err:  # numpy's message names neither the file nor the line
                    raise ValueError(f"{path}:{lineno}: term {raw!r} has a value that is not a number ({err})") from err
                if values.shape != (dim,):
                    raise ValueError(f"{path}:{lineno}: term {raw!r} has {values.size} values, expected {dim}")
                vectors[term] = torch.from_numpy(values)
        return cls(vectors, dim)


def candidate_terms(text: str, tokenizer: Literal["whitespace", "spacy", "jieba"] = "whitespace") -> list[str]:
    """Candidate words and two-word phrases of a description (reconstruction of spec §3.1), normalised."""
    if tokenizer == "jieba":
        try:
            import jieba
        except ImportError as err:
            raise ImportError(
                "data.tokenizer=jieba needs the optional 'jieba' package: pip install kevsr[zh] (or jieba)"
            ) from err
        words = [w for w in jieba.lcut(text) if w.strip()]
        # jieba's precise mode keeps compounds whole (麻辣火锅), which the KG seldom lists; its search mode also
        # gives the dictionary words inside them (麻辣, 火锅), added as candidates of their own
        inner = [w for w in jieba.lcut_for_search(text) if w.strip()]
    elif tokenizer == "spacy":
        inner = []
        try:
            import spacy
        except ImportError as err:
            raise ImportError("data.tokenizer=spacy needs spaCy: pip install kevsr[en] (or spacy)") from err
        words = [t.text for t in spacy.blank("en")(text) if not t.is_punct and not t.is_space]
    else:
        inner = []
        words = [w for w in re.split(r"[^\w]+", text) if w]
    words = [normalize_term(w) for w in words]
    # Two-word phrases: ConceptNet joins the words of a phrase with "_" (hot_pot); Chinese terms have no
    # separator (火锅店), so jieba's adjacent tokens are joined without one.
    sep = "" if tokenizer == "jieba" else "_"
    pairs = [f"{a}{sep}{b}" for a, b in zip(words, words[1:])]
    known = {*words, *pairs}
    return words + pairs + [w for w in dict.fromkeys(map(normalize_term, inner)) if w not in known]


def extract_keywords(
    text: str,
    kg: KnowledgeEmbeddings,
    max_keywords: int,
    tokenizer: Literal["whitespace", "spacy", "jieba"] = "whitespace",
) -> list[str]:
    """Embedding-based unsupervised keyword extraction (KeyBERT-style, reconstruction of spec §3.1).

    Candidates present in the KG are embedded with the KG vectors; the document embedding is their mean;
    candidates are ranked by cosine similarity to it and the top ``max_keywords`` distinct ones are kept.
    """
    seen: dict[str, torch.Tensor] = {}
    for term in candidate_terms(text, tokenizer):
        vec = kg.get(term)
        if vec is not None and term not in seen:
            seen[term] = vec
    if not seen:
        return []
    terms = list(seen)
    mat = torch.nn.functional.normalize(torch.stack([seen[t] for t in terms]), dim=1)  # (n, G)
    doc = torch.nn.functional.normalize(mat.mean(dim=0), dim=0)  # (G,)
    order = torch.argsort(mat @ doc, descending=True, stable=True)
    return [terms[i] for i in order[:max_keywords].tolist()]
