"""Job paths stay inside their roots: `..`, absolute paths elsewhere and symlinks out are 422."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api.errors import install_error_handlers
from app.core.paths import PathOutsideRoot, resolve_inside, resolve_model


@pytest.fixture
def root(tmp_path: Path) -> Path:
    base = tmp_path / "root"
    (base / "models" / "tiny").mkdir(parents=True)
    (base / "models" / "tiny" / "config.json").write_text("{}")
    (base / "corpus.txt").write_text("hello")
    return base


def test_relative_path_is_taken_from_the_root(root: Path) -> None:
    assert resolve_inside(root, "corpus.txt") == (root / "corpus.txt").resolve()


def test_absolute_path_inside_the_root_is_accepted(root: Path) -> None:
    target = (root / "corpus.txt").resolve()
    assert resolve_inside(root, str(target)) == target


def test_dot_dot_escape_is_refused_even_when_the_target_exists(root: Path, tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("secret")
    with pytest.raises(PathOutsideRoot, match="outside"):
        resolve_inside(root, "../secret.txt")


def test_dot_dot_escape_to_a_missing_file_is_reported_as_an_escape(root: Path) -> None:
    with pytest.raises(PathOutsideRoot, match="outside"):
        resolve_inside(root, "../../nope/nothing.txt")


def test_absolute_path_elsewhere_is_refused(root: Path) -> None:
    with pytest.raises(PathOutsideRoot, match="outside"):
        resolve_inside(root, "/etc/passwd")


def test_symlink_pointing_out_of_the_root_is_refused(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    (root / "link.txt").symlink_to(outside)
    with pytest.raises(PathOutsideRoot, match="outside"):
        resolve_inside(root, "link.txt")


def test_symlink_inside_the_root_is_followed(root: Path) -> None:
    (root / "alias.txt").symlink_to(root / "corpus.txt")
    assert resolve_inside(root, "alias.txt") == (root / "corpus.txt").resolve()


def test_missing_file_inside_the_root_is_refused(root: Path) -> None:
    with pytest.raises(PathOutsideRoot, match="does not exist"):
        resolve_inside(root, "missing.txt")


@pytest.mark.parametrize("bad", ["", "a\x00b"])
def test_empty_or_nul_path_is_refused(root: Path, bad: str) -> None:
    with pytest.raises(PathOutsideRoot, match="an empty path or a NUL byte is not a path"):
        resolve_inside(root, bad)


def test_model_directory_inside_the_root_resolves(root: Path) -> None:
    models = root / "models"
    assert resolve_model(models, "tiny", allow_hub=False) == str((models / "tiny").resolve())


def test_model_must_be_a_directory(root: Path) -> None:
    with pytest.raises(PathOutsideRoot, match="not a directory"):
        resolve_model(root, "corpus.txt", allow_hub=False)


def test_hub_id_is_refused_unless_hub_models_are_allowed(root: Path) -> None:
    with pytest.raises(PathOutsideRoot, match="hub models are disabled"):
        resolve_model(root / "models", "meta-llama/Llama-3.2-1B", allow_hub=False)
    assert resolve_model(root / "models", "meta-llama/Llama-3.2-1B", allow_hub=True) == (
        "meta-llama/Llama-3.2-1B"
    )


def test_local_directory_that_looks_like_a_hub_id_is_local(root: Path) -> None:
    (root / "models" / "org" / "name").mkdir(parents=True)
    resolved = resolve_model(root / "models", "org/name", allow_hub=False)
    assert resolved == str((root / "models" / "org" / "name").resolve())


def test_a_refused_path_reaches_the_client_as_a_422_with_the_reason(root: Path) -> None:
    api = FastAPI()
    install_error_handlers(api)

    @api.get("/resolve")
    def resolve(path: str) -> str:
        return str(resolve_inside(root, path, what="dataset.path"))

    with TestClient(api) as client:
        response = client.get("/resolve", params={"path": "../x"})
        assert response.status_code == 422
        detail = response.json()["detail"]
        assert detail.startswith("dataset.path '../x' is outside ")
        assert client.get("/resolve", params={"path": "corpus.txt"}).status_code == 200


def test_overlong_names_are_a_clean_refusal(root: Path) -> None:
    with pytest.raises(PathOutsideRoot, match="cannot be resolved"):
        resolve_inside(root, "x" * 600)
    with pytest.raises(PathOutsideRoot, match="hub models are disabled"):
        resolve_model(root, "org/" + "n" * 600, allow_hub=False)
