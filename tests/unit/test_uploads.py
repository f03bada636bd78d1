"""The upload rule (common.uploads) and the stage of a load's files (runtime.staging)."""

from __future__ import annotations

import shutil
from pathlib import Path, PurePosixPath

import pytest

from common.errors import TensorgateError
from common.uploads import MAX_UPLOAD_DEPTH, MAX_UPLOAD_FILES, check_upload, upload_path
from runtime.staging import Upload, stage


@pytest.mark.parametrize("key", [
    "file:model.onnx", "file:../1/model.onnx", "file:1/../../x", "file:/1/model.onnx",
    "file:1/.pth", "file:1//x", "file:1/", "file:0/model.onnx", "file:²/model.onnx",
    "file:1/a\nb", "file:1/a\\..\\b", "file:" + "1/" + "/".join(["d"] * MAX_UPLOAD_DEPTH) + "/f",
])
def test_probe_01_paths_off_the_rule_are_refused(key: str) -> None:
    with pytest.raises(TensorgateError, match="a path inside the model folder"):
        upload_path(key)


def test_paths_on_the_rule_are_kept_as_given() -> None:
    assert upload_path("file:1/model.onnx") == PurePosixPath("1/model.onnx")
    assert upload_path("file:12/sub/weights.bin") == PurePosixPath("12/sub/weights.bin")
    assert check_upload(["config", "file:1/a", "file:2/b"]) == [PurePosixPath("1/a"),
                                                                PurePosixPath("2/b")]
    with pytest.raises(TensorgateError, match=f"at most {MAX_UPLOAD_FILES} files"):
        check_upload(f"file:1/f{i}" for i in range(MAX_UPLOAD_FILES + 1))


def test_a_stage_links_the_model_s_files_and_holds_the_upload_apart(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "m" / "1").mkdir(parents=True)
    (repo / "m" / "1" / "model.onnx").write_bytes(b"old")
    (repo / "m" / "config.yaml").write_text("max_batch_size: 0\n")
    upload = Upload({"1/model.onnx": b"new", "2/model.onnx": b"two"})
    staged = stage(repo, "m", upload)
    try:
        assert not staged.is_relative_to(repo)
        assert (staged / "config.yaml").is_symlink()
        assert (staged / "1" / "model.onnx").read_bytes() == b"new"
        assert (repo / "m" / "1" / "model.onnx").read_bytes() == b"old"
        assert not (repo / "m" / "2").exists()
        assert (staged / "2" / "model.onnx").read_bytes() == b"two"
    finally:
        shutil.rmtree(staged.parent)


def test_a_new_model_is_staged_whole_and_the_repository_untouched(tmp_path: Path) -> None:
    staged = stage(tmp_path, "fresh", Upload({"1/model.onnx": b"x"}))
    try:
        assert (staged / "1" / "model.onnx").read_bytes() == b"x"
        assert list(tmp_path.iterdir()) == []
    finally:
        shutil.rmtree(staged.parent)
