"""Pocket TTS text handling: the tokenizer, prompt preparation and sentence chunking, as the release does it.

The flow LM is trained on single sentences, so a long input is cut at sentence ends (then at commas for an
oversized sentence) and regrouped greedily into chunks of at most ``max_tokens`` tokens; each chunk is
generated on its own from the voice prompt. Before tokenizing, a prompt is trimmed, characters the model
never saw are rewritten (``replace_characters``), the first letter capitalised and a sentence-final mark
ensured — behaviour the release's package defines and the equality test holds us to.

Streaming words from an LLM: :class:`ChunkStream` decides a chunk as soon as later text can no longer change
it (its last sentence is complete and the next complete sentence did not fit), so speech starts before the
text ends while every chunk is exactly the one the whole text would have given.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

TERMINAL_PUNCTUATION = ".!?\u2026"
WEAK_PUNCTUATION = ",;:-\u2013\u2014"
CLOSERS = "\"'\u201d\u2019)]\u00bb"


class Tokenizer:
    """Text -> ids with the release's tokenizer: a sentencepiece ``.model`` or a tokenizers ``.json``."""

    def __init__(self, path: str | Path, vocab_size: int | None = None) -> None:
        path = Path(path)
        self.path = path
        if path.suffix == ".json":
            import tokenizers

            self._tok: Any = tokenizers.Tokenizer.from_file(str(path))
            self._encode = lambda text: self._tok.encode(text).ids
            self._decode = self._tok.decode
            size = self._tok.get_vocab_size()
        else:
            import sentencepiece

            self._tok = sentencepiece.SentencePieceProcessor(model_file=str(path))
            self._encode = lambda text: self._tok.encode(text, out_type=int)
            self._decode = self._tok.decode
            size = self._tok.vocab_size()
        if vocab_size is not None and size != vocab_size:
            raise ValueError(f"{path}: tokenizer has {size} tokens, the model's table {vocab_size}")
        self.vocab_size = size

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``."""
        return list(self._encode(text))

    def decode(self, ids: list[int]) -> str:
        """Text of token ids."""
        return self._decode(ids)


class TextRules:
    """How prompts are prepared (the config's text options)."""

    def __init__(
        self,
        *,
        pad_with_spaces_for_short_inputs: bool = False,
        remove_semicolons: bool = False,
        append_terminal_punctuation: bool = True,
        capitalize_first_letter: bool = True,
        replace_characters: dict[str, str] | None = None,
    ) -> None:
        self.pad_short = pad_with_spaces_for_short_inputs
        self.remove_semicolons = remove_semicolons
        self.terminal_punctuation = append_terminal_punctuation
        self.capitalize = capitalize_first_letter
        self.replace = dict(replace_characters or {})

    def prepare(self, text: str) -> tuple[str, int]:
        """(prompt text, frames to keep after the stop signal: 3 for up to four words, else 1)."""
        text = text.strip()
        if self.replace:
            text = " ".join(text.translate(str.maketrans(self.replace)).split())
            # a deleted quote leaves "Hi?, she said": keep the sentence mark only
            text = re.sub(r"([.!?\u2026])\s*[,;:]", r"\1", text)
        if not text:
            raise ValueError("Text prompt cannot be empty")
        text = text.replace("\n", " ").replace("\r", " ").replace("  ", " ")
        if self.remove_semicolons:
            text = text.replace(";", ",")
        frames_after_eos = 3 if len(text.split()) <= 4 else 1
        if self.capitalize and not text[0].isupper():
            text = text[0].upper() + text[1:]
        if self.terminal_punctuation:
            text = ensure_terminal_punctuation(text)
        if self.pad_short and len(text.split()) < 5:
            text = " " * 8 + text
        return text, frames_after_eos


def ensure_terminal_punctuation(text: str) -> str:
    """End on a sentence mark: kept if present (before closing quotes), a trailing comma/dash becomes one."""
    core = text.rstrip(CLOSERS + " ")
    closers = text[len(core):].strip()
    if not core or core[-1] in TERMINAL_PUNCTUATION:
        return text
    if core[-1] in WEAK_PUNCTUATION:
        return core.rstrip(WEAK_PUNCTUATION + " ") + "." + closers
    return text + "."


def _boundaries(ids: list[int], marks: set[int], tokenizer: Tokenizer | None = None) -> list[int]:
    """Cut points: 0, each index where a token follows a run of marks (not a decimal point), len(ids)."""
    cuts, after_mark = [0], False
    for i, token in enumerate(ids):
        if token in marks:
            after_mark = True
            continue
        if after_mark and not (tokenizer is not None and _decimal_point(ids, i, tokenizer)):
            cuts.append(i)
        after_mark = False
    cuts.append(len(ids))
    return cuts


def _decimal_point(ids: list[int], i: int, tokenizer: Tokenizer) -> bool:
    before, after = tokenizer.decode(ids[:i]), tokenizer.decode(ids[i:])
    return len(before) >= 2 and before[-1] == "." and before[-2].isdigit() and bool(after) and after[0].isdigit()


def _segments(ids: list[int], cuts: list[int], tokenizer: Tokenizer) -> list[tuple[int, str]]:
    return [(b - a, tokenizer.decode(ids[a:b])) for a, b in zip(cuts, cuts[1:], strict=False)]


def split_chunks(tokenizer: Tokenizer, rules: TextRules, text: str, max_tokens: int) -> list[str]:
    """The chunks a text is generated in (each then prepared again by :meth:`TextRules.prepare`)."""
    text = rules.prepare(text)[0].strip()
    ids = tokenizer.encode(text)
    sentence_marks = set(tokenizer.encode(".!...?")[1:])  # the first piece is the word-start marker
    clause_marks = set(tokenizer.encode(",;:")[1:])
    pieces: list[tuple[int, str]] = []
    for count, sentence in _segments(ids, _boundaries(ids, sentence_marks, tokenizer), tokenizer):
        if count > max_tokens:  # an oversized sentence is cut at its commas, if it has any
            sub = tokenizer.encode(sentence.strip())
            clauses = _segments(sub, _boundaries(sub, clause_marks), tokenizer)
            if len(clauses) > 1:
                pieces += clauses
                continue
        pieces.append((count, sentence))
    chunks: list[str] = []
    current, current_count = "", 0
    for count, piece in pieces:
        if current and current_count + count > max_tokens:
            chunks.append(current.strip())
            current, current_count = piece, count
        elif current:
            current, current_count = current + " " + piece, current_count + count
        else:
            current, current_count = piece, count
    if current:
        chunks.append(current.strip())
    return chunks


class ChunkStream:
    """Text arriving in pieces (LLM words) -> chunks to generate, each as soon as it is final.

    ``exact`` (the package's grouping): the buffer is re-chunked whole up to its last complete sentence;
    every chunk but the last of that prefix is closed by a complete sentence that did not fit, which more
    text cannot change, so the result equals :func:`split_chunks` of the whole text — but the first chunk
    of a reply waits until ~50 tokens of text (or the flush) have arrived. ``eager`` (serving's default):
    the complete sentences present at each push become chunks at once (grouped only with each other), so
    the first sentence is spoken while the LLM is still writing the second. :meth:`flush` ends the utterance.
    """

    def __init__(self, tokenizer: Tokenizer, rules: TextRules, max_tokens: int, eager: bool = False) -> None:
        self.tokenizer, self.rules, self.max_tokens, self.eager = tokenizer, rules, max_tokens, eager
        self.marks = set(tokenizer.encode(".!...?")[1:])
        self.reset()

    def push(self, text: str, final: bool = False) -> list[str]:
        """Add text; returns chunks that became final (all of them when ``final``: the utterance ends)."""
        self.buffer += text
        if final:
            return self.flush()
        recent = self.buffer[-(len(text) + 64):]
        if not self.buffer.strip() or not any(c in TERMINAL_PUNCTUATION for c in recent):
            return []  # no sentence ended lately: skip re-chunking the whole buffer (most words of a reply)
        ids = self.tokenizer.encode(self.rules.prepare(self.buffer)[0].strip())
        complete = _boundaries(ids, self.marks, self.tokenizer)[-2]  # end of the last sentence something follows
        if complete <= self.num_done:
            return []
        text = self.tokenizer.decode(ids[self.num_done:complete])
        chunks = split_chunks(self.tokenizer, self.rules, text, self.max_tokens)
        if self.eager:
            self.num_done = complete
            return chunks
        return self._take(chunks[:-1])

    def flush(self) -> list[str]:
        """End of the utterance: the remaining chunks; the buffer starts empty again."""
        out: list[str] = []
        if self.buffer.strip():
            if self.eager and self.num_done:
                ids = self.tokenizer.encode(self.rules.prepare(self.buffer)[0].strip())
                rest = self.tokenizer.decode(ids[self.num_done:])
                out = split_chunks(self.tokenizer, self.rules, rest, self.max_tokens) if rest.strip() else []
            else:
                out = self._take(split_chunks(self.tokenizer, self.rules, self.buffer, self.max_tokens))
        self.reset()
        return out

    def reset(self) -> None:
        """Forget buffered text (barge-in)."""
        self.buffer = ""
        self.num_emitted = 0  # exact: chunks of the current buffer already handed out
        self.num_done = 0  # eager: tokens of the prepared buffer already handed out

    def _take(self, chunks: list[str]) -> list[str]:
        new = chunks[self.num_emitted:]
        self.num_emitted = max(self.num_emitted, len(chunks))
        return new
