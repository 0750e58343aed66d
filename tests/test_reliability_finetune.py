"""Reliability of fine-tuning, prediction and export (issue 19): nothing a user owns is overwritten (the
input of `predict`, a file at its --output, folders beside an export, the files of a run killed before
its first checkpoint), no silently wrong result (mixed label kinds, a one-class classifier, a CSV row
with a stray quote, a prompt dropped by --max-new-tokens, a finished run's result rewritten with nulls),
and every such input refused in one line."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from gerbil.errors import GerbilError
from gerbil.finetune.data import read_examples, read_texts
from gerbil.finetune.finetune import finetune
from gerbil.runs.rundir import RunDir
from helpers import trained_run

pytestmark = pytest.mark.usefixtures("one_thread")


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _sentiment(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        pos = rng.random() < 0.5
        word = rng.choice(["great", "lovely", "happy"] if pos else ["awful", "sad", "bad"])
        rows.append({"text": f"{i} the {word} of", "label": "pos" if pos else "neg"})
    return rows


# ------------------------------------------------------------------------- labels of mixed kinds (10)
def test_mixed_label_kinds_follow_the_majority_not_the_first_row(tmp_path, caplog):
    rows = [{"text": "first row", "label": 1}] + _sentiment(20)
    ex = read_examples(_jsonl(tmp_path / "m.jsonl", rows), "classify")
    assert ex.label_names == ["neg", "pos"] and len(ex) == 20 and ex.bad.mixed_labels == 1
    assert "labels mix kinds: 1 rows with an integer (the first: row 1), 20 with a string" in caplog.text
    # the reverse: one string among integers
    rows = [{"text": "a", "label": "x"}] + [{"text": f"t{i}", "label": i % 3} for i in range(9)]
    ex = read_examples(_jsonl(tmp_path / "i.jsonl", rows), "classify")
    assert ex.label_names == ["0", "1", "2"] and len(ex) == 9 and ex.bad.mixed_labels == 1


def test_integer_strings_beside_integers_are_integers(tmp_path):
    rows = [{"text": "a", "label": 1}, {"text": "b", "label": "0"}, {"text": "c", "label": " 2"},
            {"text": "d", "label": 0}, {"text": "e", "label": "70000"}]
    ex = read_examples(_jsonl(tmp_path / "n.jsonl", rows), "classify")
    assert ex.labels == [1, 0, 2, 0] and ex.label_names == ["0", "1", "2"]
    assert ex.bad.bad_label == 1 and ex.bad.mixed_labels == 0


def test_as_many_labels_of_each_kind_is_refused(tmp_path):
    rows = [{"text": "a", "label": 1}, {"text": "b", "label": "spam"}, {"text": "c", "label": 0},
            {"text": "d", "label": "ham"}]
    with pytest.raises(GerbilError, match="labels mix kinds: 2 rows with an integer .* give every row the same"):
        read_examples(_jsonl(tmp_path / "t.jsonl", rows), "classify")


def test_a_one_class_file_is_refused(tmp_path):
    from gerbil.finetune.data import require_classes

    rows = [{"text": f"t{i}", "label": 1} for i in range(5)]  # ids 0..1 named, only 1 present
    ex = read_examples(_jsonl(tmp_path / "one.jsonl", rows), "classify")
    with pytest.raises(GerbilError, match=r"all 5 usable examples have the label '1' .* at least two classes"):
        require_classes(ex)
    require_classes(read_examples(_jsonl(tmp_path / "two.jsonl", _sentiment(10)), "classify"))


# ----------------------------------------------------------------------- a CSV row with a stray quote (16)
def test_csv_unterminated_quote_costs_one_counted_row(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text('text,label\n'
                    'good one,pos\n'
                    '"unterminated start,neg\n'   # the quote never closes on its line
                    'next row,pos\n'
                    '"quoted ""ok""",neg\n'       # a later quote would close the runaway field
                    '"multi\nline",pos\n'         # a real multi-line field stays one row
                    '"ok" trailing,neg\n'         # text after a closing quote
                    'last,neg\n')
    ex = read_examples(path, "classify")
    assert ex.texts == ["good one", "next row", 'quoted "ok"', "multi\nline", "last"]
    assert ex.bad.invalid_csv == 2 and ex.bad.total == 2
    assert ex.source_rows == [1, 3, 4, 5, 7]
    # a quote left open to the end of the file: the rows after it are kept too
    path.write_text('text,label\na,pos\n"open,neg\nb,pos\nc,neg\n')
    ex = read_examples(path, "classify")
    assert ex.texts == ["a", "b", "c"] and ex.bad.invalid_csv == 1
    texts, rows, bad = read_texts(path, "text")  # predict reads the same way
    assert texts == ["a", "b", "c"] and rows == [1, 3, 4] and bad.invalid_csv == 1
    # a long multi-line cell (an email body) is a row, not a parse error past csv's 128 KiB field limit
    body = "line, with a comma\n" * 10_000
    path.write_text(f'text,label\n"{body}",pos\nb,neg\n')
    ex = read_examples(path, "classify")
    assert ex.texts == [body, "b"] and ex.bad.total == 0


def test_csv_with_a_broken_header_is_one_line(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text('"text,label\na,pos\n')
    with pytest.raises(GerbilError, match="not a readable CSV file"):
        read_examples(path, "classify")


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def base(tmp_path_factory, tokenizer) -> Path:
    """A tiny causal-objective language model (context 256) trained by `gerbil train` (30 steps)."""
    return trained_run(tmp_path_factory.mktemp("base"), tokenizer, steps=30, objective="causal")


@pytest.fixture(scope="module")
def cls_file(tmp_path_factory) -> Path:
    return _jsonl(tmp_path_factory.mktemp("cls") / "sentiment.jsonl", _sentiment(60))


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory) -> Path:
    rows = [{"prompt": f"translate {w}", "completion": f" {f}"} for w, f in
            {"red": "rouge", "cat": "chat", "dog": "chien", "sun": "soleil", "moon": "lune"}.items()] * 4
    return _jsonl(tmp_path_factory.mktemp("sft") / "french.jsonl", rows)


def _cls(base: Path, train: Path, out: Path, **kw) -> dict:
    return dict(dict(base=str(base), task="classify", train=str(train), out=str(out), epochs=1, lr=1e-2,
                     max_len=32, progress=False, patience=0), **kw)


@pytest.fixture(scope="module")
def cls_run(base, cls_file, tmp_path_factory):
    return finetune(_cls(base, cls_file, tmp_path_factory.mktemp("runs") / "cls"))


@pytest.fixture(scope="module")
def sft_run(base, sft_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "sft"
    return finetune(dict(base=str(base), task="sft", train=str(sft_file), out=str(out), epochs=1, lr=1e-2,
                         val_fraction=0.2, progress=False))


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    """`gerbil ARGV` in process: (exit code, the last line of stderr)."""
    from gerbil.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err[-1] if err else ""


# ---------------------------------------------------------------------- predict's output (2), room (7)
def test_predict_never_replaces_its_input_or_a_foreign_file(cls_run, tmp_path, capsys):
    inp = _jsonl(tmp_path / "in.jsonl", [{"text": "the great of"}, {"text": "sad to be"}])
    before = inp.read_bytes()
    for out in (inp, tmp_path / "link.jsonl", tmp_path / "hard.jsonl"):
        if out.name == "link.jsonl":
            out.symlink_to(inp)
        elif out.name == "hard.jsonl":
            out.hardlink_to(inp)
        for extra in ([], ["--overwrite"]):  # --overwrite never makes the input writable
            rc, err = _cli(["predict", cls_run.run_dir, "--input", inp, "--output", out, *extra], capsys)
            assert rc == 2 and "is the --input file" in err, err
    assert inp.read_bytes() == before and (tmp_path / "link.jsonl").is_symlink()
    notes = tmp_path / "notes.csv"
    notes.write_text("my,own\nnotes,here\n")
    rc, err = _cli(["predict", cls_run.run_dir, "--input", inp, "--output", notes], capsys)
    assert rc == 2 and "exists and is not an earlier prediction file" in err and "--overwrite" in err
    assert notes.read_text() == "my,own\nnotes,here\n"
    folder = tmp_path / "dir.jsonl"
    folder.mkdir()
    assert _cli(["predict", cls_run.run_dir, "--input", inp, "--output", folder], capsys)[1].endswith(
        "is a folder; name a .jsonl or .csv file")
    # an earlier prediction file is replaced (a rerun); a foreign one only with --overwrite
    for name in ("pred.jsonl", "pred.csv"):
        for _ in range(2):
            assert _cli(["predict", cls_run.run_dir, "--input", inp, "--output", tmp_path / name], capsys)[0] == 0
    assert _cli(["predict", cls_run.run_dir, "--input", inp, "--output", notes, "--overwrite"], capsys)[0] == 0
    empty = tmp_path / "empty.jsonl"
    empty.touch()  # an empty file holds nothing to lose
    assert _cli(["predict", cls_run.run_dir, "--input", inp, "--output", empty], capsys)[0] == 0
    assert notes.read_text().startswith("row,label,probability,")


def test_max_new_tokens_never_drops_the_prompt_silently(sft_run, tmp_path, capsys, caplog):
    inp = _jsonl(tmp_path / "p.jsonl", [{"prompt": "translate cat"}])
    for n in (256, 300):  # the context is 256: no room for the prompt
        rc, err = _cli(["predict", sft_run.run_dir, "--input", inp, "--max-new-tokens", n], capsys)
        assert rc == 2 and f"--max-new-tokens {n} leaves no room for the prompt" in err and "at most 255" in err
    assert _cli(["predict", sft_run.run_dir, "--input", inp, "--max-new-tokens", 254], capsys)[0] == 0
    assert "1 of 1 prompts are longer than the 2 tokens" in caplog.text  # cut, and said so
    from gerbil.finetune.decode import greedy

    with pytest.raises(GerbilError, match="max_new_tokens 256 leaves no room"):
        greedy(_model(sft_run), [[1, 2, 3]], 256)


def _model(run):
    from gerbil.export import load_model

    return load_model(run.run_dir)[0]


def test_finetune_refuses_max_new_tokens_beyond_the_context(base, sft_file, tmp_path):
    out = tmp_path / "ft"
    with pytest.raises(GerbilError, match="max_new_tokens 999 leaves no room for the prompt"):
        finetune(dict(base=str(base), task="sft", train=str(sft_file), out=str(out), max_new_tokens=999,
                      progress=False))
    assert not out.exists()


# ------------------------------------------------------------------ folders beside an export (4)
def test_export_never_deletes_a_sibling_folder_it_did_not_leave(tmp_path, capsys, monkeypatch):
    import gerbil.export as ex
    from gerbil.export import export, random_model
    from helpers import tiny_model

    PARTIAL_MARK = getattr(ex, "PARTIAL_MARK", ".gerbil-partial-export")  # (so the test runs on older code)

    model = tiny_model(seed=0, vocab_size=1024)
    out = tmp_path / "exp"
    for suffix in (".tmp-export", ".old-export"):
        mine = tmp_path / f"exp{suffix}"
        mine.mkdir()
        (mine / "notes.txt").write_text("mine")
        with pytest.raises(GerbilError, match=f"exp{suffix} exists and was not left by a gerbil export"):
            export(model, out, tokenizer=False)
        assert (mine / "notes.txt").read_text() == "mine" and not out.exists()
        (mine / PARTIAL_MARK).touch()  # marked, but holding a user's file: still not deleted
        with pytest.raises(GerbilError, match="was not left by a gerbil export"):
            export(model, out, tokenizer=False)
        (mine / "notes.txt").unlink()
        (mine / PARTIAL_MARK).unlink()
        mine.rmdir()
    link = tmp_path / "exp.tmp-export"
    (tmp_path / "elsewhere").mkdir()
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(GerbilError, match="was not left by a gerbil export"):
        export(model, out, tokenizer=False)
    link.unlink()
    # a crash between the swaps leaves marked folders, which the next export clears
    export(model, out, tokenizer=False)
    real = Path.rename

    def crash(self, target):
        if self.name.endswith(".tmp-export"):
            raise KeyboardInterrupt  # killed after the earlier export moved to .old-export
        return real(self, target)

    monkeypatch.setattr(Path, "rename", crash)
    with pytest.raises(KeyboardInterrupt):
        export(model, out, tokenizer=False)
    monkeypatch.undo()
    assert (tmp_path / "exp.old-export" / PARTIAL_MARK).is_file() and (tmp_path / "exp.tmp-export").is_dir()
    assert export(random_model("3.3m", seed=1), out, tokenizer=False) == out.resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "exp"]
    assert not (out / PARTIAL_MARK).exists()


# ----------------------------------------------------------------- a device this machine lacks (20)
@pytest.mark.parametrize("verb", ["eval", "sample", "predict", "finetune"])
def test_a_missing_device_is_one_line_for_every_verb(verb, base, cls_run, cls_file, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU-only machine, also on a GPU one
    argv = {"eval": ["eval", base, "--tasks", "lambada", "--limit", "2", "--no-save"],
            "sample": ["sample", base, "--prompt", "hello", "--max-new-tokens", "2"],
            "predict": ["predict", cls_run.run_dir, "--input", cls_file],
            "finetune": ["finetune", base, "--task", "classify", "--train", cls_file, "--out", tmp_path / "ft"]}[verb]
    for device, message in (("cuda", "device 'cuda' requested but CUDA is not available"),
                            ("cuda:3", "device 'cuda:3' requested but CUDA is not available"),
                            ("meta", "unsupported device 'meta'"), ("gpu9", "unknown device 'gpu9'")):
        rc, err = _cli([*argv, "--device", device], capsys)
        assert rc == 2 and err.startswith(f"gerbil {verb}: error: ") and message in err, err
    assert not (tmp_path / "ft").exists()


def test_pick_device_counts_the_gpus(monkeypatch):
    import torch

    from gerbil.train.device import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("cuda:1") == torch.device("cuda:1") and pick_device("auto") == torch.device("cuda")
    with pytest.raises(GerbilError, match=r"'cuda:2' requested but this machine has 2 GPU\(s\) \(cuda:0 to cuda:1\)"):
        pick_device("cuda:2")


# --------------------------------------------------- a run's files without a checkpoint (3, finetune + train)
def _kill_before_the_first_checkpoint(run_dir: Path) -> dict[str, bytes]:
    """What a run killed in its first epoch leaves: its files, no checkpoint (and no result)."""
    import shutil

    shutil.rmtree(run_dir / "checkpoints")
    (run_dir / "result.json").unlink()
    return {p.name: p.read_bytes() for p in run_dir.iterdir()}


def test_finetune_never_replaces_a_runs_files_without_resume(base, cls_file, tmp_path, caplog):
    out = tmp_path / "ft"
    finetune(_cls(base, cls_file, out))
    left = _kill_before_the_first_checkpoint(out)
    with pytest.raises(GerbilError, match=r"holds a run that has no checkpoint yet \(config.yaml, env.json, "
                                          r"metrics.jsonl; .*pass --resume auto to start it again, or another --out"):
        finetune(_cls(base, cls_file, out))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == left
    with caplog.at_level("INFO", logger="gerbil.train.runplan"):  # the one resume rule's home
        r = finetune(dict(out=str(out), resume=True, progress=False))  # the requeue: as it was configured
    assert "starting the run again" in caplog.text and r.steps > 0 and RunDir(out).latest_checkpoint()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my: settings\n")
    (mine / "metrics.jsonl").write_text("{}\n")
    for resume in (False, True):
        with pytest.raises(GerbilError):
            finetune(_cls(base, cls_file, mine, resume=resume))
    assert (mine / "config.yaml").read_text() == "my: settings\n" and sorted(p.name for p in mine.iterdir()) == [
        "config.yaml", "metrics.jsonl"]


def test_train_never_replaces_a_runs_files_without_resume(tmp_path):
    from gerbil.train import train
    from helpers import make_store, tiny_config

    store = make_store(tmp_path / "store")
    cfg = tiny_config(store, tmp_path / "runs", tokens=128 * 2, checkpoint_every=128 * 2, eval_every=128 * 2)
    run = train(cfg).run_dir
    left = _kill_before_the_first_checkpoint(run)
    with pytest.raises(GerbilError, match="holds a run that has no checkpoint yet .*pass --resume auto to start "
                                          "it again, or --name for a new run"):
        train(cfg)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == left
    assert train(tiny_config(store, tmp_path / "runs", tokens=128 * 2, checkpoint_every=128 * 2,
                             eval_every=128 * 2, resume=True)).steps == 2
    mine = tmp_path / "runs" / "mine"
    mine.mkdir()
    (mine / "result.json").write_text('{"mine": true}')
    for resume in (False, True):
        with pytest.raises(GerbilError, match="holds files that are not a gerbil run's \\(result.json\\)"):
            train(tiny_config(store, tmp_path / "runs", name="mine", resume=resume))
    assert (mine / "result.json").read_text() == '{"mine": true}'


# ------------------------------------------------------------------ a finished run resumed (15)
def test_a_finished_run_resumed_keeps_its_result(base, cls_file, tmp_path):
    from gerbil.train import train
    from helpers import make_store, tiny_config

    store = make_store(tmp_path / "store")
    kw = dict(tokens=128 * 2, checkpoint_every=128 * 2, eval_every=128 * 2)
    first = train(tiny_config(store, tmp_path / "runs", **kw))
    ft = finetune(_cls(base, cls_file, tmp_path / "ft"))
    for run_dir, again in ((first.run_dir, lambda: train(tiny_config(store, tmp_path / "runs", resume=True, **kw))),
                           (ft.run_dir, lambda: finetune(dict(out=str(ft.run_dir), resume=True, progress=False)))):
        files = {n: (run_dir / n).read_bytes() for n in ("result.json", "env.json", "config.yaml", "metrics.jsonl")}
        result = json.loads(files["result.json"])
        assert result["val_loss"] is not None
        r = again()
        assert {n: (run_dir / n).read_bytes() for n in files} == files  # nothing rewritten
        assert r.val_loss == result["val_loss"] and r.info == result["info"] and r.checkpoint == Path(
            result["checkpoint"])
        (run_dir / "result.json").unlink()  # killed after its last checkpoint, before result.json
        r = again()
        rewritten = json.loads((run_dir / "result.json").read_text())
        assert rewritten["val_loss"] == result["val_loss"] and r.val_loss == result["val_loss"]
        assert rewritten["info"].get("last_validation") == result["info"].get("last_validation")


# -------------------------------------------------------------------------------------- wording (28)
def test_a_changed_option_against_a_default_names_no_none():
    from gerbil.finetune.config import FinetuneConfig
    from gerbil.options import resumed
    from gerbil.train.config import TrainConfig

    with pytest.raises(ValueError) as e:
        resumed(FinetuneConfig(max_len=30), FinetuneConfig().to_dict(), "runs/ft")
    assert "--max-len 30 differs from the run's, which was left to its default" in str(e.value)
    with pytest.raises(GerbilError) as e:
        resumed(TrainConfig(lr=0.5), TrainConfig().to_dict(), "runs/r")
    assert "--lr 0.5 differs from the run's, which was left to its default" in str(e.value)
    assert "None" not in str(e.value)


def test_a_token_store_is_named_not_called_a_damaged_checkpoint(tmp_path, cls_file, capsys):
    from helpers import make_store

    store = make_store(tmp_path / "store")
    for argv in (["finetune", store, "--task", "classify", "--train", cls_file, "--out", tmp_path / "ft"],
                 ["predict", store, "--input", cls_file], ["sample", store, "--prompt", "x"]):
        rc, err = _cli(argv, capsys)
        assert rc == 2 and "a token store (data from gerbil prepare), not a model" in err and "damaged" not in err


def test_suite_wording_for_a_run_without_checkpoint_and_for_errors(tmp_path):
    from gerbil.suite.runner import _reason
    from gerbil.suite.spec import build_suite
    from gerbil.suite.state import SuiteDir, run_states

    assert _reason(ValueError("seq_len 4096 exceeds the model's context")) == "seq_len 4096 exceeds the model's context"
    assert _reason(GerbilError("no space left")) == "no space left"
    assert _reason(RuntimeError("CUDA error: boom\nmore")) == "RuntimeError: CUDA error: boom"
    suite = build_suite({"name": "w", "corpus": "shakespeare",
                         "models": {"m": {"d_model": 32, "n_layer": 2, "n_head": 2, "rotary_dim": 8, "seq_len": 64}},
                         "seq_len": 32, "batch_tokens": 128, "runs": [{"name": "r1", "size": "m", "tokens": 256}]},
                        "w.yaml")
    sdir = SuiteDir(tmp_path / "out")
    sdir.write_suite(suite)
    sdir.write_record("r1", {"status": "running"})  # its worker died before the first checkpoint
    assert run_states(sdir, suite)["r1"].detail == "interrupted (running); starts again (no checkpoint yet)"
