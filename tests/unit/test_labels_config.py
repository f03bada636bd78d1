"""Class labels in a model's config: `labels:` in config.yaml, `label_filename` in config.pbtxt."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.model_config import ConfigError, load_model_config


def test_yaml_labels_inline_or_from_a_file_beside_the_config(tmp_path: Path) -> None:
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    (tmp_path / "config.yaml").write_text("labels: {probs: names.txt, other: [a, b]}\n")
    config = load_model_config(tmp_path / "config.yaml", "m")
    assert config.labels == (("probs", ("cat", "dog")), ("other", ("a", "b")))


def test_pbtxt_label_filename(tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_text("zero\none\n")
    (tmp_path / "config.pbtxt").write_text(
        'output [ { name: "probs", data_type: TYPE_FP32, dims: [ 2 ], label_filename: "l.txt" } ]')
    assert load_model_config(tmp_path / "config.pbtxt", "m").labels == (
        ("probs", ("zero", "one")),)


@pytest.mark.parametrize(("labels", "error"), [
    ("{probs: missing.txt}", "no labels file 'missing.txt' beside the config"),
    ("{probs: ../up.txt}", "expected a file name in the model's folder"),
    ("{probs: 3}", "expected a file name or a non-empty list of strings"),
    ("[a, b]", "key 'labels': expected a mapping of output name"),
])
def test_bad_labels_name_the_key_and_what_is_expected(tmp_path: Path, labels: str,
                                                      error: str) -> None:
    (tmp_path / "config.yaml").write_text(f"labels: {labels}\n")
    with pytest.raises(ConfigError, match=error):
        load_model_config(tmp_path / "config.yaml", "m")
