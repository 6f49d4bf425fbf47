"""The command line as a user meets it: exit codes, one-line errors naming the file, no tracebacks."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from builders import make_2d_dataset, shared
from medseg.cli import main
from medseg.io import Image, write_image


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["medseg", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


def assert_one_line_error(err: str, *fragments: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], err


def test_missing_path_and_empty_folder(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "check", tmp_path / "nowhere")
    assert code == 1
    assert_one_line_error(err, "nowhere", "does not exist")
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(monkeypatch, capsys, "check", tmp_path / "empty")
    assert code == 1
    assert_one_line_error(err, "empty", "is empty")


def test_check_exit_codes_and_json(monkeypatch, capsys, tmp_path):
    data = make_2d_dataset(tmp_path / "ds", cases=3)
    code, out, _ = run_cli(monkeypatch, capsys, "check", data, "--json")
    assert code == 0 and json.loads(out)["ok"] is True
    write_image(Image.from_array(np.full((1, 32, 32), 7, np.uint8)), data / "masks" / "img01.png")
    write_image(Image.from_array(np.zeros((1, 20, 32), np.uint8)), data / "masks" / "img02.png")
    code, out, _ = run_cli(monkeypatch, capsys, "check", data, "--labels", "0:background,1:blob")
    assert code == 1
    assert "img01.png: mask has value(s) [7] outside the declared labels [0, 1]" in out
    assert "img02.png: mask size 20x32 differs from image size 32x32" in out


def test_convert_refuses_a_text_file_named_png(monkeypatch, capsys, tmp_path):
    (tmp_path / "scan.png").write_text("hello")
    code, _, err = run_cli(monkeypatch, capsys, "convert", tmp_path / "scan.png", tmp_path / "out.nii.gz")
    assert code == 1
    assert_one_line_error(err, "scan.png", "not a readable PNG")
    assert not (tmp_path / "out.nii.gz").exists()


def test_convert_dicom_folder_with_several_series_names_them(monkeypatch, capsys, tmp_path):
    root = shared("dicom_mr_brain")
    code, _, err = run_cli(monkeypatch, capsys, "convert", root, tmp_path / "out.nii.gz")
    assert code == 1 and "Traceback" not in err
    assert "holds 4 image series" in err and "--series UID" in err, err
    # each series is named by its UID, modality, description and size, so the user can pick one
    named = {"1.3.6.1.4.1.14519.5.2.1.4429.7055.250698293053013179878447218670": "MR 'T1post', 22 slices",
             "1.2.826.0.1.3680043.8.498.10112548596522579645160189153146185462": "MR 'HippoCrop', 32 slices"}
    for uid, description in named.items():
        assert f"{uid} [{description}" in err, err
    assert not (tmp_path / "out.nii.gz").exists()


def test_convert_dicom_series_to_nifti(monkeypatch, capsys, tmp_path):
    root = shared("dicom_mr_brain") / "hippocrop_study1"
    code, out, _ = run_cli(monkeypatch, capsys, "convert", root, tmp_path / "h.nii.gz")
    assert code == 0 and "wrote" in out
    from medseg.io import read_image

    assert read_image(tmp_path / "h.nii.gz").shape[0] == 32


def test_real_hippocampus_check_cli(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "check", shared("msd_hippocampus"), "--json")
    report = json.loads(out)
    assert code == 0 and report["summary"]["cases"] == 260
    assert set(report["summary"]["labels"]) == {"0", "1", "2"}


def test_usage_errors_exit_2(monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "check")
    assert code == 2 and "Missing argument" in err
