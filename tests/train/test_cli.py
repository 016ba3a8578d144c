"""The fasttx-train command: help, options, exit codes, errors and Ctrl-C."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from fasttx.train import checkpoint as ckpt
from fasttx.train.cli import EXIT_CODES, build_parser, main, options_from_args
from fasttx.train.options import TrainOptions

QUICK_ARGS = ["--synthetic-size", "200", "--max-tokens", "192", "--log-every", "1",
              "--eval-sentences", "4", "--num-beams", "1", "--no-progress"]


def test_help_explains_every_option_and_the_exit_codes(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--task", "--preset", "--backend", "--device", "--max-steps", "--out",
                 "--resume", "--seed", "--train-src", "--pack", "--accum-steps", "--fsdp",
                 "--compare-backends", "--num-beams", "--clip-norm", "--warmup"):
        assert flag in text
    assert "cipher,copy,numbers,reverse,sort" in text.replace(" ", "")
    assert "digits to English words" in text  # each task described
    assert "130 interrupted" in text and "3 stopped on a NaN" in text


def test_help_shows_the_default_of_every_flag(capsys):
    import dataclasses

    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert text.count("(default ") == len(dataclasses.fields(TrainOptions))
    for expected in (
            "--max-steps MAX_STEPS optimizer steps to train for (a resumed run continues up "
            "to it) (default per preset: tiny 1500, base 100000, big 300000)",
            "--warmup WARMUP linear warm-up steps before the inverse-square-root decay "
            "(default per preset: tiny 100, base 4000, big 4000)",
            "(default per preset: tiny 0.0, base 0.1, big 0.3)",  # --dropout
            "--device DEVICE torch device (default cuda when available, else cpu)",
            "--seed SEED seeds the weights, the dropout, the data order and the synthetic "
            "data (default 0)",
            "--fsdp, --no-fsdp", "(default False)",
            "--save-every SAVE_EVERY steps between checkpoints (default --eval-every)"):
        assert expected in text, expected
    for action in build_parser()._actions:
        assert action.dest == "help" or "(default " in action.help, action.option_strings


def test_console_script_and_module_entry_points_exist():
    from importlib.metadata import entry_points

    scripts = {entry.name: entry.value for entry in entry_points(group="console_scripts")}
    assert scripts.get("fasttx-train") == "fasttx.train.cli:main"
    result = subprocess.run([sys.executable, "-m", "fasttx.train", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "fasttx-train" in result.stdout


@pytest.mark.parametrize("argv, message", [
    (["--max-steps", "0"], "--max-steps must be at least 1"),
    (["--train-src", "a.txt"], "--train-src and --train-tgt go together"),
    (["--preset", "huge"], "invalid choice: 'huge'"),
    (["--task", "translate"], "invalid choice: 'translate'"),
    (["--lr-factor", "-1"], "--lr-factor must be positive"),
    (["--valid-src", "a", "--valid-tgt", "b"], "need --train-src"),
    (["--device", "gpu"], "--device must be a torch device"),
    (["--dropout", "1.5"], "--dropout must be in [0, 1)"),
])
def test_bad_options_exit_2_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_fsdp_outside_torchrun_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["--fsdp", "--max-steps", "1", "--out", str(tmp_path / "run"), *QUICK_ARGS])
    assert exit_info.value.code == 2
    assert "--fsdp shards across the processes of a torchrun launch" in \
        capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun sets: the options are fine
    assert options_from_args({"fsdp": True}).fsdp


def test_unset_flags_take_the_presets_defaults():
    tiny = options_from_args({})
    assert (tiny.task, tiny.preset, tiny.max_tokens, tiny.warmup, tiny.out) == \
        ("copy", "tiny", 2048, 100, "runs/copy-tiny")
    base = options_from_args({"preset": "base", "train_src": "a", "train_tgt": "b"})
    assert (base.max_tokens, base.warmup, base.lr_factor, base.out) == \
        (25_000, 4000, 1.0, "runs/data-base")
    assert set(vars(build_parser().parse_args([]))) == set()  # nothing set means defaults


def test_a_run_and_its_resume_exit_0(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["--task", "sort", "--max-steps", "2", "--out", out, *QUICK_ARGS]) == 0
    assert "finished: step 2/2" in capsys.readouterr().out
    # --resume takes the checkpoint's options: only --max-steps is given again
    assert main(["--resume", "--out", out, "--max-steps", "4", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "resumed from" in printed and "finished: step 4/4" in printed
    state = ckpt.load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["step"] == 4 and state["options"]["task"] == "sort"


def test_resume_at_or_past_max_steps_has_nothing_to_do(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["--task", "sort", "--max-steps", "3", "--out", out, *QUICK_ARGS]) == 0
    capsys.readouterr()
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    for max_steps in ("2", "3"):
        assert main(["--resume", "--out", out, "--max-steps", max_steps]) == 0
        (line,) = capsys.readouterr().out.splitlines()
        assert line.startswith("nothing to do") and "at step 3" in line, line
        assert f"--max-steps is {max_steps}" in line and "nan" not in line
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before


def test_resume_errors_exit_2(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["--resume", "--out", out]) == EXIT_CODES["error"]
    assert "no checkpoint at" in capsys.readouterr().err
    assert main(["--max-steps", "1", "--out", out, *QUICK_ARGS]) == 0
    assert main(["--resume", "--out", out, "--seed", "5"]) == EXIT_CODES["error"]
    assert "--seed 0 -> 5" in capsys.readouterr().err


@pytest.mark.parametrize("src, tgt, message", [
    ("", "x\n", r"src\.txt: the file is empty"),
    ("a\nb\n", "x\n", r"src\.txt has 2 lines but .*tgt\.txt has 1"),
    ("a\n\xff\n", "x\ny\n", r"src\.txt, line 2: not valid UTF-8"),
    ("a\n\nc\n", "x\ny\nz\n", r"src\.txt, line 2: the line is empty"),
])
def test_bad_data_files_exit_2_naming_file_and_line(src, tgt, message, tmp_path, capsys):
    (tmp_path / "src.txt").write_bytes(src.encode("latin-1"))
    (tmp_path / "tgt.txt").write_bytes(tgt.encode("latin-1"))
    code = main(["--train-src", str(tmp_path / "src.txt"), "--train-tgt",
                 str(tmp_path / "tgt.txt"), "--out", str(tmp_path / "run"), *QUICK_ARGS])
    assert code == EXIT_CODES["error"]
    assert re.search(message, capsys.readouterr().err), message


def test_an_out_that_is_a_file_exits_2(tmp_path, capsys):
    (tmp_path / "taken").write_text("not a folder")
    assert main(["--out", str(tmp_path / "taken"), *QUICK_ARGS]) == EXIT_CODES["error"]
    assert "taken" in capsys.readouterr().err


def test_missing_data_file_exits_2(tmp_path, capsys):
    code = main(["--train-src", str(tmp_path / "nope.de"), "--train-tgt",
                 str(tmp_path / "nope.en"), "--out", str(tmp_path / "run")])
    assert code == EXIT_CODES["error"] and "nope.de" in capsys.readouterr().err


@pytest.mark.parametrize("module, argv", [
    ("tqdm", []), ("sacrebleu", []),
    ("tokenizers", ["--train-src", "a.de", "--train-tgt", "a.en"]),  # the subword tokenizer
])
def test_without_the_train_extra_it_says_what_to_install(module, argv, tmp_path, monkeypatch,
                                                         capsys):
    monkeypatch.setitem(sys.modules, module, None)  # `import <module>` raises ImportError
    out = tmp_path / "run"
    assert main([*argv, "--out", str(out), *QUICK_ARGS]) == EXIT_CODES["error"]
    (line,) = capsys.readouterr().err.splitlines()
    assert f"no module {module}" in line and "pip install 'fasttx[train]'" in line
    assert not out.exists()


def test_a_failed_run_removes_the_out_folders_it_created_and_only_those(tmp_path, capsys):
    missing_data = ["--train-src", str(tmp_path / "nope.de"), "--train-tgt",
                    str(tmp_path / "nope.en")]
    new = tmp_path / "new" / "deeper" / "run"
    assert main([*missing_data, "--out", str(new), *QUICK_ARGS]) == EXIT_CODES["error"]
    assert "nope.de" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    assert main([*missing_data, "--out", str(existing / "run"), *QUICK_ARGS]) == \
        EXIT_CODES["error"]
    assert main([*missing_data, "--out", str(existing), *QUICK_ARGS]) == EXIT_CODES["error"]
    assert existing.is_dir() and list(existing.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="the cuda backend may run here")
def test_a_run_failing_after_writing_its_tokenizer_removes_its_new_out(tmp_path, capsys):
    """The first step fails (no CUDA kernels here): tokenizer.json alone was written."""
    out = tmp_path / "run"
    code = main(["--backend", "cuda", "--device", "cpu", "--out", str(out), *QUICK_ARGS])
    assert code == EXIT_CODES["error"] and "cuda" in capsys.readouterr().err
    assert not out.exists()


def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path):
    """A real SIGINT to a real run: it finishes its step, saves, and --resume goes on."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "fasttx.train", "--max-steps", "100000", "--out",
               str(out), *QUICK_ARGS]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env)
    deadline = time.monotonic() + 120
    while not (out / "metrics.jsonl").exists() or (out / "metrics.jsonl").stat().st_size == 0:
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == EXIT_CODES["interrupted"], output
    assert "SIGINT: stopping after step" in output
    step = ckpt.load_checkpoint(out / "checkpoint.pt")["step"]
    assert step >= 1 and f"interrupted at step {step}" in output
    assert main(["--resume", "--out", str(out), "--max-steps", str(step + 1),
                 "--no-progress"]) == 0


def test_options_are_one_dataclass_with_a_help_text_per_field():
    import dataclasses

    for spec in dataclasses.fields(TrainOptions):
        assert spec.metadata.get("help"), spec.name
