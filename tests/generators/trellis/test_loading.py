"""Checkpoints in the published layout load strictly onto our modules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ai_engine.errors import SetupError
from ai_engine.generators.trellis.loading import (
    build_model,
    checkpoint_paths,
    load_model,
    read_pipeline_config,
)
from tests.generators.trellis.tiny import FACTS, TINY, write_tiny_trellis

# Published parameter counts (tensors in the files, buffers included).
PUBLISHED_SIZES = {
    "ss_flow_img_dit_L_16l8_fp16": 555_543_560 + 4096 * 1024,
    "ss_dec_conv3d_16l8_fp16": 73_671_201,
    "slat_flow_img_dit_L_64l8p2_fp16": 600_432_520,
    "slat_dec_gs_swin8_B_64l8gs32_fp16": 85_369_024 + 32 * 3,
}


def published_facts() -> dict[str, dict[str, object]]:
    facts: dict[str, dict[str, object]] = json.loads((FACTS / "state_dicts.json").read_text())
    return facts


@pytest.mark.parametrize("stem", sorted(PUBLISHED_SIZES))
def test_full_size_modules_match_the_published_tensors_exactly(stem: str) -> None:
    facts = published_facts()[stem]
    spec = json.loads((FACTS / "ckpts" / f"{stem}.json").read_text())
    with torch.device("meta"):
        model = build_model(spec["name"], spec["args"])
    model.set_compute_dtype(torch.float16)  # type: ignore[operator]
    ours = {name: (list(t.shape), str(t.dtype).removeprefix("torch."))
            for name, t in model.state_dict().items()}
    published = {name: (shape, dtype)
                 for name, shape, dtype in facts["tensors"]}  # type: ignore[attr-defined]
    assert ours == published
    assert sum(t.numel() for t in model.state_dict().values()) == PUBLISHED_SIZES[stem]


def test_tiny_checkpoints_load_strictly_with_every_value(tmp_path: Path) -> None:
    root = write_tiny_trellis(tmp_path, seed=3)
    config = read_pipeline_config(root)
    assert config.ss_sampler.steps == 25 and config.ss_sampler.cfg_interval == (0.5, 1.0)
    assert config.slat_sampler.rescale_t == 3.0 and config.ss_sampler.sigma_min == 1e-5
    assert len(config.slat_mean) == len(config.slat_std) == 8
    for folder, stem in checkpoint_paths(root, config).values():
        model = load_model(folder, stem, device="cpu", dtype=torch.float32)
        saved = load_file(str(folder / f"{stem}.safetensors"))
        state = model.state_dict()
        assert set(state) == set(saved)
        for name, tensor in saved.items():
            assert state[name].dtype == torch.float32
            torch.testing.assert_close(state[name], tensor.float(), rtol=0, atol=0)


def test_a_missing_or_misshapen_tensor_refuses_to_load(tmp_path: Path) -> None:
    root = write_tiny_trellis(tmp_path, seed=4)
    stem = "slat_flow_img_dit_L_64l8p2_fp16"
    path = root / "ckpts" / f"{stem}.safetensors"
    state = load_file(str(path))
    missing = dict(state)
    del missing["blocks.1.self_attn.q_rms_norm.gamma"]
    save_file(missing, str(path))
    with pytest.raises(SetupError) as info:
        load_model(root / "ckpts", stem, device="cpu", dtype=torch.float32)
    assert info.value.code == "setup.checkpoint_mismatch"
    assert "q_rms_norm" in info.value.message
    misshapen = dict(state)
    misshapen["input_blocks.0.conv1.conv.weight"] = torch.zeros(16, 3, 3, 3, 15)
    save_file(misshapen, str(path))
    with pytest.raises(SetupError) as info:
        load_model(root / "ckpts", stem, device="cpu", dtype=torch.float32)
    assert info.value.code == "setup.checkpoint_mismatch"


def test_missing_files_and_unknown_classes_are_setup_errors(tmp_path: Path) -> None:
    with pytest.raises(SetupError) as info:
        read_pipeline_config(tmp_path)
    assert info.value.code == "setup.models_missing"
    (tmp_path / "m.json").write_text(json.dumps({"name": "SLatMeshDecoder", "args": {}}))
    save_file({}, str(tmp_path / "m.safetensors"))
    with pytest.raises(SetupError) as info:
        load_model(tmp_path, "m", device="cpu", dtype=torch.float32)
    assert info.value.code == "setup.models_invalid"
    spec = TINY["ss_dec_conv3d_16l8_fp16"]
    (tmp_path / "d.json").write_text(json.dumps(spec))
    with pytest.raises(SetupError) as info:
        load_model(tmp_path, "d", device="cpu", dtype=torch.float32)
    assert info.value.code == "setup.models_missing"
