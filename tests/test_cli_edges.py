"""The command line's rough edges: --version, "did you mean", usage on a flag typo, overrides
anywhere on the line, help that shows the preset's own values, typed run.yaml, MLM accuracy on the
console, and the plot's learning rate and resume marks."""
from __future__ import annotations

import json

import pytest
import yaml

from conftest import run_cli
from stratalm.errors import ConfigError
from stratalm.version import __version__

TINY_FLAGS = ["model.n_layers=1", "model.d_model=32", "model.n_heads=2", "model.d_ff=64", "model.max_seq_len=32",
              "train.batch_size=4", "train.progress=false"]


def test_version_prints_the_package_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"stratalm {__version__}"


@pytest.mark.parametrize("argv,usage,suggestion", [
    (["pretrain", "--max-stpes", "3"], "usage: stratalm pretrain", "did you mean --max-steps?"),
    (["finetune", "--lrr", "1e-4"], "usage: stratalm finetune", "did you mean --lr?"),
    (["pretrian", "--data", "x"], "usage: stratalm [-h]", "did you mean pretrain?"),
])
def test_a_typo_shows_the_subcommands_usage_and_the_closest_name(argv, usage, suggestion):
    result = run_cli(*argv)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(usage), result.stderr
    assert suggestion in result.stderr.splitlines()[-1], result.stderr


def test_unknown_names_suggest_the_closest_one():
    from stratalm.families import preset
    from stratalm.loop import build_run_config
    from stratalm.objectives import get_objective
    from stratalm.tasks import task_class

    cases = [(lambda: preset("gpt-2"), "did you mean gpt2?"), (lambda: get_objective("mlmm"), "did you mean mlm?"),
             (lambda: task_class("clasification"), "did you mean classification?"),
             (lambda: build_run_config(None, {"model": {"n_layer": 2}}), "did you mean model.n_layers?"),
             (lambda: build_run_config(None, {"train": {"max_step": 2}}), "did you mean train.max_steps?")]
    for make, suggestion in cases:
        with pytest.raises(ConfigError, match=suggestion.replace("?", r"\?")):
            make()


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_overrides_may_come_before_between_and_after_flags(command):
    from stratalm.cli import build_parser
    from stratalm.cli.parsing import parse_command_line

    parser = build_parser()
    argv = [command, "a.x=1", "--out", "o", "b.y=2", "c.z=3", "--resume", "d.w=4", "--overwrite", "e.v=5"]
    args = parse_command_line(parser, parser.commands, argv)
    assert args.overrides == ["a.x=1", "b.y=2", "c.z=3", "d.w=4", "e.v=5"]  # in order: the last one wins
    assert args.out == "o" and args.resume and args.overwrite


def test_pretrain_help_shows_the_values_of_the_preset_on_the_line():
    default = run_cli("pretrain", "--help")
    assert default.returncode == 0
    assert "model.preset = 'tiny'" in default.stdout
    assert "model.n_layers = 4 " in default.stdout and "model.d_model = 128 " in default.stdout  # tiny's, not 12 x 768
    bert = run_cli("pretrain", "--help", "--model", "bert")
    assert "model.preset = 'bert'" in bert.stdout and "model.stack = 'encoder'" in bert.stdout
    assert "model.d_model = 256 " in bert.stdout and "model.norm_position = 'post'" in bert.stdout


def test_an_mlm_run_shows_masked_accuracy_and_saves_typed_overrides(tmp_path, char_data):
    out = tmp_path / "mlm"
    # The overrides sit before, between and after the flags.
    result = run_cli("pretrain", "model.n_layers=1", "--data", char_data, "--out", out, *TINY_FLAGS[1:4], "--model",
                     "bert", "--objective", "mlm", "--max-steps", "4", *TINY_FLAGS[4:], "train.eval_windows=16")
    assert result.returncode == 0, result.stderr
    assert "masked_accuracy" in result.stdout.splitlines()[-1], result.stdout
    saved = yaml.safe_load((out / "run.yaml").read_text())
    assert saved["model"] == {"n_layers": 1, "d_model": 32, "n_heads": 2, "d_ff": 64, "max_seq_len": 32, "preset": "bert"}


def test_plot_draws_the_learning_rate_and_marks_resumes():
    pytest.importorskip("matplotlib")
    from stratalm.plot import draw_curves

    records = [{"step": s, "loss": 3.0 - s / 100, "lr": 1e-3 * (1 - s / 100)} for s in range(10, 101, 10)]
    records.insert(5, {"step": 50, "event": "resume"})
    records.append({"step": 100, "val_loss": 2.5, "val_masked_accuracy": 0.3})
    fig = draw_curves(records)
    panels = {ax.get_ylabel(): ax for ax in fig.axes if ax.axison}
    rate = panels["learning rate"]
    assert [list(line.get_ydata()) for line in rate.lines][0] == [r["lr"] for r in records if "lr" in r]
    for ax in panels.values():  # every panel marks the resume at step 50
        assert any(list(line.get_xdata()) == [50, 50] for line in ax.lines), ax.get_ylabel()


def test_prepare_accepts_val_share_and_its_old_name(tmp_path):
    for i in range(20):
        (tmp_path / "texts").mkdir(exist_ok=True)
        (tmp_path / "texts" / f"{i:02d}.txt").write_text(f"document {i} " * 40 + "\n")
    for flag in ("--val-share", "--val-fraction"):
        result = run_cli("prepare", tmp_path / "texts", "--out", tmp_path / flag, "--tokenizer", "char", "--quiet",
                         flag, "0.2", "--seed", "3")
        assert result.returncode == 0, result.stderr
        assert "4 of 20 documents, drawn with seed 3" in result.stdout, result.stdout
        manifest = json.loads((tmp_path / flag / "manifest.json").read_text())
        assert manifest["validation"] == {"by": "documents", "share": 0.2, "seed": 3, "documents": 4}


def test_every_setting_is_checked_where_it_is_read_whichever_way_it_came(tmp_path):
    from stratalm.loop import build_run_config
    from stratalm.tasks.finetune_config import build_finetune_config

    (tmp_path / "run.yaml").write_text("train:\n  lr: -0.1\n")
    refused = [(lambda: build_run_config(str(tmp_path / "run.yaml"), {}), "'train.lr' must be above 0; got -0.1"),
               (lambda: build_run_config(None, {"train": {"beta1": "1"}}), "'train.beta1' must be in [0, 1)"),
               (lambda: build_run_config(None, {"mlm": {"rate": "0"}}), "'mlm.rate' must be in (0, 1]"),
               (lambda: build_run_config(None, {"train": {"batch_size": True}}), "'train.batch_size' expects int"),
               (lambda: build_run_config(None, {"train": {"lr": {"peak": 1}}}), "'train.lr' takes a value"),
               (lambda: build_finetune_config(None, {"loop": {"eval_batch_size": "0"}}), "'loop.eval_batch_size'"),
               (lambda: build_finetune_config(None, {"layer_decay": "1.5"}), "'layer_decay' must be in (0, 1]")]
    for make, message in refused:
        with pytest.raises(ConfigError) as caught:
            make()
        assert message in str(caught.value), str(caught.value)
    # The edges of each range are values, not errors.
    run = build_run_config(None, {"train": {"beta1": "0", "grad_clip": "0", "warmup_steps": "0", "device": "cuda:1"}})
    assert (run.train.beta1, run.train.grad_clip, run.train.device) == (0.0, 0.0, "cuda:1")
    assert build_finetune_config(None, {"layer_decay": "1", "lora_dropout": "0", "loop": {"max_steps": "0"}}).layer_decay == 1.0


def test_what_a_folder_holds_decides_whether_a_run_may_write_there(tmp_path, char_data):
    from stratalm.config_fields import check_output_folder, folder_kind
    from stratalm.errors import OutputExistsError

    (tmp_path / "pre").mkdir()
    (tmp_path / "pre" / "run.yaml").write_text("objective: clm\n")
    (tmp_path / "fine").mkdir()
    (tmp_path / "fine" / "run.yaml").write_text("task: classification\n")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.txt").write_text("mine")
    kinds = {name: folder_kind(str(tmp_path / name)) for name in ("pre", "fine", "model", "notes", "absent")}
    assert kinds == {"pre": "pretraining run", "fine": "fine-tuning run", "model": "model folder", "notes": None,
                     "absent": None}
    assert folder_kind(str(char_data)) == "prepared data folder"
    check_output_folder(str(tmp_path / "pre"), "pretraining run")
    check_output_folder(str(tmp_path / "notes"), "fine-tuning run")  # others' files: --overwrite clears only a run's
    for name, kind in [("pre", "fine-tuning run"), ("fine", "pretraining run"), ("model", "pretraining run")]:
        with pytest.raises(OutputExistsError, match=f"holds a {kinds[name]}, not a {kind}"):
            check_output_folder(str(tmp_path / name), kind)
