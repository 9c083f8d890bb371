"""Tokenise documents and pack them into full-length sequences.

The paper trains on full 512-token chunks of running text. The token streams of consecutive
documents are concatenated, one separator token between two documents, and cut into chunks
of `max_len - 2` tokens; each chunk is wrapped as `[CLS] chunk [SEP]` (BERT) or
`<s> chunk </s>` (RoBERTa, XLM-R). Every sequence is therefore full (attention_mask all 1)
except the very last one of a finite pass, which is padded. A chunk boundary may fall right
after a document, so a chunk can start with the separator; no token is ever dropped.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

import grain
import numpy as np
import tokenizers

# family -> (start token, separator/end token, padding token), as in the released vocabularies.
FAMILY_SPECIAL_TOKENS = {
    "bert": ("[CLS]", "[SEP]", "[PAD]"),
    "roberta": ("<s>", "</s>", "<pad>"),
    "xlm-roberta": ("<s>", "</s>", "<pad>"),
    "xlm-roberta-xl": ("<s>", "</s>", "<pad>"),
    "deberta-v2": ("[CLS]", "[SEP]", "[PAD]"),
    "modernbert": ("[CLS]", "[SEP]", "[PAD]"),
}
# Families whose sentence-pair layout is fairseq's `<s> a </s></s> b </s>` with one token type;
# every other family uses BERT's `[CLS] a [SEP] b [SEP]` with token types 0/1.
FAIRSEQ_FAMILIES = ("roberta", "xlm-roberta", "xlm-roberta-xl")

Example = dict[str, np.ndarray]  # input_ids, attention_mask, token_type_ids: int32 [max_len]


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
    cls_id: int
    sep_id: int
    pad_id: int


def special_token_ids(tokenizer: tokenizers.Tokenizer, family: str) -> SpecialTokens:
    """The family's start, separator and padding ids, looked up in the tokenizer's vocabulary."""
    if family not in FAMILY_SPECIAL_TOKENS:
        raise ValueError(f"family={family!r} is not one of {list(FAMILY_SPECIAL_TOKENS)}")
    ids = []
    for token in FAMILY_SPECIAL_TOKENS[family]:
        token_id = tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(
                f"the tokenizer has no {token!r} token, which family {family!r} needs "
                f"({', '.join(FAMILY_SPECIAL_TOKENS[family])}); is it the teacher's tokenizer?"
            )
        ids.append(token_id)
    return SpecialTokens(*ids)


class DocumentTokenizer:
    """Text -> int32 token ids, no special tokens, never truncated or padded.

    Works on a copy: a tokenizer.json often carries truncation/padding settings for inference
    (all-MiniLM-L6-v2's truncates and pads to 128), which would silently cut documents.
    """

    def __init__(self, tokenizer: tokenizers.Tokenizer):
        # Imported here: the command lines import this module before they need the models.
        from minilm_jax.hf.tokenizer import prepared_tokenizer

        self._tokenizer = prepared_tokenizer(tokenizer)

    def __call__(self, text: str) -> np.ndarray:
        ids = self._tokenizer.encode(text, add_special_tokens=False).ids
        return np.asarray(ids, dtype=np.int32)


def make_sequence(content: np.ndarray, special: SpecialTokens, max_len: int) -> Example:
    """[CLS] content [SEP], right-padded to max_len; attention_mask 1 on the real tokens."""
    n = len(content)
    if n > max_len - 2:
        raise ValueError(f"{n} content tokens do not fit max_len={max_len} with 2 special tokens")
    input_ids = np.full(max_len, special.pad_id, np.int32)
    input_ids[0] = special.cls_id
    input_ids[1 : n + 1] = content
    input_ids[n + 1] = special.sep_id
    attention_mask = np.zeros(max_len, np.int32)
    attention_mask[: n + 2] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": np.zeros(max_len, np.int32),
    }


class PackedSequencesIterDataset(grain.IterDataset):
    """Packs a stream of tokenised documents (int32 arrays) into `max_len` sequences."""

    def __init__(self, parent: grain.IterDataset, special: SpecialTokens, max_len: int):
        super().__init__(parent)
        if max_len < 3:
            raise ValueError(f"max_len={max_len} leaves no room for content (needs >= 3)")
        self._special = special
        self._max_len = max_len

    def __iter__(self) -> grain.DatasetIterator:
        return _PackingIterator(self._parent.__iter__(), self._special, self._max_len)

    def __str__(self) -> str:
        return f"PackedSequencesIterDataset(max_len={self._max_len})"


class _PackingIterator(grain.DatasetIterator):
    """Checkpointable packer.

    The stream is a sequence of units: the first document, then `[SEP] + document` for every
    later one. The state is the parent's state *before* the current unit's document, the
    offset inside that unit and whether the unit starts with a separator; restoring re-reads
    and re-tokenises that one document. The state stays a few integers (no token buffer),
    which keeps the JSON checkpoint tiny however long the documents are.
    """

    def __init__(self, parent: grain.DatasetIterator, special: SpecialTokens, max_len: int):
        super().__init__(parent)
        self._special = special
        self._max_len = max_len
        self._unit: np.ndarray | None = None
        self._unit_state: dict[str, Any] | None = None
        self._unit_lead = False  # whether self._unit starts with a separator
        self._pos = 0
        self._sep_before_next = False  # a document was read: the next one gets a separator

    def _read_unit(self) -> bool:
        while True:
            state = self._parent.get_state()
            try:
                doc = next(self._parent)
            except StopIteration:
                return False
            if len(doc):  # a document that tokenises to nothing would leave two separators
                break
        self._set_unit(doc, state, lead=self._sep_before_next)
        return True

    def _set_unit(self, doc: np.ndarray, state: dict[str, Any], lead: bool) -> None:
        sep = np.asarray([self._special.sep_id], np.int32)
        self._unit = np.concatenate([sep, doc]) if lead else np.asarray(doc, np.int32)
        self._unit_state, self._unit_lead, self._pos = state, lead, 0
        self._sep_before_next = True

    def __next__(self) -> Example:
        self._assert_not_closed()
        pieces, need = [], self._max_len - 2
        while need:
            if self._unit is None or self._pos == len(self._unit):
                if not self._read_unit():
                    break
            piece = self._unit[self._pos : self._pos + need]
            self._pos += len(piece)
            need -= len(piece)
            pieces.append(piece)
        if not pieces:
            raise StopIteration
        return make_sequence(np.concatenate(pieces), self._special, self._max_len)

    def get_state(self) -> dict[str, Any]:
        if self._unit is None:
            return {
                "parent": self._parent.get_state(),
                "in_unit": False,
                "lead": self._sep_before_next,
                "pos": 0,
            }
        return {
            "parent": self._unit_state,
            "in_unit": True,
            "lead": self._unit_lead,
            "pos": self._pos,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._unit, self._unit_state, self._pos = None, None, 0
        self._sep_before_next = bool(state["lead"])
        if state["in_unit"]:
            try:
                doc = next(self._parent)
            except StopIteration as e:
                raise ValueError(
                    "packing state points past the end of its documents: the data changed "
                    "since the checkpoint was written"
                ) from e
            self._set_unit(doc, state["parent"], lead=bool(state["lead"]))
            if not 0 <= state["pos"] <= len(self._unit):
                raise ValueError(
                    f"packing state offset {state['pos']} is outside its document of "
                    f"{len(self._unit)} tokens: the data or tokenizer changed since the checkpoint"
                )
            self._pos = int(state["pos"])

    def __str__(self) -> str:
        return f"PackedSequencesIterator(max_len={self._max_len})"


def pack_documents(
    token_arrays: Iterable[np.ndarray], special: SpecialTokens, max_len: int
) -> list[Example]:
    """All packed sequences of a finite list of tokenised documents (for inspection/tests)."""
    docs = grain.MapDataset.source(list(token_arrays)).to_iter_dataset()
    return list(PackedSequencesIterDataset(docs, special, max_len))
