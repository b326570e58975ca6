"""What a resumed run may change and what it may not: one check in the loop, the same for the
`stratalm` command's --resume and for the Python API, for pretraining and fine-tuning alike."""
from __future__ import annotations

import json
import shutil

import pytest

from conftest import small_char_corpus
from stratalm.errors import OutputExistsError
from stratalm.loop import build_run_config, pretrain

TINY = {"preset": "tiny", "n_layers": 1, "d_model": 32, "n_heads": 2, "d_ff": 64, "max_seq_len": 32}


def run_config(data, out, **train):
    return build_run_config(None, {"data": str(data), "out": str(out), "model": TINY,
                                   "train": {"progress": False, "eval_every": 0, "eval_windows": 2, "batch_size": 4, **train}})


def step_of(folder):
    return json.loads((folder / "trainer_state.json").read_text())["step"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return small_char_corpus(tmp_path_factory.mktemp("resume"))


def test_the_python_api_refuses_a_resume_with_a_changed_batch_size_as_the_cli_does(data, tmp_path):
    out = tmp_path / "run"
    pretrain(run_config(data, out, max_steps=2))
    before = {name: (out / name).read_bytes() for name in ("model.safetensors", "run.yaml", "metrics.jsonl")}
    with pytest.raises(OutputExistsError) as refused:
        pretrain(run_config(data, out, max_steps=4, batch_size=8, lr=2e-3), resume=True)
    message = str(refused.value)
    assert "train.batch_size = 8 (saved: 4)" in message and "train.lr = 0.002 (saved: 0.001)" in message
    assert "max_steps" not in message and "--overwrite" in message  # may change / how to start again
    assert {name: (out / name).read_bytes() for name in before} == before  # refused before anything is written
    # What may change does: a longer run, its cadence, recomputed activations.
    pretrain(run_config(data, out, max_steps=3, log_every=1, activation_checkpointing=True), resume=True)
    assert step_of(out) == 3


def test_fine_tuning_may_change_on_resume_what_pretraining_may_and_is_refused_as_early(tmp_path):
    from stratalm.tasks.finetune import FinetuneConfig, finetune, finetune_loop
    from stratalm.loop.config import MAY_CHANGE_ON_RESUME
    from stratalm.tasks.finetune_config import LOOP_MAY_CHANGE
    from test_tasks_framework import make_base, write_sentiment

    assert "activation_checkpointing" in LOOP_MAY_CHANGE and set(LOOP_MAY_CHANGE) == set(MAY_CHANGE_ON_RESUME)
    train = write_sentiment(tmp_path / "train.tsv", 32, 1)
    base = make_base(tmp_path / "base", [train.read_text()], n_layers=1, d_model=32, n_heads=2, d_ff=64, max_seq_len=48)

    def config(steps, **loop):
        return FinetuneConfig(task="classification", model=str(base), train=str(train), out=str(tmp_path / "run"),
                              loop=finetune_loop(**{"lr": 1e-3, "batch_size": 16, "max_steps": steps, "progress": False, **loop}))

    finetune(config(1))
    finetune(config(2, activation_checkpointing=True, eval_windows=3), resume=True)
    assert step_of(tmp_path / "run" / "last") == 2
    # Refused before the data and model are read, as pretraining's: without them the refusal is the same.
    before = {path: path.read_bytes() for path in (tmp_path / "run").rglob("*") if path.is_file()}
    shutil.rmtree(base)
    train.write_bytes(b"\xff\xfe not a tsv file \x00")
    with pytest.raises(OutputExistsError, match=r"loop.batch_size = 8 \(saved: 16\)") as refused:
        finetune(config(3, batch_size=8), resume=True)
    assert "max_steps" not in str(refused.value) and "activation_checkpointing" not in str(refused.value)
    assert {path: path.read_bytes() for path in (tmp_path / "run").rglob("*") if path.is_file()} == before
