"""The seed's display of Blender examples ↔ token ids (`to_display`, `from_display`).

The seed writes its three example formats (`gerbil.data.objectives`) as strings::

    '<fitm_start> this is an <multiple_tok_mask> for fill-in-the-middle <fitm_result> example text <|endoftext|>'
    '<causal> this is an example text for causal language modelling <|endoftext|>'
    '<mlm_start> this is an <single_tok_mask> text for masked language modelling <mlm_end> example <|endoftext|>'

How those strings are read (the token sequences the formatters produce)
-----------------------------------------------------------------------
The strings are a *display*: a space separates every special token from its neighbours. GPT-2 BPE
attaches a word's leading space to the word (`` example`` is one token), so

* the space **after** a special token is the leading space of the next word's token: ``<causal> this``
  is ``[<causal>, " this", ...]`` — the document's own tokens, unchanged;
* the space **before** a special token is only a separator, not a token: ``an <multiple_tok_mask>`` is
  ``[..., " an", <multiple_tok_mask>]``, not ``[..., " an", " ", <multiple_tok_mask>]``.

With that reading the three examples are exactly what the formatters below make from the document
`` this is an example text for …`` (its GPT-2 tokens) cut on token boundaries: FIM with prefix = the
first 3 tokens, middle = ``" example", " text"``; MLM with the 4th token masked, whose answer
``" example"`` is the very token that was masked (one ``<single_tok_mask>`` per token, the answers being
the masked tokens themselves). Encoding the display strings literally instead (``Tokenizer.encode(s,
allow_special=True)``) would insert a lone ``" "`` token before every special token, and the MLM answer
would no longer equal the masked token; `from_display` / `to_display` convert between the display and
the tokens under the reading above, and round-trip the seed's strings exactly.
"""
from __future__ import annotations

from gerbil.data.tokenizer import SPECIAL_TOKENS


def to_display(tokens, tokenizer) -> str:
    """Render tokens in the seed's display style: one space before every special token.

    The text after a special token is decoded as is (its first token usually carries its own leading
    space). Inverse of `from_display`: for the seed's document ``doc``,
    ``to_display(Causal.format(doc).tolist() + [EOT_ID], tok)`` is the seed's causal string.
    """
    special_name = {v: k for k, v in SPECIAL_TOKENS.items()}
    out: list[str] = []
    run: list[int] = []

    def flush() -> None:
        if run:
            out.append(tokenizer.decode(run))
            run.clear()

    for t in (int(x) for x in tokens):
        if t in special_name:
            flush()
            if out:
                out.append(" ")
            out.append(special_name[t])
        else:
            run.append(t)
    flush()
    return "".join(out)


def from_display(text: str, tokenizer) -> list[int]:
    """Token ids of a string written in the seed's display style (special tokens spaced apart).

    Special-token names become their ids; one space just before a special token is a separator and
    is dropped; everything else (including the space after a special token) is encoded as ordinary
    text, where it becomes the leading space of the next word's token. See the module docstring.
    """
    names = sorted(SPECIAL_TOKENS, key=len, reverse=True)
    ids: list[int] = []
    pos = 0
    while pos <= len(text):
        # next special token at or after pos
        hits = [(text.find(n, pos), n) for n in names]
        hits = [(i, n) for i, n in hits if i >= 0]
        if not hits:
            ids += tokenizer.encode(text[pos:])
            break
        i, n = min(hits, key=lambda h: (h[0], -len(h[1])))
        piece = text[pos:i]
        if piece.endswith(" "):
            piece = piece[:-1]
        if piece:
            ids += tokenizer.encode(piece)
        ids.append(SPECIAL_TOKENS[n])
        pos = i + len(n)
    return ids
