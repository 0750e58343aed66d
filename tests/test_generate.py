"""Generation: prompts in the training formats, greedy/seeded sampling, loading a run / checkpoint /
export of a tiny random model, bad input, and the `sample` / `infill` / `unmask` verbs."""
from __future__ import annotations

import pytest
import torch

from gerbil.data.objectives import (
    CAUSAL, FITM_RESULT, FITM_START, MLM_END, MLM_START, MULTIPLE_TOK_MASK, SINGLE_TOK_MASK,
)
from gerbil.data.tokenizer import EOT_ID
from gerbil.errors import GerbilError
from gerbil.export import load_model
from gerbil.generate import generate_ids, infill, sample, unmask
from gerbil.model.model import GPT
from gerbil.runs.rundir import RunDir
from helpers import tiny_model as _tiny

EXAMPLE = 1672  # " example"


def tiny_model(seed: int = 0) -> GPT:
    return _tiny(seed, n_layer=1, n_head=2, seq_len=32)


class Recorder:
    """Records every context the model sees (a forward pre-hook)."""

    def __init__(self, model):
        self.contexts: list[list[int]] = []
        model.register_forward_pre_hook(lambda mod, args: self.contexts.append(args[0][0].tolist()))


def favour(model: GPT, token: int, by: float = 1e4) -> GPT:
    """Make ``token`` the argmax everywhere (the head's bias)."""
    with torch.no_grad():
        model.lm_head.bias[token] += by
    return model


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def test_greedy_is_argmax_and_sampling_is_seeded(model):
    prompt = [464, 2068, 7586]
    got = generate_ids(model, prompt, 5, temperature=0)
    ids = list(prompt)
    for _ in range(5):
        with torch.no_grad():
            nxt = int(model.logits(model(torch.tensor([ids])))[0, -1].argmax())
        ids.append(nxt)
    assert got == ids[len(prompt):]
    a = generate_ids(model, prompt, 20, temperature=1.0, top_k=50, seed=3)
    assert a == generate_ids(model, prompt, 20, temperature=1.0, top_k=50, seed=3)
    assert a != generate_ids(model, prompt, 20, temperature=1.0, top_k=50, seed=4)
    assert generate_ids(model, prompt, 10, temperature=5.0, top_k=1) == generate_ids(model, prompt, 10, temperature=0)


def test_context_is_cropped_to_seq_len():
    m = tiny_model()
    rec = Recorder(m)
    generate_ids(m, list(range(100, 140)), 3, temperature=0, stop_ids=())
    assert [len(c) for c in rec.contexts] == [32, 32, 32]
    assert rec.contexts[0] == list(range(108, 140))


def test_sample_prompt_and_stop(tokenizer):
    m = favour(tiny_model(), EOT_ID)
    rec = Recorder(m)
    assert sample(m, tokenizer, "hello world", max_new_tokens=10) == ""  # stops at <|endoftext|>
    assert rec.contexts[-1] == tokenizer.encode("hello world")
    sample(m, tokenizer, "hello world", objective="blender")
    assert rec.contexts[-1] == [CAUSAL] + tokenizer.encode("hello world")
    sample(m, tokenizer, "")
    assert rec.contexts[-1] == [EOT_ID]  # an empty prompt starts at a document boundary
    m2 = favour(tiny_model(), EXAMPLE)
    assert sample(m2, tokenizer, "an", max_new_tokens=3, temperature=0) == " example example example"


def test_infill_builds_the_fim_prompt(tokenizer):
    m = favour(favour(tiny_model(), EXAMPLE), EOT_ID, by=-1e4)
    rec = Recorder(m)
    middle = infill(m, tokenizer, "this is an ", " text for fun", max_new_tokens=2)
    assert middle == " example example"
    assert rec.contexts[0] == ([FITM_START] + tokenizer.encode("this is an") + [MULTIPLE_TOK_MASK]
                               + tokenizer.encode(" text for fun") + [FITM_RESULT])
    infill(m, tokenizer, "a", "b", max_new_tokens=1, spm=True)
    assert rec.contexts[-1] == [FITM_START, MULTIPLE_TOK_MASK, tokenizer.encode("b")[0], FITM_RESULT,
                                tokenizer.encode("a")[0]]
    # ends at <|endoftext|>; never emits a Blender token even if the model prefers one
    m3 = favour(favour(tiny_model(), EOT_ID, by=10.0), FITM_RESULT, by=1e4)
    assert infill(m3, tokenizer, "a", "b") == ""


def test_unmask_fills_each_mask(tokenizer):
    m = favour(tiny_model(), EXAMPLE)
    rec = Recorder(m)
    filled, fills = unmask(m, tokenizer, "this is an <single_tok_mask> text <single_tok_mask>")
    assert fills == [" example", " example"] and filled == "this is an example text example"
    assert rec.contexts[0] == ([MLM_START] + tokenizer.encode("this is an") + [SINGLE_TOK_MASK]
                               + tokenizer.encode(" text") + [SINGLE_TOK_MASK, MLM_END])
    assert len(rec.contexts) == 2  # exactly one token per mask
    m2 = favour(tiny_model(), MLM_END)  # special tokens are never an answer
    _, fills = unmask(m2, tokenizer, "<single_tok_mask>")
    assert len(fills) == 1 and fills[0] not in ("<mlm_end>", "<|endoftext|>")


@pytest.mark.parametrize("call, message", [
    (lambda m, t: sample(m, t, "a <causal> b"), "prompt contains the special token <causal>"),
    (lambda m, t: sample(m, t, "x<|endoftext|>"), "special token <|endoftext|>"),
    (lambda m, t: infill(m, t, "a <fitm_result>", "b"), "prefix contains the special token <fitm_result>"),
    (lambda m, t: infill(m, t, "a", "<mlm_end>"), "suffix contains"),
    (lambda m, t: unmask(m, t, "no masks here"), "no <single_tok_mask>"),
    (lambda m, t: unmask(m, t, "<single_tok_mask> <causal>"), "special token <causal>"),
    (lambda m, t: sample(m, t, "a", temperature=-1), "temperature must be >= 0"),
    (lambda m, t: sample(m, t, "a", top_k=0), "top_k must be >= 1"),
    (lambda m, t: sample(m, t, "a", max_new_tokens=-1), "max_new_tokens must be >= 0"),
])
def test_bad_input(model, tokenizer, call, message):
    with pytest.raises(ValueError) as e:
        call(model, tokenizer)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_allow_special_uses_the_display_convention(tokenizer):
    m = favour(tiny_model(), EOT_ID)
    rec = Recorder(m)
    sample(m, tokenizer, "<mlm_start> this is an <single_tok_mask> <mlm_end>", allow_special=True)
    assert rec.contexts[-1] == [MLM_START] + tokenizer.encode(" this is an") + [SINGLE_TOK_MASK, MLM_END]


# ------------------------------------------------------------------------------------ runs and the CLI
@pytest.fixture(scope="module")
def saved(tmp_path_factory, tokenizer):
    """A tiny random model saved as a run (checkpoint) and as an export folder."""
    from gerbil.train.checkpoint import save_checkpoint
    from gerbil.export import export

    root = tmp_path_factory.mktemp("gen")
    m = favour(tiny_model(1), EXAMPLE)
    meta = {"model": m.config.to_dict(), "objective": "blender", "size": "tiny", "tokens": 0, "step": 0}
    save_checkpoint(RunDir(root / "run").checkpoints, 0, m, {}, meta)
    export(m, root / "export", tokenizer=tokenizer, objective="blender", meta=meta)
    return root, m


def test_load_run_checkpoint_and_export(saved, tokenizer):
    root, m = saved
    ref = generate_ids(m, [464, 2068], 4, temperature=1.0, top_k=None, seed=0)
    for path in (root / "run", root / "run" / "checkpoints" / "step-00000000", root / "export"):
        loaded, meta = load_model(path)
        assert meta["objective"] == "blender"
        assert generate_ids(loaded, [464, 2068], 4, temperature=1.0, top_k=None, seed=0) == ref
    with pytest.raises(GerbilError, match="no such run"):
        load_model(root / "missing")


def test_cli_verbs(saved, capsys):
    from gerbil.cli import main

    root, _ = saved
    for where in ("run", "export"):
        assert main(["unmask", str(root / where), "--text", "this is an <single_tok_mask> text"]) == 0
        assert capsys.readouterr().out.strip() == "this is an example text"
    assert main(["infill", str(root / "run"), "--prefix", "this is an ", "--suffix", " text",
                 "--max-new-tokens", "1"]) == 0
    assert capsys.readouterr().out.strip() == "this is an example text"
    assert main(["sample", str(root / "run"), "--prompt", "an", "--max-new-tokens", "2", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.strip() == "an example example"
    assert main(["sample", str(root / "run"), "--prompt", "a <causal>"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gerbil sample: error:") and "<causal>" in err and "\n" not in err
    assert main(["unmask", str(root / "nope"), "--text", "<single_tok_mask>"]) == 2
    assert "nope" in capsys.readouterr().err
