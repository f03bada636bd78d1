"""Version folders and model references: numbers read the one way common/names reads them."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.model_config import ConfigError
from runtime.repository import version_folders
from tensorgate.edge.source import EdgeError, parse_ref


def model_dir(tmp_path: Path, *folders: str) -> Path:
    for name in folders:
        (tmp_path / name).mkdir()
    (tmp_path / "7").write_text("a file, not a version folder")
    return tmp_path


def test_numbered_folders_are_the_versions(tmp_path: Path) -> None:
    assert version_folders(model_dir(tmp_path, "3", "10", "1", "extra", "²")) == [1, 3, 10]


@pytest.mark.parametrize("folder", ["0", "01", str(2**63)])
def test_a_number_that_is_no_version_is_refused_by_name(tmp_path: Path, folder: str) -> None:
    with pytest.raises(ConfigError, match=f"version folder '{folder}' is not a version"):
        version_folders(model_dir(tmp_path, "1", folder))


@pytest.mark.parametrize("ref", ["digits:two", "digits:²", "digits:0", "digits:", "../x",
                                 "a/b:1", ":1", "digits:1:2"])
def test_bad_model_references_are_refused_with_the_form(ref: str) -> None:
    with pytest.raises(EdgeError, match="expected MODEL or MODEL:VERSION, like digits:2"):
        parse_ref(ref)


def test_model_references() -> None:
    assert parse_ref("digits") == ("digits", None)
    assert parse_ref("digits:12") == ("digits", 12)
