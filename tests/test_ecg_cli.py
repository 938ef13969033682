"""`ecgkern train/evaluate/info/bench` end to end on tiny configs, and resuming after interruption."""
import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from ecgkern import cli
from ecgkern.ecg import train as train_module
from ecgkern.ecg.train import TrainConfig, prepare_data, train

TINY = ["--limit", "64", "--epochs", "2", "--hidden-size", "8", "--batch-size", "16", "--no-progress"]
OUTPUTS = ("model.pt", "checkpoint.pt", "metrics.json", "loss.png", "confusion.png", "roc.png", "early.png", "examples.png")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core box they oversubscribe."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("extra", [[], ["--task", "multiclass", "--split", "ucr", "--class-weights", "--step-loss", "0.5"]],
                         ids=["binary-pooled", "multiclass-ucr"])
def test_train_writes_every_output_and_evaluate_reproduces_it(tmp_path, capsys, extra):
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--out", str(out), *extra]) == 0
    for name in OUTPUTS:
        assert (out / name).stat().st_size > 0, name
    m = json.loads((out / "metrics.json").read_text())
    assert len(m["history"]["train_loss"]) == len(m["history"]["val_loss"]) == 2
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "confusion_matrix", "report"):
        assert key in m["test"]
    assert [e["fraction"] for e in m["early"]] == [round(k / 20, 2) for k in range(1, 21)]
    assert m["timing"]["epochs"] == 2 and m["timing"]["train_seconds"] > 0
    assert m["config"]["task"] == ("multiclass" if extra else "binary")
    assert "epoch 002/2" in capsys.readouterr().out
    assert cli.main(["evaluate", str(out), "--json", str(tmp_path / "eval.json")]) == 0
    again = json.loads((tmp_path / "eval.json").read_text())
    assert again["test"] == m["test"] and again["early"] == m["early"]


def test_train_refuses_to_overwrite_a_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    assert cli.main(["train", *TINY, "--out", str(out)]) == 2
    assert "already holds a run" in capsys.readouterr().err


@pytest.mark.parametrize("argv, word", [
    (["train", "--task", "regression"], "regression"),
    (["train", "--split", "kfold"], "kfold"),
    (["train", "--backend", "fortran"], "fortran"),
])
def test_unknown_choices_are_rejected_by_name(argv, word, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2 and word in capsys.readouterr().err


@pytest.mark.parametrize("argv, word", [
    (["train", *TINY, "--data-source", "/no/such/folder"], "/no/such/folder"),
    (["train", *TINY, "--epochs", "0"], "epochs"),
    (["train", *TINY, "--bidirectional", "--step-loss", "0.5"], "unidirectional"),
    (["train", "--resume"], "--out"),
    (["evaluate", "/no/such/model.pt"], "does not exist"),
])
def test_bad_input_is_a_clear_error(argv, word, capsys, tmp_path):
    argv = [a if a != "OUT" else str(tmp_path) for a in argv]
    if argv[0] == "train" and "--out" not in argv and "--resume" not in argv:
        argv += ["--out", str(tmp_path / "run")]
    assert cli.main(argv) == 2
    assert word in capsys.readouterr().err


def test_evaluate_rejects_a_corrupt_checkpoint(tmp_path, capsys):
    (tmp_path / "model.pt").write_bytes(b"\x00garbage")
    assert cli.main(["evaluate", str(tmp_path)]) == 2
    assert "corrupt, truncated" in capsys.readouterr().err


def test_unavailable_backend_is_named(tmp_path, capsys):
    from ecgkern import available_backends

    missing = [n for n, s in available_backends("cpu").items() if not s.available]
    if not missing:
        pytest.skip("every backend can run here")
    assert cli.main(["train", *TINY, "--backend", missing[0], "--out", str(tmp_path / "r")]) == 2
    assert missing[0] in capsys.readouterr().err


def test_info(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert torch.__version__ in out and "reference" in out and "threads" in out
    assert "C++ kernels built for" in out and "bf16 recurrent GEMMs" in out
    from ecgkern.backends import cpp
    limit = cpp.FUSED_INPUT_MAX[torch.bfloat16]
    assert "input projection inside the kernels up to" in out and f"{limit} input features (bfloat16/float16)" in out


def test_bench_hands_over_its_arguments(monkeypatch):
    import types

    seen = {}
    fake = types.ModuleType("ecgkern.bench")
    fake.main = lambda argv: seen.setdefault("argv", argv) and 0
    monkeypatch.setitem(sys.modules, "ecgkern.bench", fake)
    import ecgkern
    monkeypatch.setattr(ecgkern, "bench", fake, raising=False)
    assert cli.main(["bench", "--quick", "--task", "x"]) == 0
    assert seen["argv"] == ["--quick", "--task", "x"]


# ---- nothing lost when interrupted ----------------------------------------------------------

# dropout and augmentation make the run depend on both RNG streams, so a resume must restore them.
RESUME_CFG = dict(limit=48, epochs=3, hidden_size=8, batch_size=16, dropout=0.2, augment=True,
                  lr_schedule="cosine", backend="reference", seed=3)


def _quiet(*_):
    pass


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    return train(TrainConfig(**RESUME_CFG), out, log=_quiet, progress=False), out


def _assert_same_run(got, want):
    got_dir, want_dir = got[1], want[1]
    g, w = got[0], want[0]
    assert g["test"] == w["test"] and g["early"] == w["early"] and g["best_epoch"] == w["best_epoch"]
    for key in ("train_loss", "val_loss", "val_accuracy"):
        assert g["history"][key] == w["history"][key]
    a = torch.load(got_dir / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(want_dir / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in b)


class Crash(Exception):
    pass


def _crash_at_batch(monkeypatch, n: int, exc: type[BaseException] = Crash) -> None:
    """The n-th training batch (counting from 1 over the whole run) raises ``exc`` before its step."""
    calls = [0]
    real_loss = train_module._loss

    def loss(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            raise exc
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train_module, "_loss", loss)


def test_resume_after_a_crash_mid_epoch(tmp_path, uninterrupted, monkeypatch):
    _crash_at_batch(monkeypatch, _batches_per_epoch(**RESUME_CFG) + 2)  # the second batch of epoch 2
    with pytest.raises(Crash):
        train(TrainConfig(**RESUME_CFG), tmp_path, log=_quiet, progress=False)
    monkeypatch.undo()
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert not (tmp_path / "metrics.json").exists()
    resumed = train(TrainConfig(**RESUME_CFG), tmp_path, resume=True, log=_quiet, progress=False)
    _assert_same_run((resumed, tmp_path), uninterrupted)


def test_resume_after_sigint_from_the_cli(tmp_path, uninterrupted):
    cfg = RESUME_CFG
    argv = [sys.executable, "-m", "ecgkern", "train", "--out", str(tmp_path), "--no-progress", "--threads", str(torch.get_num_threads()),
            "--limit", str(cfg["limit"]), "--epochs", str(cfg["epochs"]), "--hidden-size", str(cfg["hidden_size"]),
            "--batch-size", str(cfg["batch_size"]), "--dropout", str(cfg["dropout"]), "--augment",
            "--lr-schedule", cfg["lr_schedule"], "--backend", cfg["backend"], "--seed", str(cfg["seed"])]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 130:  # interrupted (it may, rarely, have finished first)
        assert "--resume" in err
        assert not (tmp_path / "metrics.json").exists()
    assert cli.main(["train", "--out", str(tmp_path), "--resume", "--no-progress"]) == 0
    resumed = json.loads((tmp_path / "metrics.json").read_text())
    _assert_same_run((resumed, tmp_path), uninterrupted)


# ---- what a user sees around a run ----------------------------------------------------------

def _batches_per_epoch(**config) -> int:
    cfg = TrainConfig(**config)
    return -(-len(prepare_data(cfg).y_train) // cfg.batch_size)


def test_ctrl_c_before_the_first_epoch_says_nothing_was_saved(tmp_path, capsys, monkeypatch):
    _crash_at_batch(monkeypatch, 2, KeyboardInterrupt)
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "nothing was saved" in err and "is saved" not in err
    assert not out.exists()  # the empty folder this command made is gone, so the next run may use it
    monkeypatch.undo()
    assert cli.main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 0


def test_ctrl_c_after_an_epoch_names_the_run_folder_and_resume_continues(tmp_path, capsys, monkeypatch):
    _crash_at_batch(monkeypatch, _batches_per_epoch(limit=64, batch_size=16) + 1, KeyboardInterrupt)
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert f"saved in {out}" in err and "--resume" in err
    monkeypatch.undo()
    assert cli.main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert json.loads((out / "metrics.json").read_text())["timing"]["epochs"] == 2


def test_resume_with_changed_flags_is_an_error_naming_them(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    (out / "metrics.json").unlink()
    assert cli.main(["train", "--out", str(out), "--resume", "--epochs", "25", "--lr", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "--epochs 25 (the run has 1)" in err and "--lr 0.5 (the run has 0.001)" in err
    # repeating the run's own flags is not a change
    assert cli.main(["train", "--out", str(out), "--resume", "--epochs", "1", "--hidden-size", "8", "--no-progress"]) == 0


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 20)" in text and "(default: 0.001)" in text and "(default: binary)" in text


def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path):
    argv = [sys.executable, "-m", "ecgkern", "train", "--limit", "64", "--epochs", "1", "--hidden-size", "8",
            "--batch-size", "16", "--backend", "reference", "--threads", "1", "--out", str(tmp_path / "run")]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and "\r" not in proc.stdout
    assert "backend reference" in proc.stdout  # the run says which backend it trains on


def test_python_dash_m_ecgkern_is_the_same_command_as_the_console_script():
    proc = subprocess.run([sys.executable, "-m", "ecgkern", "bench", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: ecgkern bench")
