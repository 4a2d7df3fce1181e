"""`wattwise demo --task`: which task and how many epochs the command asks for, by device."""

from __future__ import annotations

import pytest

from wattwise.cli import main


@pytest.fixture
def asked(monkeypatch):
    """run_demo replaced by a recorder: what the command asked for, no training."""
    from wattwise.zoo import demo

    calls: list[dict] = []

    def record(**kwargs):
        calls.append(kwargs)
        for note in ("a note",):
            if kwargs.get("notice") is not None:
                kwargs["notice"](note)
        raise SystemExit(0)

    monkeypatch.setattr(demo, "run_demo", record)
    return calls


@pytest.mark.parametrize(
    ("cuda", "args", "task", "epochs"),
    [
        (False, ["--quick"], "digits", 10),
        (False, [], "digits", 40),
        (True, ["--quick"], "images", 15),
        (True, [], "images", 40),
        (False, ["--task", "images", "--quick"], "images", 6),  # the CPU's shrunk quick run
        (False, ["--task", "images"], "images", 40),
        (True, ["--task", "digits", "--quick"], "digits", 10),
        (True, ["--task", "images", "--epochs", "3"], "images", 3),
    ],
)
def test_task_and_epochs_by_device(tmp_path, monkeypatch, asked, cuda, args, task, epochs):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    with pytest.raises(SystemExit):
        main(["demo", "--ledger", str(tmp_path / "d.db"), "--out", str(tmp_path / "o"), *args])
    (call,) = asked
    assert (call["task"], call["epochs"]) == (task, epochs)
    assert call["quick"] == ("--quick" in args)


def test_notes_go_to_stderr_before_training(tmp_path, capsys, asked):
    with pytest.raises(SystemExit):
        main(["demo", "--task", "images", "--quick", "--ledger", str(tmp_path / "d.db")])
    assert "note: a note" in capsys.readouterr().err


def test_the_cpu_quick_image_run_is_shrunk_and_says_so():
    from wattwise.zoo.images import CPU_QUICK_SIZES, FULL_SIZES
    from wattwise.zoo.tasks import setup_task

    quick = setup_task("images", cuda=False, quick=True)
    assert quick.sizes == CPU_QUICK_SIZES and quick.precision is None
    assert quick.model_kwargs["baseline"]["width"] == 16
    assert quick.model_kwargs["adaptive"]["max_width"] == 32
    (note,) = quick.notes
    assert "shrunk to 4,000 train / 1,000 val / 1,000 test" in note and "50,000" in note
    gpu = setup_task("images", cuda=True, quick=True)
    assert gpu.sizes == FULL_SIZES and gpu.notes == () and gpu.precision == "bf16-mixed"
    assert gpu.model_kwargs["baseline"]["width"] == 32
    assert setup_task("images", cuda=False).sizes == FULL_SIZES  # not quick: the full set
