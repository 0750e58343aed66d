"""Export to / import from transformers' GPTJForCausalLM: logits parity on CPU in fp32 for every ladder
size (random and a few AdamW steps trained), exact round trips, foreign GPT-J folders (50,400 rows),
the exported tokenizer, generation, checkpoints and the `gerbil export` verb.

Run with `pytest tests/test_export.py -s` to see the measured max |Δlogit| per size.
"""
from __future__ import annotations

import json
import os

import pytest
import torch

from gerbil.cli import main
from gerbil.model.config import VOCAB_SIZE, model_config
from gerbil.export import (
    export,
    from_transformers_state_dict,
    load,
    random_model,
    read_info,
    to_transformers,
)
from gerbil.model.loss import lm_loss

transformers = pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM, AutoTokenizer, GPTJConfig, GPTJForCausalLM  # noqa: E402

SEQ = 64
TOL = 1e-4
LADDER = ["3.3m", "6.7m", "15m", "32m"]
# 77m and 104m: random init only, converted in memory (0.3-0.4 GB of fp32 weights each).
BIG = ["77m", "104m"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _train_a_few_steps(model, steps: int = 3, seed: int = 0, lr: float = 1e-2) -> None:
    """A few AdamW steps on random tokens with gerbil's own loss: moves every parameter (biases,
    LayerNorms, padded-vocabulary bookkeeping) off its initial value."""
    g = torch.Generator().manual_seed(seed)
    V = model.config.vocab_size
    # fused: one CPU kernel per step; the default foreach AdamW takes seconds per step at 32m on CPU
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, fused=True)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, V, (2, SEQ + 1), generator=g)
        hidden = model(idx[:, :-1])
        loss = lm_loss(hidden, model.lm_head.weight, model.lm_head.bias, idx[:, 1:], vocab_size=V)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()


def _tokens(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB_SIZE, (batch, SEQ), generator=torch.Generator().manual_seed(seed))


def _max_diff(model, hf, batch: int = 2) -> float:
    """max |gerbil logits − transformers logits| on random tokens."""
    idx = _tokens(batch)
    with torch.no_grad():
        ours = model.logits(model(idx))
        theirs = hf(idx).logits
    assert ours.shape == theirs.shape == (batch, SEQ, model.config.vocab_size)
    return (ours - theirs).abs().max().item()


def _from_folder(folder):
    return GPTJForCausalLM.from_pretrained(str(folder), attn_implementation="eager").eval()


@pytest.mark.parametrize("size", LADDER)
def test_logits_parity_random_and_trained(size, tmp_path):
    """Random init (converted in memory) and after a few AdamW steps (through the exported folder:
    safetensors names, config.json and from_pretrained all exercised)."""
    model = random_model(size, seed=0, seq_len=SEQ)
    diff_random = _max_diff(model, to_transformers(model))
    _train_a_few_steps(model, steps=2)
    with torch.no_grad():
        spread = model.logits(model(_tokens())).std().item()
    diff_trained = _max_diff(model, _from_folder(export(model, tmp_path / "trained", tokenizer=False)))
    print(f"\nparity {size}: max|Δlogit| random {diff_random:.3g}, trained {diff_trained:.3g} "
          f"(trained logit std {spread:.3g})")
    assert spread > 0.05  # the tolerance is meaningful: the trained logits are far from zero
    assert diff_random < TOL and diff_trained < TOL


@pytest.mark.slow
@pytest.mark.parametrize("trained", [
    False,
    # +10-16 s each on one CPU thread: opt in with GERBIL_SLOW_TESTS=1
    pytest.param(True, marks=pytest.mark.skipif(not os.environ.get("GERBIL_SLOW_TESTS"),
                                                reason="set GERBIL_SLOW_TESTS=1")),
])
@pytest.mark.parametrize("size", BIG)
def test_logits_parity_big_sizes(size, trained, tmp_path):
    model = random_model(size, seed=0, seq_len=SEQ)
    if trained:
        _train_a_few_steps(model, steps=2)
        hf = _from_folder(export(model, tmp_path / "trained", tokenizer=False))
    else:
        hf = to_transformers(model)
    diff = _max_diff(model, hf, batch=1)
    print(f"\nparity {size}: max|Δlogit| {'trained' if trained else 'random'} {diff:.3g}")
    assert diff < TOL


def test_round_trip_is_exact_with_padded_vocab(tmp_path):
    model = random_model("3.3m", seed=3, seq_len=SEQ, pad_vocab_multiple=64)
    _train_a_few_steps(model, steps=2)
    assert model.config.padded_vocab_size == 50304
    out = export(model, tmp_path / "exp", tokenizer=False, objective="blender",
                 meta={"size": "3.3m", "class": "A", "tokens": 66_000_000})
    hf_cfg = json.loads((out / "config.json").read_text())
    assert hf_cfg["vocab_size"] == VOCAB_SIZE  # padding rows are not exported
    assert hf_cfg["tie_word_embeddings"] is False and hf_cfg["activation_function"] == "gelu_new"
    assert (hf_cfg["n_embd"], hf_cfg["n_layer"], hf_cfg["n_head"], hf_cfg["rotary_dim"], hf_cfg["n_positions"]) \
        == (32, 4, 4, 8, SEQ)
    assert hf_cfg["bos_token_id"] == hf_cfg["eos_token_id"] == 50256

    back, meta = load(out)
    assert back.config == model.config  # the run's padding is restored from the recorded config
    a, b = model.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert meta["objective"] == "blender" and meta["eval_prefix"] == "<causal>"
    assert (meta["size"], meta["class"], meta["tokens"]) == ("3.3m", "A", 66_000_000)
    assert meta["name"] == "GerbilBlender-A-3.3m"
    assert read_info(out)["params"] == model.n_params()
    card = (out / "README.md").read_text()
    for needle in ("GerbilBlender-A-3.3m", "| class | A |", "66M", "blender", "<causal>", "from_pretrained"):
        assert needle in card
    # a second export of the loaded model writes the same tensors
    out2 = export(back, tmp_path / "exp2", tokenizer=False)
    from safetensors.torch import load_file

    s1, s2 = load_file(str(out / "model.safetensors")), load_file(str(out2 / "model.safetensors"))
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    assert "transformer.h.0.attn.q_proj.weight" in s1 and "lm_head.bias" in s1
    assert not any("qkv" in k for k in s1)


def test_foreign_gptj_folder_with_50400_rows(tmp_path):
    """A GPT-J folder as published (GPT-J's 50,400-row default vocabulary, old attn.bias buffers)."""
    cfg = GPTJConfig(vocab_size=50400, n_positions=SEQ, n_embd=32, n_layer=2, n_head=4, rotary_dim=4,
                     tie_word_embeddings=False)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        hf = GPTJForCausalLM(cfg).eval()
        with torch.no_grad():
            for p in hf.parameters():  # non-trivial biases and LayerNorms, not just the default init
                p.add_(0.05 * torch.randn_like(p))
    hf.save_pretrained(str(tmp_path / "gptj"))
    idx = _tokens()
    with torch.no_grad():
        ref = hf(idx).logits  # (B, T, 50400)

    model, meta = load(tmp_path / "gptj")  # transformers' semantics: every row is a token
    assert model.config.vocab_size == 50400 and meta["objective"] == "plain"
    with torch.no_grad():
        assert (model.logits(model(idx)) - ref).abs().max().item() < TOL

    model, _ = load(tmp_path / "gptj", vocab_size=VOCAB_SIZE)  # rows 50,264+ declared padding
    assert model.config.vocab_size == VOCAB_SIZE and model.config.padded_vocab_size == 50400
    assert model.n_params() == model.config.n_params()  # padding is not counted
    with torch.no_grad():
        out = model.logits(model(idx))
    assert out.shape[-1] == VOCAB_SIZE
    assert (out - ref[..., :VOCAB_SIZE]).abs().max().item() < TOL

    # fusing ignores old checkpoints' causal-mask buffers
    state = {f"transformer.{k}" if not k.startswith("lm_head") else k: v
             for k, v in hf.state_dict().items() if not k.startswith("lm_head")}
    state = {**state, **{k: v for k, v in hf.state_dict().items() if k.startswith("lm_head")}}
    state = {k.replace("transformer.transformer.", "transformer."): v for k, v in state.items()}
    state["transformer.h.0.attn.bias"] = torch.ones(1, 1, SEQ, SEQ, dtype=torch.bool)
    fused = from_transformers_state_dict(state, model.config)
    assert "h.0.attn.bias" not in fused and fused["h.0.attn.qkv_proj.weight"].shape == (96, 32)


def test_tokenizer_and_generation(tmp_path, tokenizer, assets_home):
    from gerbil.assets import eval_set

    model = random_model("3.3m", seed=4, seq_len=SEQ)
    _train_a_few_steps(model, steps=3)
    out = export(model, tmp_path / "exp", tokenizer=tokenizer, objective="blender")

    hf_tok = AutoTokenizer.from_pretrained(str(out))
    assert len(hf_tok) == VOCAB_SIZE
    with open(eval_set("lambada_openai"), encoding="utf-8") as f:
        texts = [json.loads(next(f))["text"] for _ in range(20)]
    texts += [
        "<fitm_start> this is an <multiple_tok_mask> for fill-in-the-middle <fitm_result> example text <|endoftext|>",
        "<causal> this is an example text for causal language modelling <|endoftext|>",
        "<mlm_start> this is an <single_tok_mask> text for masked language modelling <mlm_end> example <|endoftext|>",
        "  leading spaces, tabs\tand\nnewlines, émigré café, 日本語, emoji 🐹, code: def f(x): return x**2",
    ]
    for text in texts:
        ids = hf_tok(text).input_ids
        assert ids == tokenizer.encode(text, allow_special=True), text
        assert hf_tok.decode(ids) == text
    assert hf_tok.eos_token_id == hf_tok.bos_token_id == 50256

    # the Auto classes load the folder, and generation runs and agrees with gerbil's greedy decoding
    hf = AutoModelForCausalLM.from_pretrained(str(out), attn_implementation="eager").eval()
    assert _max_diff(model, hf) < TOL
    assert type(hf).__name__ == "GPTJForCausalLM"
    prompt = torch.tensor([tokenizer.encode("<causal> The gerbil ran", allow_special=True)])
    n_new = 8
    gen = hf.generate(prompt, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False)
    assert gen.shape == (1, prompt.shape[1] + n_new)
    ids = prompt
    with torch.no_grad():
        for _ in range(n_new):
            nxt = model.logits(model(ids))[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
    assert gen.tolist() == ids.tolist()
    gc = json.loads((out / "generation_config.json").read_text())
    assert gc["eos_token_id"] == gc["pad_token_id"] == 50256


def test_export_from_run_directory_and_cli(tmp_path, tokenizer):
    from gerbil.train.checkpoint import save_checkpoint
    from gerbil.runs.rundir import RunDir

    model = random_model("3.3m", seed=5, seq_len=SEQ)
    _train_a_few_steps(model, steps=1)
    run = tmp_path / "runs" / "r1"
    meta = {"model": model.config.to_dict(), "objective": "blender", "size": "3.3m", "class": "A",
            "tokens": 1234}
    save_checkpoint(RunDir(run).checkpoints, 5, model, {"step": 5}, meta)

    assert main(["export", str(run)]) == 0  # a run directory exports to RUN/export by default
    out = run / "export"
    back, info = load(out)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), back.state_dict().values()))
    assert (info["objective"], info["class"], info["tokens"], info["step"]) == ("blender", "A", 1234, 5)
    assert (out / "tokenizer.json").is_file() and (out / "README.md").is_file()
    ckpt_out = tmp_path / "from-ckpt"  # a checkpoint directory works too; bf16 weights on request
    assert main(["export", str(run / "checkpoints" / "step-00000005"), "--out", str(ckpt_out),
                 "--dtype", "bfloat16", "--objective", "plain"]) == 0
    half, info = load(ckpt_out)
    assert info["objective"] == "plain" and half.wte.weight.dtype == torch.float32
    torch.testing.assert_close(half.wte.weight, model.wte.weight.bfloat16().float())

    rnd = tmp_path / "rnd"
    assert main(["export", "--size", "3.3m", "--random-init", "--seed", "7", "--out", str(rnd)]) == 0
    back, info = load(rnd)
    assert info["size"] == "3.3m" and info["tokens"] == 0 and back.n_params() == 3_317_272
    again, _ = load(rnd)
    assert torch.equal(back.wte.weight, random_model("3.3m", seed=7).wte.weight)  # seeded
    assert torch.equal(back.h[0].attn.qkv_proj.weight, again.h[0].attn.qkv_proj.weight)


def test_cli_errors(tmp_path, capsys):
    assert main(["export", "--random-init", "--out", str(tmp_path / "x")]) == 2
    assert "--size" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert "nothing" in capsys.readouterr().err
    assert main(["export", "--out", str(tmp_path / "x")]) == 2
    assert main(["export", "--size", "3.3m", "--random-init"]) == 2
    assert "--out" in capsys.readouterr().err
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    model = random_model("3.3m", seed=0)
    with pytest.raises(Exception, match="not an earlier gerbil export"):
        export(model, tmp_path / "precious", tokenizer=False)
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"


def test_export_never_deletes_what_it_did_not_write(tmp_path, capsys):
    """A folder with a config.json of its own (a user's project) is never replaced; only an earlier
    gerbil export (a gerbil config.json and nothing but export files) is."""
    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "config.json").write_text("{}")
    (proj / "src" / "main.py").write_text("x")
    model = random_model("3.3m", seed=0)
    exp = export(model, tmp_path / "exp", tokenizer=False)
    assert main(["export", str(exp), "--out", str(proj)]) == 2
    assert "not an earlier gerbil export" in capsys.readouterr().err
    assert (proj / "src" / "main.py").read_text() == "x" and (proj / "config.json").read_text() == "{}"
    # an earlier export with a user's file added is not replaced either
    (exp / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="not an earlier gerbil export"):
        export(model, exp, tokenizer=False)
    (exp / "notes.txt").unlink()
    assert export(random_model("3.3m", seed=1), exp, tokenizer=False) == exp.resolve()  # replaced
    assert not list(tmp_path.glob("*.old-export")) and not list(tmp_path.glob("*.tmp-export"))


def test_unsupported_folder_is_refused(tmp_path):
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 32, "n_head": 4}))
    with pytest.raises(Exception, match="not GPT-J"):
        load(tmp_path / "gpt2")
    assert model_config("3.3m").vocab_size == VOCAB_SIZE
