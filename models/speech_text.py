"""Text front end shared by the speech families: text clean-up, espeak-ng phonemes, incremental segmenting.

Phonemes come from the espeak-ng library through ctypes (``espeak_TextToPhonemes``), in-process and fast
(~0.1 ms a clause), so the data script and the server phonemize with the very same code. The library is
the Debian package's ``libespeak-ng.so.1`` (installed by ``make install``) or, failing that, the one the
``espeakng-loader`` wheel ships. Tokens are espeak's ASCII phoneme mnemonics split on its separator, with
stress marks as tokens of their own, ``|`` between words and the clause's punctuation at its end.

Incremental text (an LLM streaming words) is cut into *segments* by :class:`TextSegmenter`: a segment ends
at clause punctuation or after ``max_words`` words, so the cut points depend only on the text, never on how
it was split into messages — word-by-word input gives the same segments, hence the same speech, as the
whole text at once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
import threading
import unicodedata
from collections.abc import Iterable, Sequence

from models.errors import ParamError

# espeak-ng voices (language/accent) the front end accepts; the first is the default.
LANGUAGES = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
_VOICE_FILES = {"en-gb": "en"}
WORD_SEP = "|"
CLAUSE_END = (",", ".", "?", "!")
SPECIALS = ("<pad>", "<unk>")
MAX_TEXT_CHARS = 200_000  # per message; longer is refused with a clear error
_CLAUSE_CHARS = ",.?!;:"
_WORD = re.compile(r"\S+")
_STRESS = {"'": "'", ",": "%"}  # primary, secondary stress (renamed: "," is the clause token)


def _kept(ch: str) -> bool:
    """Letters, digits, punctuation and the apostrophe survive normalisation; everything else becomes a space."""
    return unicodedata.category(ch)[0] in "LNP" or ch == "'"


_ASCII_SPACES = {i: " " for i in range(128) if not _kept(chr(i))}  # the rule applied to ASCII, as one table
_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Keep letters, digits, punctuation and spaces; drop emoji, symbols and control characters.

    espeak would read an emoji's name ("slightly smiling face"), which is not what a user who typed it
    means; dropping symbols is the sane fallback. ASCII text takes a translation table (the same rule,
    ~10x faster: long messages are cut into thousands of segments).
    """
    if text.isascii():
        kept = text.translate(_ASCII_SPACES)
    else:
        kept = "".join(ch if _kept(ch) else " " for ch in unicodedata.normalize("NFC", text))
    return _SPACES.sub(" ", kept).strip()


def _load_library() -> tuple[ctypes.CDLL, bytes | None]:
    """The espeak-ng shared library and its data path (None: the library's default)."""
    name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
    try:
        return ctypes.CDLL(name), None
    except OSError:
        pass
    try:
        import espeakng_loader  # type: ignore[import-not-found]
    except ImportError as e:
        raise RuntimeError(
            "espeak-ng is not installed: run `make install` (Debian package espeak-ng) or pip install espeakng-loader"
        ) from e
    return ctypes.CDLL(espeakng_loader.get_library_path()), espeakng_loader.get_data_path().encode()


class _Espeak:
    """The process-wide espeak-ng library (it has global state: one voice at a time, so one lock)."""

    _instance: _Espeak | None = None

    def __init__(self) -> None:
        lib, data_path = _load_library()
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        # AUDIO_OUTPUT_SYNCHRONOUS (2), no audio buffer, espeakINITIALIZE_DONT_EXIT (0x8000)
        if lib.espeak_Initialize(2, 0, data_path, 0x8000) <= 0:
            raise RuntimeError("espeak-ng failed to initialise (is espeak-ng-data installed?)")
        self.lib = lib
        self.lock = threading.Lock()
        self.voice: str | None = None

    @classmethod
    def get(cls) -> _Espeak:
        if cls._instance is None:
            cls._instance = _Espeak()
        return cls._instance

    def clauses(self, text: str, language: str) -> list[tuple[str, str]]:
        """(mnemonics with ``_`` between phonemes, text consumed) per clause, as espeak splits them."""
        with self.lock:
            if self.voice != language:
                # the library looks voices up by file name: British English is the file "en"
                if self.lib.espeak_SetVoiceByName(_VOICE_FILES.get(language, language).encode()) != 0:
                    raise ParamError(f"espeak-ng has no voice {language!r}")
                self.voice = language
            raw = text.encode("utf-8")
            buf = ctypes.create_string_buffer(raw)
            base = ctypes.addressof(buf)
            ptr = ctypes.c_void_p(base)
            out = []
            while ptr.value:
                start = ptr.value - base
                res = self.lib.espeak_TextToPhonemes(ctypes.byref(ptr), 1, ord("_") << 8)  # UTF-8, '_' separator
                end = (ptr.value - base) if ptr.value else len(raw)
                out.append(((res or b"").decode("utf-8", "replace"), raw[start:end].decode("utf-8", "replace")))
            return out


def check_language(language: str) -> str:
    """Validate a language/accent name; raises :class:`ParamError` listing the supported ones."""
    if language not in LANGUAGES:
        raise ParamError(f"language {language!r} is not supported; use one of {list(LANGUAGES)}")
    return language


def phonemize(text: str, language: str = LANGUAGES[0]) -> list[str]:
    """Phoneme tokens of (already normalised) text: phonemes, stress marks, ``|`` and clause punctuation."""
    check_language(language)
    tokens: list[str] = []
    for mnemonics, consumed in _Espeak.get().clauses(text, language):
        words = [w for w in mnemonics.split() if w]
        if not words:
            continue
        for i, word in enumerate(words):
            if i:
                tokens.append(WORD_SEP)
            for piece in word.split("_"):
                while piece[:1] in _STRESS and piece:
                    tokens.append(_STRESS[piece[0]])
                    piece = piece[1:]
                if piece:
                    tokens.append(piece)
        tokens.append(_clause_end(consumed))
    return tokens


def _clause_end(consumed: str) -> str:
    """The punctuation that ended a clause (espeak's pointer runs one character past it)."""
    puncts = [c for c in consumed if c in _CLAUSE_CHARS]
    if not puncts:
        return "."
    p = puncts[-1]
    return p if p in CLAUSE_END else ","


class PhonemeVocab:
    """Phoneme token <-> id; ids 0 and 1 are padding and unknown."""

    def __init__(self, symbols: Sequence[str]) -> None:
        self.symbols = list(SPECIALS) + [s for s in symbols if s not in SPECIALS]
        self.index = {s: i for i, s in enumerate(self.symbols)}

    def __len__(self) -> int:
        return len(self.symbols)

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """Ids of tokens; unknown symbols map to ``<unk>``."""
        unk = self.index["<unk>"]
        return [self.index.get(t, unk) for t in tokens]


class TextSegmenter:
    """Cuts a stream of text into segments to synthesize, independent of how the text was chunked.

    A segment is complete at clause punctuation followed by a space (or at :meth:`flush`), or once it holds
    ``max_words`` words and the next word has begun. Text after the last complete word waits for more.
    """

    def __init__(self, max_words: int = 10) -> None:
        self.max_words = max_words
        self.pending = ""

    def push(self, text: str, final: bool = False) -> list[str]:
        """Add text; returns the segments it completes (all of them when ``final``: :meth:`flush` too).

        One pass over the words of the pending text (linear in its length: a 150k-character message is cut
        in milliseconds, not re-scanned per segment).
        """
        self.pending += text
        out, start, num_words = [], 0, 0
        for word in _WORD.finditer(self.pending):
            if num_words >= self.max_words:  # the word that would exceed the limit has begun: cut before it
                out.append(self.pending[start : word.start()])
                start, num_words = word.start(), 0
            if word.end() == len(self.pending):
                break  # the last word may go on in the next message
            num_words += 1
            if self.pending[word.end() - 1] in _CLAUSE_CHARS:  # clause punctuation, then a space: cut after it
                out.append(self.pending[start : word.end() + 1])
                start, num_words = word.end() + 1, 0
        self.pending = self.pending[start:]
        segments = [n for n in map(normalize_text, out) if n]
        return segments + self.flush() if final else segments

    def flush(self) -> list[str]:
        """Everything pending as a final segment (split at ``max_words`` if long)."""
        out = self.push(" ")  # a trailing space completes a final punctuated clause
        rest = normalize_text(self.pending)
        self.pending = ""
        words = rest.split()
        for i in range(0, len(words), self.max_words):
            out.append(" ".join(words[i : i + self.max_words]))
        return out

    def reset(self) -> None:
        """Drop pending text (barge-in)."""
        self.pending = ""
