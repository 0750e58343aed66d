"""One options module for every verb (gerbil.options): shared groups declared once, runtime fields
marked on the field, one resume rule with one wording and error type, `--help` grouped by section,
every flag spelling kept, and flags = YAML = Python for train, finetune, fit, plan and suite run.
Torch-free and fast."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from gerbil.cli import build_parser
from gerbil.errors import GerbilError
from gerbil.finetune.config import FinetuneConfig
from gerbil.fit.command import FitCommand
from gerbil.options import Optimization, OptionError, Runtime, config_from_args, resumed
from gerbil.plan_command import PlanOptions
from gerbil.suite.command import SuiteRun
from gerbil.train.config import TrainConfig

#: every flag each verb had before the options module (gerbil 0.2's parsers): none may disappear
FLAGS = {
    "train": "--batch-tokens --beta1 --beta2 --blender-weights --checkpoint-at --checkpoint-every --checkpoints "
             "--class --compile --config --cooldown-fraction --data --deterministic --device --eval-every --from "
             "--grad-clip --keep-checkpoints --log --log-every --loss-impl --loss-on --lr --mask-rate --micro-batch "
             "--min-lr-ratio --model --name --no-compile --no-deterministic --no-progress --nproc --objective "
             "--precision --progress --resume --runs --schedule --seed --seq-len --size --spm-rate --tokens "
             "--val-tokens --warmup-tokens --weight-decay",
    "finetune": "--batch-size --beta1 --beta2 --class-weights --compile --completion-field --config "
                "--cooldown-fraction --deterministic --device --epochs --exact-match-examples --grad-clip "
                "--label-field --label-names --log --log-every --lr --max-len --max-new-tokens --micro-batch "
                "--min-lr-ratio --no-compile --no-deterministic --no-pack --no-progress --out --pack --patience "
                "--precision --progress --prompt-field --prompt-format --resume --schedule --seed --select "
                "--split-seed --task --template --text-field --train --truncate --val --val-fraction "
                "--warmup-fraction --weight-decay",
    "fit": "--approach --bootstrap --budgets --ci --curve-metric --delta --flops --flops-col --flops-tol --form "
           "--json --loss-col --metric --name-col --no-plots --non-embedding-col --out --params --params-col "
           "--run-col --seed --tokens-col --top-k --workers --task --task-law --metric-col --chance --predict",
    "plan": "--batch --batch-tokens --class --d-model --fit --from --gpu --hours --json --loss --mfu --n-head "
            "--n-layer --ramp-shape --ramp-tokens --ratio --rotary-dim --runs --seq-len --size --tokens",
    "suite run": "--data --device --log --no-eval --out --poll --progress --retry-failed --worker",
}


def _parser(verb: str):
    sub = build_parser()._subparsers._group_actions[0].choices
    if verb == "suite run":
        return sub["suite"]._subparsers._group_actions[0].choices["run"]
    return sub[verb]


@pytest.mark.parametrize("verb", sorted(FLAGS))
def test_every_flag_spelling_is_kept(verb):
    have = {s for a in _parser(verb)._actions for s in a.option_strings}
    assert set(FLAGS[verb].split()) <= have, sorted(set(FLAGS[verb].split()) - have)


def test_shared_groups_are_declared_once_and_composed():
    """The optimizer and runtime options of train and finetune are one declaration each: the same flag,
    check and section; only a default (and for the LR its help) is tuned per verb."""
    for group in (Optimization, Runtime):
        for f in dataclasses.fields(group):
            a, b = TrainConfig.__dataclass_fields__[f.name], FinetuneConfig.__dataclass_fields__[f.name]
            for key in ("flag", "check", "choices", "runtime", "section"):
                assert a.metadata[key] == b.metadata[key] == f.metadata[key], (f.name, key)
    tuned = {n for n, f in FinetuneConfig.__dataclass_fields__.items()
             if n in Optimization.__dataclass_fields__ and f.default != Optimization.__dataclass_fields__[n].default}
    assert tuned == {"lr", "min_lr_ratio", "weight_decay", "beta2"}
    assert (FinetuneConfig().lr, TrainConfig().lr, FinetuneConfig().beta2, TrainConfig().beta2) == (1e-3, None, 0.999,
                                                                                                      0.95)


def test_runtime_fields_are_marked_on_the_field():
    assert set(TrainConfig.runtime_fields()) == {"device", "compile", "progress", "runs", "tokenizer_sha256",
                                                 "resume", "data", "deterministic", "log", "name", "sdpa_backend"}
    assert set(FinetuneConfig.runtime_fields()) == {"device", "compile", "progress", "deterministic", "log",
                                                    "resume", "out", "base", "sdpa_backend"}


@pytest.mark.parametrize("cls, section, advice", [(TrainConfig, "train", "--name"), (FinetuneConfig, "finetune", "--out")])
def test_one_resume_rule_for_every_verb(cls, section, advice):
    """Resuming reads the recorded options, refuses a changed fixed one (GerbilError, one wording naming
    the flag), lets a not-given one be, and overlays the runtime ones (a FALLBACK one only when given)."""
    recorded = cls(lr=0.01, seed=3, device="cpu", compile=True).to_dict()
    recorded["data" if cls is TrainConfig else "base"] = "/old/place"
    given = cls(lr=0.5, resume=True, device="cuda")
    with pytest.raises(GerbilError) as e:
        resumed(given, recorded, "runs/x")
    msg = str(e.value)
    assert isinstance(e.value, OptionError) and "\n" not in msg
    assert msg.startswith("--resume continues runs/x as it was configured, but --lr 0.5 differs from the run's 0.01")
    assert advice in msg
    cont = resumed(cls(resume=True, device="cuda"), recorded, "runs/x")
    assert (cont.lr, cont.seed, cont.device, cont.compile, cont.resume) == (0.01, 3, "cuda", None, True)
    where = "data" if cls is TrainConfig else "base"
    assert getattr(cont, where) == "/old/place"  # not given: the recorded one
    moved = resumed(cls(resume=True, **{where: "/new/place"}), recorded, "runs/x")
    assert getattr(moved, where) == "/new/place"  # given: a moved input re-pointed


def test_help_is_grouped_by_the_dataclass_sections():
    def titles(verb):
        return [g.title for g in _parser(verb)._action_groups if g._group_actions and g.title not in
                ("options", "optional arguments", "positional arguments")]

    assert titles("train") == ["what is trained", "batch and context", "optimizer and learning-rate schedule",
                               "checkpoints and validation", "logging and runtime"]
    assert titles("finetune") == ["what is fine-tuned, on what", "how examples become tokens", "budget and batch",
                                  "optimizer and learning-rate schedule", "validation, best checkpoint, early stopping",
                                  "logging and runtime"]
    assert titles("plan") == ["what to plan", "custom model (instead of --size)", "planning from a scaling-law fit"]
    assert titles("fit") == ["fit", "CSV columns", "task scaling law (two steps: N, D -> task loss -> metric)"]
    assert titles("suite run")[0] == "the suite"


def _from_flags(verb: str, argv: list[str], cls):
    return config_from_args(build_parser().parse_args(verb.split() + argv), cls)


def test_fit_flags_yaml_and_python_agree():
    argv = ["a.csv", "runs/", "--out", "o", "--bootstrap", "40", "--form", "both", "--budgets", "1e18,1e19",
            "--no-plots", "--approach", "3,2", "--params-col", "N", "--workers", "2", "--ci", "90"]
    in_python = FitCommand(sources=["a.csv", "runs/"], out="o", bootstrap=40, form="both", budgets=[1e18, 1e19],
                           plots=False, approach=[2, 3], params_col="N", workers=2, ci=90.0)
    from_yaml = FitCommand.from_dict({"sources": ["a.csv", "runs/"], "out": "o", "bootstrap": 40, "form": "both",
                                      "budgets": "1e18,1e19", "plots": False, "approach": "3,2", "params_col": "N",
                                      "workers": 2, "ci": 90})
    assert _from_flags("fit", argv, FitCommand) == from_yaml == in_python
    o = in_python.fit_options()
    assert (o.forms, o.approaches, o.budgets, o.columns.params, o.plots) == (("chinchilla", "kaplan"), (2, 3),
                                                                             (1e18, 1e19), "N", False)
    assert FitCommand(sources=["x"], out="o").fit_options() == type(o)()  # the flags' defaults are the library's
    with pytest.raises(GerbilError, match="approach: expected auto or a list"):
        FitCommand.from_dict({"approach": "three"})


def test_plan_flags_yaml_and_python_agree():
    argv = ["--size", "6.7m", "--class", "E*", "--batch", "131k-262k", "--gpu", "T4", "--gpu", "H100", "--mfu",
            "30%", "--hours", "2", "--runs", "a", "b", "--loss", "3.5", "--fit", "f.json", "--seq-len", "1024"]
    in_python = PlanOptions(size="6.7m", cls="E*", batch="131k-262k", gpu=["T4", "H100"], mfu=0.3, hours=2.0,
                            runs=["a", "b"], target_loss=3.5, fit_file="f.json", seq_len=1024)
    from_yaml = PlanOptions.from_dict({"size": "6.7m", "class": "E*", "batch": "131k-262k", "gpu": ["T4", "H100"],
                                       "mfu": "30%", "hours": 2, "runs": ["a", "b"], "target_loss": 3.5,
                                       "fit_file": "f.json", "seq_len": 1024})
    assert _from_flags("plan", argv, PlanOptions) == from_yaml == in_python
    assert _from_flags("plan", ["--batch-tokens", "131k"], PlanOptions).batch == "131k"  # both spellings


def test_suite_run_flags_yaml_and_python_agree():
    argv = ["cpu-smoke", "--out", "d", "--device", "cpu", "--no-eval", "--retry-failed", "--poll", "0.5",
            "--worker", "w1"]
    in_python = SuiteRun(suite="cpu-smoke", out="d", device="cpu", evaluate=False, retry_failed=True, poll=0.5,
                         worker="w1")
    from_yaml = SuiteRun.from_dict({"suite": "cpu-smoke", "out": "d", "device": "cpu", "evaluate": False,
                                    "retry_failed": True, "poll": 0.5, "worker": "w1"})
    assert _from_flags("suite run", argv, SuiteRun) == from_yaml == in_python
    with pytest.raises(SystemExit):  # SUITE and --out are required
        build_parser().parse_args(["suite", "run", "cpu-smoke"])


def test_options_and_configs_are_torch_free():
    code = ("import sys; from gerbil.train import TrainConfig; import gerbil.options, gerbil.finetune.config, "
            "gerbil.plan_command, gerbil.fit.command, gerbil.suite.command; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
