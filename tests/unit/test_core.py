"""Registry, image conversions, atomic writes and checkpoint key checks."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vfmtok.checkpoint import CheckpointKeyError, load_state_dict_strict, read_checkpoint
from vfmtok.fileio import atomic_write, atomic_write_json
from vfmtok.images import center_crop_arr, pil_to_uint8, to_model_range, to_uint8
from vfmtok.registry import Registry


def test_registry_register_get_list_and_errors() -> None:
    reg: Registry[int] = Registry("widget")
    reg.register("alpha_one", 1)
    reg.register("alpha_two")(2)
    reg.register("beta", 3)
    assert reg.get("alpha_two") == 2
    assert reg.list("alpha_*") == ["alpha_one", "alpha_two"]
    assert reg.list("*", exclude="beta") == ["alpha_one", "alpha_two"]
    with pytest.raises(KeyError, match="did you mean 'alpha_one'"):
        reg.get("alpha_onee")
    with pytest.raises(KeyError, match="already registered"):
        reg.register("beta", 4)
    with pytest.raises(ValueError, match="invalid widget name"):
        reg.register("Bad Name", 5)


def test_uint8_round_trip_all_values() -> None:
    u = torch.arange(256, dtype=torch.uint8).view(1, 1, 1, 256).expand(2, 3, 4, 256).contiguous()
    x = to_model_range(u)
    assert x.min() == -1.0 and x.max() == 1.0
    assert torch.equal(to_uint8(x), u)


def test_to_uint8_rounds_and_clamps() -> None:
    # 0.6 of a step above a level rounds up; 0.4 rounds down; out-of-range clamps.
    step = 1 / 127.5
    x = torch.tensor([-1.0 + 0.6 * step, -1.0 + 0.4 * step, -3.0, 3.0, 0.0]).view(1, 1, 1, 5)
    assert to_uint8(x).flatten().tolist() == [1, 0, 0, 255, 128]
    with pytest.raises(TypeError):
        to_model_range(torch.zeros(1, 3, 2, 2))


def test_pil_conversion_policy() -> None:
    gray = Image.new("L", (4, 3), 77)
    out = pil_to_uint8(gray)
    assert out.shape == (3, 3, 4) and (out == 77).all()
    rgba = Image.new("RGBA", (2, 2), (10, 20, 30, 0))  # fully transparent -> white
    assert (pil_to_uint8(rgba) == 255).all()
    opaque = Image.new("RGBA", (2, 2), (10, 20, 30, 255))
    assert pil_to_uint8(opaque)[:, 0, 0].tolist() == [10, 20, 30]


def test_center_crop_arr_size() -> None:
    img = Image.new("RGB", (768, 512), (1, 2, 3))
    out = center_crop_arr(img, 256)
    assert out.size == (256, 256)
    assert pil_to_uint8(out)[:, 100, 100].tolist() == [1, 2, 3]


def test_atomic_write_keeps_old_file_on_failure(tmp_path) -> None:
    path = tmp_path / "a.json"
    atomic_write_json(path, {"v": 1})

    def broken(p):
        p.write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert path.read_text().strip().endswith("}") and '"v": 1' in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_strict_loading_names_every_problem(tmp_path) -> None:
    module = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    state = module.state_dict()
    bad = dict(state)
    bad.pop("0.bias")
    bad["extra.weight"] = torch.zeros(1)
    bad["1.weight"] = torch.zeros(2, 3)
    with pytest.raises(CheckpointKeyError) as err:
        load_state_dict_strict(module, bad, source="test.pt")
    msg = str(err.value)
    assert "missing: 0.bias" in msg and "unexpected: extra.weight" in msg and "1.weight: checkpoint (2, 3)" in msg
    load_state_dict_strict(module, {**state, "codebook_used": torch.zeros(4)}, tolerated_extra=["codebook_used"])

    torch.save({"model": state, "steps": 3}, tmp_path / "c.pt")
    assert set(read_checkpoint(tmp_path / "c.pt")) == set(state)
    torch.save({"steps": 3}, tmp_path / "d.pt")
    with pytest.raises(CheckpointKeyError, match="no state dict"):
        read_checkpoint(tmp_path / "d.pt")
    (tmp_path / "e.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        read_checkpoint(tmp_path / "e.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        read_checkpoint(tmp_path / "missing.pt")
