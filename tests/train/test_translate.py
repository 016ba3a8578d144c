"""fasttx-translate and Translator: a fasttx-train checkpoint on new text, round trip."""

import io
import os
import random
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fasttx.models import Seq2SeqTransformer
from fasttx.train import Trainer, TrainOptions
from fasttx.train.data import DataError
from fasttx.train.evaluate import score_translations, translate
from fasttx.train.tasks import TASKS
from fasttx.train.translate import Translator, main
from tests.train.conftest import QUICK

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_thread):
    """A quick copy-task run (checkpoint, final greedy validation and beam-2 test) and its
    test sources written one per line. Its 10 test sentences fit one decoding batch (for
    the trainer, which batches by source and reference length, and for fasttx-translate,
    which has only the sources), so both decode the very same tensors: with different
    batches a barely-trained model's output could differ (generate's default length
    follows the batch's longest source)."""
    out = tmp_path_factory.mktemp("translate")
    options = TrainOptions(**{**QUICK, "synthetic_size": 100, "max_tokens": 512,
                              "out": str(out / "run")}).resolved()
    with one_thread():
        trainer = Trainer(options, echo=lambda *args, **kwargs: None)
        summary = trainer.run()
    sources = [source for source, _ in trainer.data.test.pairs]
    assert len(sources) == 10 and summary.test.num_beams == 2
    inputs = out / "test.src"
    inputs.write_text("".join(source + "\n" for source in sources), encoding="utf-8")
    return trainer, summary, inputs


def _trainers_decodes(trainer, num_beams):
    """The token ids the trainer's evaluation decodes for the test split."""
    options = trainer.options
    return translate(trainer.model, trainer.data.test.corpus, options.max_tokens,
                     trainer.device, trainer.autocast, num_beams, options.length_penalty)


@pytest.mark.parametrize("beams", [[], ["--num-beams", "1"]], ids=["run's-beams", "greedy"])
def test_translations_are_the_trainers_own_test_decodes(run, beams, tmp_path, capsys):
    trainer, summary, inputs = run
    output = tmp_path / "test.hyp"
    assert main([str(trainer.checkpoint_path), str(inputs), "-o", str(output), *beams]) == 0
    lines = output.read_text(encoding="utf-8").splitlines()
    num_beams = 1 if beams else trainer.options.num_beams
    tokenizer = trainer.data.tokenizer
    assert [tokenizer.encode(line) for line in lines] == _trainers_decodes(trainer, num_beams)
    # and what the trainer scored: its final test evaluation (beam), or one greedy
    scores = summary.test if not beams else trainer.evaluate("test", 1)
    references = [target for _, target in trainer.data.test.pairs]
    assert score_translations(lines, references) == \
        {"bleu": scores.bleu, "chrf": scores.chrf, "exact_match": scores.exact_match}
    assert [hypothesis for _, hypothesis, _ in scores.examples] == lines[:3]
    assert "translating" in capsys.readouterr().err  # a file's progress bar


def test_the_console_module_in_a_subprocess_translates_stdin_alike(run, tmp_path):
    trainer, _, inputs = run
    output = tmp_path / "test.hyp"
    assert main([str(trainer.checkpoint_path), str(inputs), "-o", str(output),
                 "--no-progress"]) == 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    result = subprocess.run(  # the run's folder names its checkpoint.pt
        [sys.executable, "-m", "fasttx.train.translate", str(trainer.out)],
        input=inputs.read_bytes(), capture_output=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode("utf-8") == output.read_text(encoding="utf-8")
    assert b"translating" not in result.stderr  # no progress bar for standard input


def test_order_and_blank_lines_are_kept_across_batches(run, monkeypatch, capsys):
    """A model that echoes its source: each output line must be its own input line,
    whichever of the length-sorted batches decoded it, and blank lines stay blank."""
    trainer, _, _ = run

    def echo(self, src, max_new_tokens=None, num_beams=1, length_penalty=0.6):
        bos = torch.full((src.shape[0], 1), self.config.bos_id)
        return torch.cat([bos, src], dim=1)  # src ends with eos, then padding

    monkeypatch.setattr(Seq2SeqTransformer, "generate", echo)
    lines = ["a b c d e f", "", "j", "c d", "", "a b c d e f g h i j", "b", "e f g"]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(
        "\n".join(lines).encode("utf-8"))))
    assert main([str(trainer.checkpoint_path), "--max-tokens", "16", "--progress"]) == 0
    captured = capsys.readouterr()
    assert captured.out.split("\n") == [*lines, ""]
    assert "6/6" in captured.err  # the bar counts the sentences, not the blank lines


@pytest.mark.parametrize("args, message", [
    (["{d}/nope.pt"], "no checkpoint at {d}/nope.pt"),
    (["{d}/text.pt"], "cannot read checkpoint {d}/text.pt"),
    (["{d}/foreign.pt"], "{d}/foreign.pt is not a fasttx training checkpoint"),
    (["{ckpt}", "{d}/empty.txt"], "{d}/empty.txt: the file is empty"),
    (["{ckpt}", "{d}/blank.txt"], "{d}/blank.txt: no sentence to translate"),
    (["{ckpt}", "{d}/missing.txt"], "{d}/missing.txt: cannot read the file"),
    (["{ckpt}", "{d}/long.txt"],
     "{d}/long.txt: sentence 2 is 71 tokens long with eos, beyond the model's max_len=64"),
    (["{ckpt}", "{d}/blank.txt", "--num-beams", "14"],
     "--num-beams must be below the vocabulary size (14), got 14"),
    (["{ckpt}", "{d}/blank.txt", "--max-len", "64"],
     "--max-len must be below the model's max_len (64"),
], ids=["missing-checkpoint", "text-file", "foreign-checkpoint", "empty-input", "blank-input",
        "missing-input", "long-sentence", "beams>=vocab", "max-len>=model's"])
def test_bad_input_exits_2_naming_it(run, args, message, tmp_path, capsys):
    trainer, _, _ = run
    (tmp_path / "text.pt").write_text("not a checkpoint\n")
    torch.save({"model": {}}, tmp_path / "foreign.pt")
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "blank.txt").write_text("\n  \n")
    (tmp_path / "long.txt").write_text("a b\n" + " ".join(["a"] * 70) + "\n")
    names = {"d": tmp_path, "ckpt": trainer.checkpoint_path}
    assert main([arg.format(**names) for arg in args] + ["--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fasttx-translate: error: ") and "Traceback" not in err
    assert message.format(**names) in err


def test_bad_flags_exit_2_naming_the_flag(capsys):
    for argv, message in ((["ckpt", "--num-beams", "0"], "--num-beams/--beams: must be at "
                                                        "least 1, got 0"),
                          (["ckpt", "--device", "gpu"], "not a torch device"),
                          (["ckpt", "--max-tokens", "x"], "invalid int value: 'x'")):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_without_tqdm_the_bar_asks_for_the_extra_and_no_progress_works(run, monkeypatch,
                                                                         tmp_path, capsys):
    trainer, _, inputs = run
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import tqdm.auto fails
    assert main([str(trainer.checkpoint_path), str(inputs), "--num-beams", "1"]) == 2
    assert "pip install 'fasttx[train]' (or pass --no-progress)" in capsys.readouterr().err
    assert main([str(trainer.checkpoint_path), str(inputs), "--num-beams", "1",
                 "--no-progress"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 10


def test_translator_api_keeps_blanks_and_names_a_long_sentence(run):
    trainer, _, _ = run
    translator = Translator.from_checkpoint(trainer.checkpoint_path)
    assert translator.num_beams == 2 and translator.max_tokens == 512
    assert translator.tokenizer.to_json() == trainer.data.tokenizer.to_json()
    source = trainer.data.test.pairs[0][0]
    assert translator.translate(["", source, " "], num_beams=1) == \
        ["", translator.translate([source], num_beams=1)[0], ""]
    with pytest.raises(DataError, match=r"sentence 3 is 66 tokens .* \(and 1 more\)"):
        translator.translate(["a", "", " ".join(["b"] * 65), " ".join(["c"] * 80)])


def test_help_shows_defaults_and_exit_codes_and_the_script_is_declared(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--num-beams", "--beams", "--max-tokens", "--max-len", "--device", "-o",
                 "--length-penalty", "--precision", "--backend", "--no-progress"):
        assert flag in text
    assert "default the run's --num-beams" in text and "(default auto)" in text
    assert "2 bad arguments, checkpoint or input" in text and "130 interrupted" in text
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["fasttx-translate"] == "fasttx.train.translate:main"


def test_max_len_caps_each_translation(run, capsys):
    trainer, _, inputs = run
    assert main([str(trainer.checkpoint_path), str(inputs), "--max-len", "2", "--num-beams",
                 "1", "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 10 and all(len(line.split()) <= 2 for line in lines)
    uncapped = _trainers_decodes(trainer, 1)
    assert any(len(ids) > 2 for ids in uncapped)  # else the cap would change nothing
    assert [trainer.data.tokenizer.encode(line) for line in lines] == \
        [ids[:2] for ids in uncapped]


def test_a_text_file_run_translates_with_its_subword_tokenizer(tmp_path, capsys):
    """A run on parallel text files: its BPE tokenizer comes back from the checkpoint, and
    the test sources translate as the trainer decodes them (one batch for both)."""
    rng = random.Random(secrets.randbits(32))
    rows = [TASKS["numbers"].sample(rng) for _ in range(120)]
    for split, part in (("train", rows[:100]), ("test", rows[100:])):
        (tmp_path / f"{split}.src").write_text("".join(s + "\n" for s, _ in part))
        (tmp_path / f"{split}.tgt").write_text("".join(t + "\n" for _, t in part))
    files = {f"{split}_{side}": str(tmp_path / f"{split}.{side}")
             for split in ("train", "test") for side in ("src", "tgt")}
    options = TrainOptions(**{**QUICK, **files, "vocab_size": 60, "max_steps": 2,
                              "max_tokens": 4096, "out": str(tmp_path / "run")}).resolved()
    trainer = Trainer(options, echo=lambda *args, **kwargs: None)
    trainer.run(evaluate=False)
    translator = Translator.from_checkpoint(trainer.checkpoint_path)
    assert type(translator.tokenizer).__name__ == "SubwordTokenizer"
    assert translator.tokenizer.to_json() == trainer.data.tokenizer.to_json()
    assert main([str(trainer.out), str(tmp_path / "test.src"), "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [trainer.data.tokenizer.decode(ids)
                     for ids in _trainers_decodes(trainer, options.num_beams)]
