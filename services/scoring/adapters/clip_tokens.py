"""CLIP's byte-pair tokenizer without torch, for the ONNX text tower.

The algorithm and the vocabulary are open_clip's `SimpleTokenizer` (from OpenAI's CLIP, MIT
licence, Copyright (c) 2021 OpenAI), with its default 'lower' cleaning; the merges file is read
from the installed open_clip package, so the ids are the ones its models were trained on. A test
checks this tokenizer against open_clip's on varied prompts.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import itertools
from pathlib import Path

import ftfy
import numpy as np
import numpy.typing as npt
import regex

CONTEXT_LENGTH = 77
_MERGES = 49152 - 256 - 2  # the merges open_clip's vocabulary uses
_SPECIAL = ("<start_of_text>", "<end_of_text>")


def open_clip_vocabulary() -> Path:
    """open_clip's merges file, found without importing open_clip (which imports torch)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("open_clip is not installed: its vocabulary file is needed to tokenize prompts")
    return Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"


@functools.cache
def _bytes_to_unicode() -> dict[int, str]:
    """Each byte to a printable character, so byte-level BPE never meets whitespace or control codes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(code) for code in codes), strict=True))


def _clean(text: str) -> str:
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).strip().lower()


class ClipTokenizer:
    """Texts to (n, 77) int64 token ids: start token, BPE ids, end token, zero padding; cut at 77."""

    def __init__(self, vocabulary: Path | None = None, *, context_length: int = CONTEXT_LENGTH) -> None:
        path = vocabulary or open_clip_vocabulary()
        with gzip.open(path) as packed:
            lines = packed.read().decode("utf-8").split("\n")[1 : _MERGES + 1]
        merges = [tuple(line.split()) for line in lines]
        symbols = list(_bytes_to_unicode().values())
        vocabulary_list = [*symbols, *(symbol + "</w>" for symbol in symbols), *("".join(m) for m in merges), *_SPECIAL]
        self._encoder = {token: index for index, token in enumerate(vocabulary_list)}
        self._ranks = {pair: rank for rank, pair in enumerate(merges)}
        self._cache: dict[str, str] = {token: token for token in _SPECIAL}
        self._pattern = regex.compile(
            "|".join(_SPECIAL) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE
        )
        self._start, self._end = (self._encoder[token] for token in _SPECIAL)
        self._context_length = context_length

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        byte_encoder = _bytes_to_unicode()
        for token in self._pattern.findall(_clean(text)):
            symbols = "".join(byte_encoder[byte] for byte in token.encode("utf-8"))
            ids.extend(self._encoder[piece] for piece in self._bpe(symbols).split(" "))
        return ids

    def __call__(self, texts: list[str]) -> npt.NDArray[np.int64]:
        result = np.zeros((len(texts), self._context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self._start, *self.encode(text), self._end]
            if len(ids) > self._context_length:
                ids = [*ids[: self._context_length - 1], self._end]
            result[row, : len(ids)] = ids
        return result

    def _bpe(self, token: str) -> str:
        if token in self._cache:
            return self._cache[token]
        word: tuple[str, ...] = (*token[:-1], token[-1] + "</w>")
        while len(word) > 1:
            pairs = set(itertools.pairwise(word))
            first, second = min(pairs, key=lambda pair: self._ranks.get(pair, float("inf")))
            if (first, second) not in self._ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        self._cache[token] = " ".join(word)
        return self._cache[token]
