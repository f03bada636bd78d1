"""`model.pt2` through the registry and the edge export, as a user runs them: `tensorgate models
register` takes a torch.export program like a TorchScript file and refuses a file that only
bears the name; an edge export of a `.pt2` version is refused naming the formats it takes."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import pytest

from tensorgate.edge.source import EdgeError, find_source
from tests.integration.test_models_cli import DIGITS, listing, tensorgate
from tests.unit.pt2_helpers import export


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export(tmp_path_factory.mktemp("program") / "scorer.pt2")


def test_register_takes_a_program_and_refuses_a_file_only_named_pt2(program: Path,
                                                                     tmp_path: Path) -> None:
    repo = tmp_path / "models"
    repo.mkdir()
    config = tmp_path / "scorer.yaml"
    config.write_text("max_batch_size: 8\ndevice: cpu\n")
    done = tensorgate(repo, "models", "register", "scorer", "--file", str(program),
                      "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert "registered scorer:1 (torch" in done.stderr and "validated and ready" in done.stderr
    assert (repo / "scorer" / "1" / "model.pt2").read_bytes() == program.read_bytes()
    impostor = tmp_path / "impostor.pt2"
    shutil.copyfile(DIGITS / "2" / "model.pt", impostor)
    done = tensorgate(repo, "models", "register", "scorer", "--file", str(impostor))
    assert done.returncode == 1
    assert "holds a TorchScript model, which is served from a file named model.pt" in done.stderr
    assert not (repo / "scorer" / "2").exists()
    assert [row[:3] for row in listing(repo)] == [["scorer", "1", "ready"],
                                                  ["scorer", "2", "failed"]]


def test_an_edge_export_of_a_program_is_refused_by_name(program: Path, tmp_path: Path) -> None:
    (tmp_path / "scorer" / "1").mkdir(parents=True)
    shutil.copyfile(program, tmp_path / "scorer" / "1" / "model.pt2")
    (tmp_path / "scorer" / "config.yaml").write_text("max_batch_size: 8\n")
    with pytest.raises(EdgeError) as caught:
        find_source(tmp_path, "scorer", 1)
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "scorer:1 is served from a torch.export program (model.pt2)" in caught.value.message
    assert "edge bundles are made from ONNX or TorchScript models" in caught.value.message
