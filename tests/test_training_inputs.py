"""`facekit train` on bad input: one `error:` line and exit 2, never a traceback, an exit 0 on nonsense, or a
checkpoint or released weights overwritten with NaN."""

from __future__ import annotations

import re
import shutil
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from facekit import FacekitWarning
from facekit.cli import main
from facekit.training.data import load_crops, load_teacher
from facekit.training.train import TrainConfig, train

TINY = ["--width", "0.0625", "--blocks", "1,1,1", "--embedding-size", "16", "--batch-size", "4", "--epochs", "1",
        "--device", "cpu"]


def _crop_folder(root: Path, image: np.ndarray, people: int = 4, per_person: int = 4) -> list[Path]:
    """Identities of 112x112 PNG crops cut at random from a real photo."""
    rng = np.random.default_rng(0)
    crops = []
    for person in range(people):
        (root / f"person{person}").mkdir(parents=True)
        for number in range(per_person):
            y, x = rng.integers(0, 100, 2)
            crop = cv2.resize(image[y:y + 400, x:x + 400], (112, 112), interpolation=cv2.INTER_AREA)
            crops.append(root / f"person{person}" / f"{number}.png")
            cv2.imwrite(str(crops[-1]), crop)
    return crops


def _zip_pool(root: Path, image: np.ndarray) -> None:
    """The same crops as zip shard + manifest.tsv, the layout of the shared training pool."""
    crops = _crop_folder(root.parent / f"{root.name}-crops", image)
    root.mkdir()
    with zipfile.ZipFile(root / "shard0.zip", "w") as shard:
        for crop in crops:
            shard.write(crop, f"{crop.parent.name}/{crop.name}")
    (root / "manifest.tsv").write_text("shard\tmember\tidentity\n" + "".join(
        f"shard0.zip\t{crop.parent.name}/{crop.name}\t{crop.parent.name}\n" for crop in crops))


def _train(capsys, data: Path, *options: str) -> tuple[int, str]:
    """Exit status and stderr of `facekit train DATA` on a tiny model."""
    code = main(["train", str(data), "--output", str(data.parent / "run"), *TINY, *options])
    return code, capsys.readouterr().err


def _one_error(err: str) -> str:
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def _append_row(pool: Path, row: str) -> None:
    with open(pool / "manifest.tsv", "a") as manifest:
        manifest.write(row + "\n")


def _truncate_shard(pool: Path) -> None:
    shard = pool / "shard0.zip"
    shard.write_bytes(shard.read_bytes()[:3000])


def _drop_identity_column(pool: Path) -> None:
    manifest = pool / "manifest.tsv"
    manifest.write_text("".join("\t".join(line.split("\t")[:2]) + "\n" for line in manifest.read_text().splitlines()))


def _shard_outside(pool: Path) -> None:
    """A real zip beside the pool: read, it would train as if it belonged to it."""
    shutil.copy(pool / "shard0.zip", pool.parent / "elsewhere.zip")
    for number in range(2):
        _append_row(pool, f"../elsewhere.zip\tperson0/{number}.png\tvisitor")


def _member_read_as_a_path(pool: Path) -> None:
    """A row without a shard: read as a crop folder's row, its member would be any file on the machine."""
    for number in range(2):
        _append_row(pool, f"\t{pool.parent / 'pool-crops' / 'person0' / f'{number}.png'}\tvisitor")


@pytest.mark.parametrize("damage, message", [
    (_truncate_shard, "corrupt or truncated zip shard: .*shard0.zip"),
    (_drop_identity_column, "manifest.tsv has no identity column"),
    (lambda pool: _append_row(pool, "shard0.zip\tperson0/absent.png\tperson0"),
     "manifest.tsv names person0/absent.png, which .*shard0.zip does not hold"),
    (lambda pool: (pool / "manifest.tsv").write_bytes(bytes(range(128, 256)) * 4),
     "manifest.tsv is not a tab-separated UTF-8 manifest"),
    (lambda pool: _append_row(pool, "/etc/passwd\tx\tperson0"), "shard /etc/passwd is outside"),
    (_shard_outside, "shard ../elsewhere.zip is outside"),
    (_member_read_as_a_path, "line 18: a row needs a shard, a member and an identity"),
    (lambda pool: _append_row(pool, "train-077.zip\tperson0/0.png\tperson0"),  # was a bare "[Errno 2] No such file"
     r"manifest.tsv names shard train-077.zip, which is not in .*pool$"),
], ids=["truncated-shard", "no-identity-column", "member-missing", "binary-manifest", "absolute-shard",
        "shard-outside", "empty-shard", "shard-missing"])
def test_a_damaged_or_foreign_pool_is_one_line_error(tmp_path, capsys, astronaut_bgr, damage, message):
    _zip_pool(tmp_path / "pool", astronaut_bgr)
    damage(tmp_path / "pool")
    code, err = _train(capsys, tmp_path / "pool")
    assert code == 2 and re.search(message, _one_error(err))
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_an_empty_crop_is_left_out_as_one_that_does_not_decode(tmp_path, astronaut_bgr):
    crops = _crop_folder(tmp_path / "crops", astronaut_bgr)
    crops[0].write_bytes(b"")
    loaded = load_crops(tmp_path / "crops")
    assert (loaded.undecodable, len(loaded.images)) == (1, 15)


def test_a_crop_over_the_pixel_limit_is_left_out_unread(tmp_path, astronaut_bgr, capsys):
    """facekit's reader refuses images over 64 megapixels from their header; a small file can claim 72."""
    crops = _crop_folder(tmp_path / "crops", astronaut_bgr)
    Image.new("1", (8500, 8500)).save(crops[0])
    assert crops[0].stat().st_size < 100_000
    loaded = load_crops(tmp_path / "crops")
    assert (loaded.undecodable, len(loaded.images)) == (1, 15)
    code, err = _train(capsys, tmp_path / "crops")
    assert code == 0 and "warning: left out 1 crops under" in err


def _text_file(path: Path) -> str:
    path.write_text("hello, this is text\n")  # torch's unpickler: KeyError: 101, the "e" read as a memo index
    return str(path)


def _tensor_file(path: Path) -> str:
    torch.save(torch.ones(3), path)
    return str(path)


USAGE_ERRORS = [
    (["--device", "bogus"], "--device takes cpu, cuda or cuda:N, not bogus"),
    (["--eval-every", "0"], "--eval-every must be 1 or more, not 0"),
    (["--embedding-size", "0"], "--embedding-size must be 1 or more, not 0"),
    (["--blocks", "a,b,c"], "--blocks takes three counts, e.g. 5,10,5, not a,b,c"),
    (["--blocks", "1,-1,1"], "--blocks takes three counts of 0 or more"),
    (["--width", "nan"], "--width must be above 0 and finite, not nan"),
    (["--width", "0"], "--width must be above 0, not 0.0"),
    (["--width=-1"], "--width must be above 0, not -1.0"),
    (["--epochs", "0"], "--epochs must be above 0, not 0.0"),
    (["--epochs=-1"], "--epochs must be above 0, not -1.0"),
    (["--lr", "nan"], "--lr must be 0 or more and finite, not nan"),
    (["--limit-classes", "0"], "--limit-classes must be 1 or more, not 0"),
    (["--arcface-weight", "0"], "no loss to train"),
]


@pytest.mark.parametrize("options, message", USAGE_ERRORS, ids=[" ".join(options) for options, _ in USAGE_ERRORS])
def test_a_nonsensical_option_is_a_usage_error_before_anything_is_written(tmp_path, capsys, astronaut_bgr,
                                                                           options, message):
    _crop_folder(tmp_path / "crops", astronaut_bgr)
    code, err = _train(capsys, tmp_path / "crops", *options)
    assert code == 2 and message in _one_error(err)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("options, message", [
    (lambda tmp: ["--init-from", _text_file(tmp / "text.jpg")], "cannot read checkpoint .*text.jpg"),
    (lambda tmp: ["--init-from", _tensor_file(tmp / "tensor.pt")], "tensor.pt is not a training checkpoint"),
    (lambda tmp: ["--teacher", _text_file(tmp / "text.jpg"), "--distill-weight", "1"],
     "text.jpg is not a teacher table .npy"),
], ids=["init-from-text", "init-from-a-tensor", "teacher-text"])
def test_a_file_of_another_kind_is_named_in_one_line(tmp_path, capsys, astronaut_bgr, options, message):
    _crop_folder(tmp_path / "crops", astronaut_bgr)
    code, err = _train(capsys, tmp_path / "crops", *options(tmp_path))
    assert code == 2 and re.search(message, _one_error(err))
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_a_single_identity_is_refused(tmp_path, capsys, astronaut_bgr):
    _crop_folder(tmp_path / "crops", astronaut_bgr, people=1, per_person=8)
    code, err = _train(capsys, tmp_path / "crops")
    assert code == 2 and "training needs crops of 2 or more identities to tell apart" in _one_error(err)
    assert not (tmp_path / "run").exists()  # a start that fails after reading the crops leaves no empty folder


def test_photos_that_are_not_aligned_crops_are_refused_rather_than_resized(tmp_path, capsys, astronaut_bgr):
    _crop_folder(tmp_path / "crops", astronaut_bgr)
    cv2.imwrite(str(tmp_path / "crops" / "person1" / "raw.jpg"), cv2.resize(astronaut_bgr, (874, 1200)))
    code, err = _train(capsys, tmp_path / "crops")
    assert code == 2 and re.search(r"1 of the 17 images under .*crops are not aligned 112x112 crops \(such as "
                                   r".*person1/raw.jpg, 874x1200\): make crops of raw photos with "
                                   r"tools/align_dataset.py", _one_error(err))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("files", [("log.csv", "model.json"), ("model.safetensors", "model.json", "model.onnx")],
                         ids=["ones-own", "a-release"])
def test_an_output_folder_of_other_files_is_refused_before_training(tmp_path, capsys, astronaut_bgr, files):
    _crop_folder(tmp_path / "crops", astronaut_bgr)
    (tmp_path / "run").mkdir()
    for name in files:
        (tmp_path / "run" / name).write_text(f"{name}, not facekit's\n")
    code, err = _train(capsys, tmp_path / "crops")
    assert code == 2 and re.search(r"--output .*run holds files that are not a facekit run's \(.*model.json.*; no "
                                   r"checkpoint.pt\), which the run would write over: give a new or empty folder",
                                   _one_error(err))
    assert {path.name: path.read_text() for path in (tmp_path / "run").iterdir()} == {
        name: f"{name}, not facekit's\n" for name in files}
    # A run's own folder is taken: with its checkpoint, or its log alone (stopped before its first checkpoint), and
    # hidden files beside it (a Mac's .DS_Store) are no one's work.
    for name in files:
        (tmp_path / "run" / name).unlink()
    (tmp_path / "run" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / "run" / "log.csv").write_text("step,elapsed_s,lr,loss,arcface,triplet,distill,images_per_s,"
                                              "val_accuracy,relation\r\n")
    assert _train(capsys, tmp_path / "crops")[0] == 0
    assert _train(capsys, tmp_path / "crops", "--epochs", "2")[0] == 0


def test_a_diverging_run_stops_and_keeps_what_it_saved_before(tmp_path, astronaut_bgr):
    """A learning rate that overflows the weights: the run stops with an error at its first check, and leaves the
    last good checkpoint and released weights as they were rather than write NaN over them."""
    _crop_folder(tmp_path / "crops", astronaut_bgr)
    config = TrainConfig(data=str(tmp_path / "crops"), output=str(tmp_path / "run"), width=0.0625, blocks=(1, 1, 1),
                         embedding_size=16, batch_size=4, epochs=1, device="cpu")
    train(config)
    run = tmp_path / "run"
    saved = {name: (run / name).read_bytes() for name in ("checkpoint.pt", "model.safetensors", "model.json")}
    with pytest.raises(ValueError, match="training diverged by step .*checkpoint.pt is left as it was") as error:
        train(TrainConfig(**{**vars(config), "epochs": 3, "lr": 1e38, "log_every": 1, "resume": False}))
    assert int(re.search(r"by step (\d+)", str(error.value)).group(1)) < 12  # the log step's check, not the last
    assert {name: (run / name).read_bytes() for name in saved} == saved


class MeanColourTeacher:
    """A teacher for tools/teacher_embeddings.py that needs no optional peer: a crop's mean colour, and a 1."""

    name, dim = "mean-colour", 4

    def embed(self, crop_rgb: np.ndarray) -> np.ndarray:
        return np.append(crop_rgb.mean((0, 1)), 1.0).astype(np.float32)


def _teacher_run(teachers, monkeypatch, pool: Path, output: Path, *options: str) -> Path:
    """tools/teacher_embeddings.py on the pool: its table, with its run record OUTPUT.json beside it."""
    monkeypatch.setattr(teachers, "make_teacher", lambda *_: MeanColourTeacher())
    assert teachers.main([str(pool), "--teacher", "dlib", "--output", str(output), "--quiet", *options]) == 0
    return output


def test_a_teacher_table_made_for_other_crops_is_refused(tmp_path, capsys, monkeypatch, astronaut_bgr, teachers):
    """Row i of a teacher table is crop i of the crops it was made for: made for 2 of the 4 identities, its rows
    here would be other crops' targets (in the shared pool, whose manifest mixes identities, nearly all of them)."""
    pool = tmp_path / "pool"
    _zip_pool(pool, astronaut_bgr)
    table = _teacher_run(teachers, monkeypatch, pool, tmp_path / "teacher.npy", "--limit-classes", "2")
    code, err = _train(capsys, pool, "--teacher", str(table), "--distill-weight", "1")
    assert code == 2 and "teacher.npy were made for other crops (8 crops, not 16" in _one_error(err)
    assert not (tmp_path / "run" / "model.safetensors").exists()
    # The same 8 crops read with another --min-per-class: train gives load_teacher its settings, which are checked.
    with pytest.raises(ValueError, match=r"\(--min-per-class 2, not 3, as teacher.npy.json records\)"):
        train(TrainConfig(data=str(pool), output=str(tmp_path / "run"), teacher=str(table), distill_weight=1.0,
                          limit_classes=2, min_per_class=3, width=0.0625, blocks=(1, 1, 1), embedding_size=16,
                          batch_size=4, epochs=1, device="cpu"))
    # Given the settings the crops were read with, those that differ are named too.
    settings = TrainConfig(data=str(pool), output=str(tmp_path / "run"))
    with pytest.raises(ValueError, match=r"\(8 crops, not 16; --limit-classes 2, not unset, as teacher.npy.json "
                                         r"records\): compute a table for these with tools/teacher_embeddings.py"):
        load_teacher(table, 16, settings)
    with pytest.raises(ValueError, match=r"\(--min-per-class 2, not 3, as"):
        load_teacher(table, 8, TrainConfig(**{**vars(settings), "limit_classes": 2, "min_per_class": 3}))
    (tmp_path / "teacher.npy.json").write_text("{}")
    with pytest.raises(ValueError, match="teacher.npy.json is not a teacher run record .*: 'run'"):
        load_teacher(table, 8, settings)


def test_a_teacher_run_cut_short_trains_on_the_crops_it_reached(tmp_path, capsys, monkeypatch, astronaut_bgr,
                                                                  teachers):
    """--limit 6: OUTPUT holds the first 6 rows and OUTPUT.partial.npy all 16, zero past the 6th. Both are
    checked against the run record and train, with targets for the 6 crops the run reached."""
    pool = tmp_path / "pool"
    _zip_pool(pool, astronaut_bgr)
    table = _teacher_run(teachers, monkeypatch, pool, tmp_path / "teacher.npy", "--limit", "6")
    settings = TrainConfig(data=str(pool), output=str(tmp_path / "run"))
    for path in (table, tmp_path / "teacher.npy.partial.npy"):
        centred, _ = load_teacher(path, 16, settings)
        assert torch.isfinite(centred[:, 0]).tolist() == [True] * 6 + [False] * 10
        code, err = _train(capsys, pool, "--teacher", str(path), "--distill-weight", "1")
        assert code == 0 and "warning" not in err, err
        shutil.rmtree(tmp_path / "run")
    # The pool moved: the same crops, so only a warning that says where the table was made.
    shutil.move(pool, tmp_path / "moved")
    with pytest.warns(FacekitWarning, match=r"were made from \S*pool, not \S*moved; taken to be these crops"):
        load_teacher(table, 16, TrainConfig(**{**vars(settings), "data": str(tmp_path / "moved")}))


def test_a_teacher_table_without_a_run_record_trains_with_a_warning(tmp_path, capsys, astronaut_bgr):
    """A table made some other way: its rows are taken to be the crops in order, which nothing can check."""
    _crop_folder(tmp_path / "crops", astronaut_bgr)
    np.save(tmp_path / "teacher.npy", np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32))
    code, err = _train(capsys, tmp_path / "crops", "--teacher", str(tmp_path / "teacher.npy"), "--distill-weight", "1")
    assert code == 0 and "teacher.npy has no run record beside it (teacher.npy.json, written by " in err, err


@pytest.mark.parametrize("rows, message", [
    (np.ones(16, np.float32), r"have shape \(16,\); a teacher table is 2-D, one row of numbers per crop"),
    (np.full((16, 4), np.nan, np.float32), "have no usable rows"),
    (np.zeros((10, 4), np.float32), "have no usable rows"),
], ids=["one-dimensional", "all-nan", "all-zero"])
def test_a_teacher_table_that_gives_no_target_is_one_line_error(tmp_path, capsys, astronaut_bgr, rows, message):
    _crop_folder(tmp_path / "crops", astronaut_bgr)
    np.save(tmp_path / "teacher.npy", rows)
    code, err = _train(capsys, tmp_path / "crops", "--teacher", str(tmp_path / "teacher.npy"), "--distill-weight", "1")
    assert code == 2 and re.search(message, _one_error(err)) and "RuntimeWarning" not in err, err
    assert not (tmp_path / "run" / "model.safetensors").exists()
