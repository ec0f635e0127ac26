"""CLIP BPE tokenisation aligned with the syntax hierarchy (spec §3.3).

CLIP's BPE encodes each regex word on its own, so a text's token ids are the concatenation of its words' pieces:
encoding word by word gives every word its token span (offset +1 for the start-of-text token). A hierarchy node
covers the words whose character spans overlap its own; its pooling row is uniform over those words' tokens.

Text cleaning follows open_clip's tokenizer (ftfy ``fix_text``, HTML unescaping, whitespace collapsing,
lower-casing), applied to each whitespace-separated chunk of the raw text so that character offsets survive: a chunk
the cleaning leaves unchanged (up to case) keeps exact per-word offsets; a chunk it changes (``&amp;`` → ``&``) maps
all its tokens to the chunk's span. The ids equal open_clip's unless ftfy repairs mojibake across a whitespace
character.

Reconstruction: nodes are matched to words by character overlap (both come from the same raw string) rather than
by sequential string matching; the result is the same whenever the two tokenisations agree on word boundaries, and
it also handles contractions that spaCy and CLIP split differently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from open_clip.tokenizer import basic_clean as _basic_clean

from shenet.hierarchy import SyntaxHierarchy

__all__ = ["EncodedText", "TextEncoder", "collate_texts"]


@dataclass
class EncodedText:
    """One text ready for the model.

    Attributes:
        input_ids: (L,) CLIP token ids: SOT, pieces, EOT, zero padding.
        verb_pool, noun_pool, adj_pool: (V, L), (M, L), (A, L) node pooling weights (rows sum to 1 for kept nodes).
        verb_mask, noun_mask, adj_mask: (V,), (M,), (A,) bool, True for kept nodes.
        noun_parent: (M,) long, index of the parent verb slot or -1 (root).
        adj_parent: (A,) long, index of the parent noun slot or -1 (root).
    """

    input_ids: torch.Tensor
    verb_pool: torch.Tensor
    noun_pool: torch.Tensor
    adj_pool: torch.Tensor
    verb_mask: torch.Tensor
    noun_mask: torch.Tensor
    adj_mask: torch.Tensor
    noun_parent: torch.Tensor
    adj_parent: torch.Tensor


class TextEncoder:
    """Tokenise texts with CLIP's BPE and turn their syntax hierarchies into node pooling tensors.

    Args:
        parser: callable ``text -> SyntaxHierarchy`` (already capped; see :func:`shenet.hierarchy.build_parser`).
        max_words: token length L including SOT/EOT (spec §3.10: 32 captions, 64 paragraphs).
        max_verbs, max_nouns, max_adjs: slot counts V, M, A (the parser's caps).
    """

    def __init__(self, parser, max_words: int, max_verbs: int, max_nouns: int, max_adjs: int):
        from open_clip.tokenizer import SimpleTokenizer

        if max_words < 3:
            raise ValueError(f"data.max_words={max_words} must be >= 3 (SOT, one token, EOT)")
        self.parser = parser
        self.max_words = max_words
        self.slots = {"verb": max_verbs, "noun": max_nouns, "adj": max_adjs}
        self.tokenizer = SimpleTokenizer()
        self.sot = self.tokenizer.encoder["<start_of_text>"]
        self.eot = self.tokenizer.encoder["<end_of_text>"]
        self._cache: dict[str, EncodedText] = {}

    def word_spans(self, text: str) -> tuple[list[int], list[tuple[int, int, int, int]]]:
        """BPE ids of ``text`` (without SOT/EOT, untruncated) and, per regex word, ``(char_start, char_end,
        tok_start, tok_end)`` with token positions counted from 1 (SOT is position 0)."""
        ids: list[int] = []
        words = []
        for chunk in re.finditer(r"\S+", text):
            raw = chunk.group(0)
            clean = _basic_clean(raw).lower()
            exact = clean == raw.lower() and len(clean) == len(raw)  # offsets within the chunk still hold
            for m in self.tokenizer.pat.finditer(clean):
                pieces = self._bpe(m.group(0))
                if not pieces:
                    continue
                cs, ce = (chunk.start() + m.start(), chunk.start() + m.end()) if exact else chunk.span()
                words.append((cs, ce, 1 + len(ids), 1 + len(ids) + len(pieces)))
                ids.extend(pieces)
        return ids, words

    def _bpe(self, word: str) -> list[int]:
        """BPE ids of one already-cleaned regex word (``SimpleTokenizer.encode`` without re-cleaning)."""
        tok = self.tokenizer
        token = "".join(tok.byte_encoder[b] for b in word.encode("utf-8"))
        return [tok.encoder[piece] for piece in tok.bpe(token).split(" ")]

    def node_tokens(self, h: SyntaxHierarchy, words, length: int) -> list[list[int]]:
        """Token positions (< ``length - 1``, i.e. not truncated away) covered by each node of ``h``."""
        out = []
        for n in h.nodes:
            toks: list[int] = []
            for cs, ce, ts, te in words:
                if cs < n.char_end and ce > n.char_start:
                    toks.extend(p for p in range(ts, te) if p < length - 1)
            out.append(toks)
        return out

    def __call__(self, text: str) -> EncodedText:
        cached = self._cache.get(text)
        if cached is not None:
            return cached
        L = self.max_words
        ids, words = self.word_spans(text)
        ids = [self.sot] + ids[: L - 2] + [self.eot]
        n_real = len(ids)
        input_ids = torch.zeros(L, dtype=torch.long)
        input_ids[:n_real] = torch.tensor(ids)
        h = self.parser(text)
        toks = self.node_tokens(h, words, n_real)
        slot: dict[int, int] = {}  # node index -> slot within its level
        pools = {lv: torch.zeros(k, L) for lv, k in self.slots.items()}
        masks = {lv: torch.zeros(k, dtype=torch.bool) for lv, k in self.slots.items()}
        count = dict.fromkeys(self.slots, 0)
        for i, n in enumerate(h.nodes):
            if not toks[i] or count[n.level] >= self.slots[n.level]:
                continue  # truncated away (or over the slot count): the node is dropped
            k = count[n.level]
            pools[n.level][k, toks[i]] = 1.0 / len(toks[i])
            masks[n.level][k] = True
            slot[i] = k
            count[n.level] += 1
        noun_parent = torch.full((self.slots["noun"],), -1, dtype=torch.long)
        adj_parent = torch.full((self.slots["adj"],), -1, dtype=torch.long)
        for i, n in enumerate(h.nodes):
            if i not in slot or n.level == "verb":
                continue
            p = n.parent
            want = "verb" if n.level == "noun" else "noun"
            parent_slot = slot[p] if p >= 0 and p in slot and h.nodes[p].level == want else -1
            (noun_parent if n.level == "noun" else adj_parent)[slot[i]] = parent_slot
        enc = EncodedText(
            input_ids,
            pools["verb"],
            pools["noun"],
            pools["adj"],
            masks["verb"],
            masks["noun"],
            masks["adj"],
            noun_parent,
            adj_parent,
        )
        self._cache[text] = enc
        return enc


def collate_texts(encoded: list[EncodedText]) -> dict[str, torch.Tensor]:
    """Stack :class:`EncodedText` items into a batch dict of ``text_*`` tensors (leading dim = number of texts)."""
    keys = (
        "input_ids",
        "verb_pool",
        "noun_pool",
        "adj_pool",
        "verb_mask",
        "noun_mask",
        "adj_mask",
        "noun_parent",
        "adj_parent",
    )
    return {f"text_{k}": torch.stack([getattr(e, k) for e in encoded]) for k in keys}
