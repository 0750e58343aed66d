"""Request encoding exactly as lm-evaluation-harness's `TemplateLM` does it.

`TemplateLM._encode_pair`: trailing spaces of the context move to the continuation; context +
continuation are encoded together and split at the context's length; an empty context becomes the
end-of-text token. Only the continuation's tokens are scored (docs/reference.md §5).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from gerbil.data.tokenizer import EOT_ID


def move_trailing_space(context: str, continuation: str) -> tuple[str, str]:
    """`TemplateLM._encode_pair`'s first step: a non-empty context's trailing whitespace moves to the
    front of the continuation. Returns (context, continuation) as they are then encoded."""
    n = len(context) - len(context.rstrip())
    if context and n:
        return context[:-n], context[-n:] + continuation
    return context, continuation


class RequestEncoder:
    """Tokenizes request strings the way the harness's HFLM does with the model's own tokenizer.

    ``encode_fn(list[str]) -> list[list[int]]`` must behave like transformers' fast tokenizer
    ``encode(text)`` (special-token strings in the text become their ids, no BOS for GPT-2).
    ``prefix`` (e.g. ``[<causal>]`` for Blender models) is put before every context.
    """

    def __init__(self, encode_batch: Callable[[list[str]], list[list[int]]], eot_id: int = EOT_ID,
                 prefix: Sequence[int] = ()):
        self.encode_batch = encode_batch
        self.eot_id = eot_id
        self.prefix = list(prefix)

    def encode_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        """`TemplateLM.loglikelihood` + `_encode_pair`, batched: (context ids, continuation ids)."""
        texts: list[str] = []
        plan = []
        for ctx, cont in pairs:
            if ctx == "":
                plan.append(("empty", len(texts)))
                texts.append(cont)
            else:
                ctx, cont = move_trailing_space(ctx, cont)
                plan.append(("pair", len(texts)))
                texts += [ctx + cont, ctx]
        # encode each distinct string once: hellaswag's context is the same for its four endings,
        # so its 8 strings per item become 5 (tokenization is deterministic: no id changes)
        uniq = list(dict.fromkeys(texts))
        if len(uniq) < len(texts):
            at = {t: i for i, t in enumerate(uniq)}
            enc_u = self.encode_batch(uniq)
            enc = [enc_u[at[t]] for t in texts]
        else:
            enc = self.encode_batch(texts)
        out = []
        for kind, i in plan:
            if kind == "empty":
                c = enc[i]
                ctx_ids, cont_ids = ([self.eot_id], c) if c[0] != self.eot_id else (c[:1], c[1:])
            else:
                whole, ctx_ids = enc[i], enc[i + 1]
                cont_ids = whole[len(ctx_ids):]
            out.append((self.prefix + list(ctx_ids), list(cont_ids)))
        return out


