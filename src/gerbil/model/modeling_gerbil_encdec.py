"""transformers code for an encoder-decoder warm-started from a Gerbil (GPT-J) model.

This file is copied verbatim into an export folder, whose config.json maps ``AutoConfig`` and
``AutoModelForSeq2SeqLM`` to the classes below (``auto_map``)::

    model = AutoModelForSeq2SeqLM.from_pretrained(DIR, trust_remote_code=True)
    out = model.generate(input_ids, attention_mask=mask, max_new_tokens=20)

It needs only torch and transformers. The math is gerbil's `gerbil.model.warmstart.WarmStartEncDec` (the
parameter names too, so the weights load as they are):

    encoder : wte → GPT-J blocks h.{i} with bidirectional attention → ln_enc (ln_f when shared)
    decoder : wte → per layer  h = ln_1(x);  x = x + attn(h) + mlp(h) + cross(h, encoder output)
              (blocks dec_h.{i}, or h.{i} when shared) → ln_f → lm_head (with bias)

GPT-J block: q/k/v fused in ``attn.qkv_proj`` (rows q, k, v), rotary on the first ``rotary_dim`` dims of
each head in GPT-J's interleaved layout, ``mlp.fc_in`` → tanh GELU → ``mlp.fc_out``. Cross-attention has no
rotary. Generation recomputes the decoder at every step (no key/value cache: these models are tiny).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput


class GerbilEncDecConfig(PretrainedConfig):
    # the literals below (vocabulary 50264, context 2048, <|endoftext|> 50256) restate gerbil's
    # (data/tokenizer.py, units.DEFAULT_SEQ_LEN): this file is copied into exports and imports nothing of gerbil
    model_type = "gerbil-encdec"

    def __init__(self, vocab_size: int = 50264, d_model: int = 64, n_layer: int = 4, n_head: int = 4,
                 rotary_dim: int = 8, layer_norm_eps: float = 1e-5, n_positions: int = 2048, share: bool = False,
                 pad_token_id: int = 50256, eos_token_id: int = 50256, decoder_start_token_id: int = 50256,
                 **kwargs):
        self.vocab_size, self.d_model, self.n_layer, self.n_head = vocab_size, d_model, n_layer, n_head
        self.rotary_dim, self.layer_norm_eps, self.n_positions, self.share = rotary_dim, layer_norm_eps, n_positions, share
        self.num_hidden_layers, self.hidden_size = n_layer, d_model  # transformers' generic names
        kwargs.setdefault("is_encoder_decoder", True)
        kwargs.setdefault("tie_word_embeddings", False)
        kwargs.setdefault("use_cache", False)
        super().__init__(pad_token_id=pad_token_id, eos_token_id=eos_token_id,
                         decoder_start_token_id=decoder_start_token_id, **kwargs)


def _rotary(T: int, rotary_dim: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / (10000.0 ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32, device=device) / rotary_dim))
    f = torch.outer(torch.arange(T, dtype=torch.float32, device=device), inv)  # (T, rot/2)
    return f.cos(), f.sin()


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int) -> torch.Tensor:
    if rotary_dim == 0:
        return x
    xr = x[..., :rotary_dim].float().unflatten(-1, (rotary_dim // 2, 2))  # pairs (x0, x1), (x2, x3), ...
    a, b = xr[..., 0], xr[..., 1]
    out = torch.stack((a * cos - b * sin, b * cos + a * sin), dim=-1).flatten(-2)
    return torch.cat((out.to(x.dtype), x[..., rotary_dim:]), dim=-1)


class _SelfAttention(nn.Module):
    def __init__(self, c: GerbilEncDecConfig):
        super().__init__()
        self.n_head, self.hd, self.rot = c.n_head, c.d_model // c.n_head, c.rotary_dim
        self.qkv_proj = nn.Linear(c.d_model, 3 * c.d_model, bias=False)
        self.out_proj = nn.Linear(c.d_model, c.d_model, bias=False)

    def forward(self, x, cos, sin, mask, causal: bool):
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, self.hd).transpose(1, 2) for t in self.qkv_proj(x).split(C, -1))
        q, k = _apply_rotary(q, cos, sin, self.rot), _apply_rotary(k, cos, sin, self.rot)
        if causal:
            allowed = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()[None, None]
            mask = allowed if mask is None else mask & allowed
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, C))


class _CrossAttention(nn.Module):
    def __init__(self, c: GerbilEncDecConfig):
        super().__init__()
        self.n_head, self.hd = c.n_head, c.d_model // c.n_head
        self.q_proj = nn.Linear(c.d_model, c.d_model, bias=False)
        self.kv_proj = nn.Linear(c.d_model, 2 * c.d_model, bias=False)
        self.out_proj = nn.Linear(c.d_model, c.d_model, bias=False)

    def forward(self, h, enc, mask):
        B, T, C = h.shape
        q = self.q_proj(h).view(B, T, self.n_head, self.hd).transpose(1, 2)
        k, v = (t.view(B, enc.shape[1], self.n_head, self.hd).transpose(1, 2) for t in self.kv_proj(enc).split(C, -1))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, C))


class _MLP(nn.Module):
    def __init__(self, c: GerbilEncDecConfig):
        super().__init__()
        self.fc_in, self.fc_out = nn.Linear(c.d_model, 4 * c.d_model), nn.Linear(4 * c.d_model, c.d_model)

    def forward(self, x):
        return self.fc_out(F.gelu(self.fc_in(x), approximate="tanh"))


class _Block(nn.Module):
    def __init__(self, c: GerbilEncDecConfig):
        super().__init__()
        self.ln_1, self.attn, self.mlp = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps), _SelfAttention(c), _MLP(c)


class _EncoderView(nn.Module):
    """`get_encoder()`: runs the parent's encoder; holds no parameters of its own (the blocks may be shared)."""

    main_input_name = "input_ids"

    def __init__(self, parent: "GerbilEncDecForConditionalGeneration"):
        super().__init__()
        object.__setattr__(self, "_parent", parent)  # not a submodule: no second name for its weights

    def forward(self, input_ids=None, attention_mask=None, return_dict=True, **kwargs):
        return BaseModelOutput(last_hidden_state=self._parent.encode(input_ids, attention_mask))


class GerbilEncDecForConditionalGeneration(PreTrainedModel, GenerationMixin):
    config_class = GerbilEncDecConfig
    base_model_prefix = "gerbil_encdec"
    main_input_name = "input_ids"
    _supports_sdpa = True

    def __init__(self, config: GerbilEncDecConfig):
        super().__init__(config)
        c = config
        self.wte = nn.Embedding(c.vocab_size, c.d_model)
        self.h = nn.ModuleList(_Block(c) for _ in range(c.n_layer))
        self.dec_h = None if c.share else nn.ModuleList(_Block(c) for _ in range(c.n_layer))
        self.cross = nn.ModuleList(_CrossAttention(c) for _ in range(c.n_layer))
        self.ln_enc = None if c.share else nn.LayerNorm(c.d_model, eps=c.layer_norm_eps)
        self.ln_f = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=True)
        object.__setattr__(self, "_encoder_view", _EncoderView(self))
        self.post_init()

    def _init_weights(self, module):  # only for weights a checkpoint lacks; a gerbil export has all of them
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, 0.0, 0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def get_encoder(self):
        return self._encoder_view

    def get_input_embeddings(self):
        return self.wte

    def get_output_embeddings(self):
        return self.lm_head

    def encode(self, input_ids, attention_mask=None):
        """input_ids (B, Te), attention_mask (B, Te) 1 = token → (B, Te, d)."""
        cos, sin = _rotary(input_ids.shape[1], self.config.rotary_dim, input_ids.device)
        mask = None if attention_mask is None else attention_mask[:, None, None, :].bool()
        x = self.wte(input_ids)
        for b in self.h:
            h = b.ln_1(x)
            x = x + b.attn(h, cos, sin, mask, causal=False) + b.mlp(h)
        return (self.ln_f if self.ln_enc is None else self.ln_enc)(x)

    def decode(self, decoder_input_ids, encoded, attention_mask=None):
        cos, sin = _rotary(decoder_input_ids.shape[1], self.config.rotary_dim, decoder_input_ids.device)
        xmask = None if attention_mask is None else attention_mask[:, None, None, :].bool()
        x = self.wte(decoder_input_ids)
        for b, cross in zip(self.h if self.dec_h is None else self.dec_h, self.cross):
            h = b.ln_1(x)
            x = x + b.attn(h, cos, sin, None, causal=True) + b.mlp(h) + cross(h, encoded, xmask)
        return self.ln_f(x)

    def _shift_right(self, labels):
        ids = labels.new_full(labels.shape, self.config.decoder_start_token_id)
        ids[:, 1:] = labels[:, :-1].masked_fill(labels[:, :-1] == -100, self.config.pad_token_id)
        return ids

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, encoder_outputs=None,
                labels=None, return_dict=True, **kwargs):
        """transformers' seq2seq call: labels without decoder_input_ids are shifted right behind the
        decoder start id; the loss is the mean cross-entropy over labels != -100."""
        if encoder_outputs is None:
            encoder_outputs = BaseModelOutput(last_hidden_state=self.encode(input_ids, attention_mask))
        elif isinstance(encoder_outputs, (tuple, list)):
            encoder_outputs = BaseModelOutput(last_hidden_state=encoder_outputs[0])
        if decoder_input_ids is None:
            decoder_input_ids = self._shift_right(labels)
        hidden = self.decode(decoder_input_ids, encoder_outputs.last_hidden_state, attention_mask)
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
        return Seq2SeqLMOutput(loss=loss, logits=logits, encoder_last_hidden_state=encoder_outputs.last_hidden_state)

    def prepare_inputs_for_generation(self, input_ids, encoder_outputs=None, attention_mask=None, **kwargs):
        # no cache: the whole decoder sequence every step
        return {"decoder_input_ids": input_ids, "encoder_outputs": encoder_outputs, "attention_mask": attention_mask}

    def prepare_decoder_input_ids_from_labels(self, labels):
        return self._shift_right(labels)
