"""One rule for every verb that writes a folder: refuse an existing one unless --resume or --fresh, and
--fresh (or --resume) only on a folder that holds this verb's own output."""

from pathlib import Path

import pytest

from mammolens.cli import main
from mammolens.engine.run_dir import MARK, claim_output, open_output, output_owner
from mammolens.utils.errors import ConfigError


def _user_folder(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "mine"
    folder.mkdir()
    note = folder / "notes.txt"
    note.write_text("a user's file")
    return folder, note


@pytest.mark.parametrize("verb", ["cv", "demo"])
def test_fresh_never_touches_a_folder_another_program_wrote(tmp_path: Path, capsys, verb: str) -> None:
    folder, note = _user_folder(tmp_path)
    args = ["cv", "demo", "--folds", "2"] if verb == "cv" else ["demo"]
    assert main([*args, "--out", str(folder), "--fresh"]) == 2
    err = capsys.readouterr().err.strip()
    assert "did not write" in err and str(folder) in err and "\n" not in err
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"] and note.read_text() == "a user's file"


def test_demo_refuses_its_own_earlier_run_without_resume_or_fresh(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    open_output(out, "train")
    (out / "run.json").write_text("{}")
    assert main(["demo", "--out", str(out)]) == 2
    assert "pass --resume to continue it, --fresh to replace it" in capsys.readouterr().err
    assert (out / "run.json").read_text() == "{}"


def test_evaluate_into_an_existing_folder_refuses_without_fresh(tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval"
    open_output(out, "evaluate")
    (out / "metrics.json").write_text("{}")
    assert main(["evaluate", str(tmp_path / "no-bundle"), "synthetic", "--out", str(out)]) == 2
    assert "pass --fresh to replace it" in capsys.readouterr().err
    assert (out / "metrics.json").read_text() == "{}"


def test_fresh_removes_only_what_the_verb_writes(tmp_path: Path) -> None:
    out = tmp_path / "cv"
    open_output(out, "cv")
    for name in ("cv.json", "predictions.csv", "predictions-exam.csv", "metrics.json"):
        (out / name).write_text("x")
    (out / "repeat0" / "fold0").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    claim_output(out, "cv", fresh=True, resumable=True)
    open_output(out, "cv", fresh=True)
    assert sorted(p.name for p in out.iterdir()) == [MARK, "notes.txt"]


def test_another_verbs_output_is_neither_continued_nor_replaced(tmp_path: Path) -> None:
    out = tmp_path / "run"
    open_output(out, "cv")
    assert output_owner(out) == "cv"
    for kwargs in ({"fresh": True}, {"resume": True}, {}):
        with pytest.raises(ConfigError, match="holds the output of `mammolens cv`, not of `mammolens evaluate`"):
            claim_output(out, "evaluate", resumable=True, **kwargs)
    with pytest.raises(ConfigError, match="choose one"):
        claim_output(out, "cv", resume=True, fresh=True, resumable=True)
    with pytest.raises(ConfigError, match="cannot continue"):
        claim_output(tmp_path / "run", "cv", resume=True)


def test_folders_written_before_the_mark_are_still_recognised(tmp_path: Path) -> None:
    out = tmp_path / "old"
    out.mkdir()
    (out / "cv.json").write_text("{}")
    (out / "metrics.json").write_text("{}")
    assert output_owner(out) == "cv"
    claim_output(out, "cv", resume=True, resumable=True)
