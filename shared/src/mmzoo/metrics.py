"""torchmetrics building blocks for evaluation under several processes.

Lightning's default ``DistributedSampler`` pads the last evaluation round with repeated items, so a metric gathered
over ranks may hold an item twice; a metric that keeps each row with its dataset index can drop the repeats
(:func:`first_of_each_id`, :class:`IndexedMean`). And a rank may see no item at all (its shard was skipped as
corrupt, or there are fewer items than ranks): torchmetrics then replaces an empty list state by a 1-D float32
tensor before the all-gather of ``compute``, and for a state of another shape or dtype (2-D score rows, integer ids)
the gather fails or waits forever on the other ranks. :class:`ListStateMetric` sends an empty tensor of the right
shape and dtype instead, so such a rank takes part in the gather and adds nothing.
"""

from __future__ import annotations

import re

import torch
from torchmetrics import Metric

__all__ = ["IndexedMean", "ListStateMetric", "first_of_each_id", "normalize_vqa_answer"]


def first_of_each_id(ids: torch.Tensor) -> torch.Tensor:
    """Positions of the first row of every distinct id, in id order (a padding repeat's rows are identical)."""
    order = torch.argsort(ids, stable=True)
    ids_sorted = ids[order]
    first = torch.ones_like(ids_sorted, dtype=torch.bool)
    first[1:] = ids_sorted[1:] != ids_sorted[:-1]
    return order[first]


class ListStateMetric(Metric):
    """A metric whose states are lists of per-sample rows (``dist_reduce_fx="cat"``), safe on a rank without rows.

    A subclass sets ``self._row_specs = {state name: (row shape, dtype)}`` in ``__init__`` and reads a state as one
    tensor with :meth:`_rows` (a list before the sync, a tensor after it, empty when nothing was added).
    """

    _row_specs: dict[str, tuple[tuple[int, ...], torch.dtype]]

    def _sync_dist(self, dist_sync_fn=None, process_group=None) -> None:
        for name, (row, dtype) in self._row_specs.items():
            state = getattr(self, name)
            if isinstance(state, list) and not state:
                state.append(torch.empty((0, *row), dtype=dtype, device=self.device))
        if dist_sync_fn is None:
            super()._sync_dist(process_group=process_group)
        else:
            super()._sync_dist(dist_sync_fn, process_group=process_group)

    def _rows(self, name: str) -> torch.Tensor:
        state = getattr(self, name)
        if isinstance(state, torch.Tensor):
            return state
        row, dtype = self._row_specs[name]
        return torch.cat(state) if state else torch.empty((0, *row), dtype=dtype, device=self.device)


class IndexedMean(ListStateMetric):
    """Mean of per-sample values over distinct sample ids, across batches and ranks.

    ``update(values (B,), ids (B,))``; ``compute()`` → the mean with each id counted once (a repeat added by a
    distributed sampler is dropped), NaN when no rank added anything.
    """

    full_state_update = False
    higher_is_better = None

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._row_specs = {"values": ((), torch.float64), "ids": ((), torch.long)}
        self.add_state("values", default=[], dist_reduce_fx="cat")
        self.add_state("ids", default=[], dist_reduce_fx="cat")

    def update(self, values: torch.Tensor, ids: torch.Tensor) -> None:
        if values.ndim != 1 or values.shape != ids.shape:
            raise ValueError(f"IndexedMean: values {tuple(values.shape)} and ids {tuple(ids.shape)} must be (B,)")
        self.values.append(values.detach().to(torch.float64))
        self.ids.append(ids.long())

    def compute(self) -> torch.Tensor:
        values, ids = self._rows("values"), self._rows("ids")
        if values.numel() == 0:
            return torch.tensor(float("nan"), dtype=torch.float64, device=self.device)
        return values[first_of_each_id(ids)].mean()


# ------------------------------------------------------------------------------ VQA answer normalisation
_NUMBER_WORDS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
_NUMBER_WORDS["none"] = "0"  # the evaluator's number map also turns 'none' into '0'
_ARTICLES = {"a", "an", "the"}
_VQA_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
"""Characters the evaluator removes or turns into a space (``'`` and ``:`` are not among them)."""
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
# written as in the evaluator (its "(?!<=\d)" is a look-ahead, always true before a period): a period not followed
# by a digit
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"(?!<=\d)(\.)(?!\d)")
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll",
    "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't",
    "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am",
    "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock",
    "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's",
    "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's", "whereve": "where've",
    "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's",
    "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've",
    "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've",
    "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
"""The evaluator's contraction table: an apostrophe-less spelling → its standard form (a few of its entries are
odd, e.g. ``somebody'd`` → ``somebodyd``; they are kept as the evaluator has them)."""


def _vqa_punctuation(text: str) -> str:
    """The evaluator's punctuation step. Each listed character is deleted when some occurrence of it touches a space,
    or when the text holds a digit-comma-digit group (``1,000``); otherwise it becomes a space (``red-white`` →
    ``red white``). Both tests look at the text as it came in, not as it is being rewritten. Finally every period not
    followed by a digit is deleted (``3.5`` and ``.5`` keep theirs)."""
    out = text
    has_number_comma = _DIGIT_COMMA_DIGIT.search(text) is not None
    for p in _VQA_PUNCT:
        if p + " " in text or " " + p in text or has_number_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out)


def _vqa_digits_articles(text: str) -> str:
    """The evaluator's word step: lower-case, number words → digits, articles dropped, contractions restored."""
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def normalize_vqa_answer(answer: str) -> str:
    """Answer normalisation of the official VQA evaluation (punctuation, lower-case, number words → digits, articles
    dropped), step by step as the evaluator does it: newlines and tabs → spaces, strip, the
    punctuation step (:func:`_vqa_punctuation`), then the word step (:func:`_vqa_digits_articles`, which also maps
    apostrophe-less contractions such as ``dont`` to ``don't``).

    The evaluator itself gives the annotators' answers only the punctuation step, and only when they disagree (the
    VQA files store them normalised); which answers a package normalises is the package's choice (asdmllm: all of
    them; rtqvl: the prediction, as its QA recipe does).
    """
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    return _vqa_digits_articles(_vqa_punctuation(text))
