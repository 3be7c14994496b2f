"""DINOv2 conditioning: pre-norm tokens of an ImageNet-normalised image, layer-normed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import Dinov2Config, Dinov2Model

from ai_engine.errors import SetupError
from ai_engine.generators.trellis.conditioner import ImageConditioner
from tests.generators.trellis.tiny import COND_CHANNELS, write_tiny_dinov2


@pytest.fixture(scope="module")
def conditioner(tmp_path_factory: pytest.TempPathFactory) -> ImageConditioner:
    folder = write_tiny_dinov2(tmp_path_factory.mktemp("dinov2") / "dinov2-vitl14-reg")
    return ImageConditioner.load(folder, device="cpu")


@torch.no_grad()
def test_tokens_are_the_last_block_output_before_the_final_norm(
        conditioner: ImageConditioner) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (518, 518, 3), dtype=np.uint8)
    tokens = conditioner(rgb)
    assert tokens.shape == (1, 1 + 4 + 37 * 37, COND_CHANNELS)
    # The same tokens by hand: ImageNet normalisation, embeddings, every layer, no final norm.
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    pixels = ((torch.from_numpy(rgb).permute(2, 0, 1).float() / 255 - mean) / std)[None]
    model = conditioner.model
    hidden = model.embeddings(pixels)
    for layer in model.encoder.layer:
        out = layer(hidden)
        hidden = out[0] if isinstance(out, tuple) else out
    torch.testing.assert_close(tokens, F.layer_norm(hidden, hidden.shape[-1:]))
    # Without affine parameters every token has zero mean and unit variance.
    torch.testing.assert_close(tokens.mean(-1), torch.zeros(1, 1374), atol=1e-5, rtol=0)


def test_other_image_sizes_are_resized_to_518(conditioner: ImageConditioner) -> None:
    pixels = conditioner.preprocess(np.full((300, 200, 3), 128, dtype=np.uint8))
    assert pixels.shape == (1, 3, 518, 518)
    expected = (128 / 255 - 0.485) / 0.229
    assert float(pixels[0, 0, 100, 100]) == pytest.approx(expected, abs=1e-5)


def test_missing_folder_or_a_model_without_registers_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SetupError) as info:
        ImageConditioner.load(tmp_path / "absent", device="cpu")
    assert info.value.code == "setup.models_missing"
    plain = Dinov2Model(Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     mlp_ratio=2, image_size=28, patch_size=14))
    plain.save_pretrained(tmp_path / "plain")
    with pytest.raises(SetupError) as info:
        ImageConditioner.load(tmp_path / "plain", device="cpu")
    assert info.value.code == "setup.models_invalid"
