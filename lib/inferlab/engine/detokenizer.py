"""Incremental detokenization and stop strings, in time linear in the output.

Decoding the whole output after every token (and searching all of it for stop strings)
costs O(n) per token, O(n²) per request. vLLM's ``detokenize_incrementally`` decodes only
a short window instead: the tokens from ``prefix_offset`` (a few tokens of context, so a
tokenizer that drops a word's leading space at the start of a decode still sees it) to
the end, and keeps the part past ``read_offset``'s text. Two cases hold text back:

- a byte-level BPE token can end inside a multi-byte UTF-8 character; the window then
  decodes to a trailing U+FFFD, and nothing is emitted until the character is complete;
- a stop string can arrive split over several tokens, so a stream holds back the last
  ``len(longest stop) - 1`` characters until it is sure they do not start one, and the
  search for a stop string only looks at the new text plus that overlap.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

CONTEXT_TOKENS = 5  # tokens of context before the first output token (vLLM uses 5 as well)
REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """The text of a growing list of token ids, updated by one short decode per new token.

    ``decode``: token ids -> text. ``prompt_ids``: the prompt, used only as context for
    the first output tokens. ``stop``: strings that end the output (the text is cut
    before the earliest one). Call :meth:`update` with the full list of output ids after
    each new token; ``text`` is the output text so far, ``stop_hit`` the stop string that
    ended it (if any). :meth:`delta` hands out new text for streaming.
    """

    def __init__(self, decode: Callable[[list[int]], str], prompt_ids: Sequence[int] = (),
                 stop: Sequence[str] = (), holdback: int | None = None):
        context = list(prompt_ids)[-CONTEXT_TOKENS:]
        self.decode, self.ids = decode, context
        self.prefix_offset, self.read_offset, self.num_context = 0, len(context), len(context)
        self.stop = [s for s in stop if s]
        self.overlap = max(max((len(s) for s in self.stop), default=0) - 1, 0)
        self.holdback = self.overlap if holdback is None else holdback
        self.text, self.stop_hit, self.sent = "", None, 0

    def update(self, output_ids: Sequence[int]) -> str:
        """Take the output ids so far; returns the newly decoded text ("" while a character is incomplete)."""
        if self.stop_hit is not None or len(output_ids) <= len(self.ids) - self.num_context:
            return ""
        self.ids.extend(output_ids[len(self.ids) - self.num_context:])
        prefix = self.decode(self.ids[self.prefix_offset:self.read_offset])
        full = self.decode(self.ids[self.prefix_offset:])
        if len(full) <= len(prefix) or full.endswith(REPLACEMENT):
            return ""
        new = full[len(prefix):]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        start = max(len(self.text) - self.overlap, 0)
        self.text += new
        self._find_stop(start)
        return new

    def _find_stop(self, start: int) -> None:
        """Cut ``text`` at the earliest stop string that ends in the new text."""
        hits = [(at, s) for s in self.stop if (at := self.text.find(s, start)) >= 0]
        if hits:
            at, self.stop_hit = min(hits)
            self.text = self.text[:at]

    def delta(self, finished: bool = False) -> str:
        """Text not handed out yet, minus the held-back tail unless the request is finished."""
        end = len(self.text) if finished or self.stop_hit is not None else len(self.text) - self.holdback
        if end <= self.sent:
            return ""
        out, self.sent = self.text[self.sent:end], end
        return out

    def clone(self) -> IncrementalDetokenizer:
        """A copy with its own token list (a forked sample continues from the same point)."""
        twin = copy.copy(self)
        twin.ids = list(self.ids)
        return twin

    def finish(self, final_text: str) -> str:
        """The rest of ``final_text`` (the engine's final text) past what was handed out."""
        if not final_text.startswith(self.text[:self.sent]):
            return ""
        out, self.sent = final_text[self.sent:], len(final_text)
        self.text = final_text
        return out
