"""The edit stage runs diffusers' real QwenImageEditPlusPipeline code on tiny random
components saved in the published Qwen-Image-Edit-2509 folder layout."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ai_engine.config import Settings
from ai_engine.errors import Canceled, SetupError
from ai_engine.imaging import Cutout, ImagingParams, prepare, split_params, wants_edit
from ai_engine.imaging.cutout import Method
from ai_engine.imaging.edit import LIGHTNING_SCHEDULER, Editor, load_editor
from ai_engine.imaging.segment import apply_mask
from tests.imaging.images import disc_scene, encode
from tests.imaging.tiny_models import write_lightning_lora, write_qwen_image_edit

# The edit stage needs the ``imaging`` extra (diffusers; peft for the LoRA).
for _module in ("diffusers", "transformers", "torch"):
    pytest.importorskip(_module)

LORA = "Qwen-Image-Lightning/Qwen-Image-Edit-2509-Lightning-8steps-V1.0-bf16.safetensors"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = tmp_path_factory.mktemp("models")
    write_qwen_image_edit(models / "Qwen-Image-Edit-2509")
    return models


def _settings(models_dir: Path, **options: object) -> Settings:
    values: dict[str, object] = {"edit_load": "always", "edit_device": "cpu",
                                 "edit_size_px": 64, "edit_steps": 2}
    values.update(options)
    return Settings(models_dir=models_dir, **values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def editor(models: Path) -> Editor:
    loaded = load_editor(_settings(models))
    assert loaded is not None
    return loaded


class CentreSegmenter:
    """A segmenter seam whose object is the centre of any image: the tiny random
    edit model paints noise, in which no real segmenter finds an object."""

    method: Method = "rembg"
    description = "the centre of the image"

    def __call__(self, rgba: np.ndarray) -> np.ndarray:
        height, width = rgba.shape[:2]
        mask = np.zeros((height, width), np.uint8)
        mask[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = 255
        return apply_mask(rgba, mask)


def _photo() -> np.ndarray:
    return disc_scene(size=(120, 160), centre=(60, 80), radius=40)[0][..., :3].copy()


def test_folder_has_the_published_layout(models: Path) -> None:
    folder = models / "Qwen-Image-Edit-2509"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "QwenImageEditPlusPipeline"
    assert index["processor"] == ["transformers", "Qwen2VLProcessor"]
    for part in ("transformer", "text_encoder", "vae", "scheduler", "tokenizer", "processor"):
        assert (folder / part).is_dir(), part
    assert (folder / "processor" / "preprocessor_config.json").is_file()


def test_editor_runs_the_pipeline(editor: Editor) -> None:
    assert editor.steps == 2 and editor.true_cfg_scale == 4.0  # no LoRA: real CFG
    fractions: list[float] = []
    edited = editor(_photo(), seed=7, on_progress=fractions.append)
    assert edited.shape == (64, 64, 3) and edited.dtype == np.uint8
    assert fractions == [0.5, 1.0]
    assert edited.std() > 1  # the decoder painted something
    assert np.array_equal(editor(_photo(), seed=7), edited)  # the seed decides the noise
    assert not np.array_equal(editor(_photo(), seed=8), edited)


def test_progress_callback_can_cancel(editor: Editor) -> None:
    def cancel(fraction: float) -> None:
        raise Canceled("canceled")

    with pytest.raises(Canceled):
        editor(_photo(), seed=1, on_progress=cancel)


def test_lightning_lora_is_fused_with_its_scheduler(models: Path, editor: Editor,
                                                    tmp_path: Path) -> None:
    pytest.importorskip("peft")
    lora_models = tmp_path / "models"
    lora_models.mkdir()
    (lora_models / "Qwen-Image-Edit-2509").symlink_to(models / "Qwen-Image-Edit-2509")
    write_lightning_lora(lora_models / LORA)
    lightning = load_editor(_settings(lora_models, edit_steps=None))
    assert lightning is not None
    assert lightning.steps == 8 and lightning.true_cfg_scale == 1.0
    config = lightning.pipeline.scheduler.config
    assert config.time_shift_type == "exponential"
    assert config.base_shift == config.max_shift == LIGHTNING_SCHEDULER["max_shift"]
    # Fused into the base weights; no LoRA layers left to run at every step.
    state = lightning.pipeline.transformer.state_dict()
    assert not any("lora" in key for key in state)
    base = editor.pipeline.transformer.state_dict()
    changed = [key for key in base if not np.allclose(base[key].numpy(), state[key].numpy())]
    assert changed and all(".attn.to_" in key for key in changed)
    assert lightning(_photo(), seed=3).shape == (64, 64, 3)


def test_prepare_edits_before_the_cut_out(editor: Editor) -> None:
    rgba, truth = disc_scene(size=(120, 160), centre=(60, 80), radius=40)
    rgba[..., 3] = np.where(truth, 255, 0)  # a transparent upload
    data = encode(Image.fromarray(rgba))
    prepared = prepare(data, max_pixels=10**8, editor=editor, seed=5,
                       segmenter=CentreSegmenter())
    assert isinstance(prepared, Cutout) and prepared.edited is not None
    # The model takes RGB: the upload was flattened on mid grey first.
    flat = rgba[..., :3].copy()
    flat[~truth] = 128
    assert np.array_equal(prepared.edited, editor(flat, seed=5))
    assert prepared.rgba.shape == (64, 64, 4)  # the cut-out is of the edited image
    assert np.array_equal(prepared.rgba[..., :3], prepared.edited)
    assert prepared.method == "rembg" and prepared.rgba[32, 32, 3] == 255
    png = prepared.edited_png()
    assert png is not None
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), prepared.edited)
    plain = prepare(data, max_pixels=10**8)
    assert plain.edited is None and plain.edited_png() is None and plain.method == "alpha"


# -- when the stage is loaded -----------------------------------------------------------

def test_auto_without_a_gpu_or_weights_is_off(models: Path, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="ai_engine.imaging"):
        assert load_editor(Settings(models_dir=tmp_path)) is None
        # Weights present, but this machine has no GPU and no device was named.
        assert load_editor(Settings(models_dir=models)) is None
    assert any("edit stage is off" in record.getMessage() for record in caplog.records)
    assert load_editor(Settings(models_dir=models, edit_load="never")) is None


@pytest.mark.parametrize("options", [
    {"edit_load": "always"},
    {"edit_enabled": True},
    {"edit_enabled": True, "edit_load": "never"},
])
def test_required_but_missing_is_a_setup_error(tmp_path: Path,
                                               options: dict[str, object]) -> None:
    with pytest.raises(SetupError) as caught:
        load_editor(Settings(models_dir=tmp_path, **options))  # type: ignore[arg-type]
    assert caught.value.code == "setup.model_missing"


def test_broken_folder_is_a_load_error(tmp_path: Path) -> None:
    folder = tmp_path / "Qwen-Image-Edit-2509"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    with pytest.raises(SetupError) as caught:
        load_editor(_settings(tmp_path))
    assert caught.value.code == "setup.model_load_failed"


# -- per-job params ---------------------------------------------------------------------

def test_split_params_and_wants_edit() -> None:
    imaging, rest = split_params({"edit": True, "steps": 5})
    assert imaging == ImagingParams(edit=True) and rest == {"steps": 5}
    assert wants_edit(Settings(), imaging)
    assert not wants_edit(Settings(), split_params({})[0])
    assert wants_edit(Settings(edit_enabled=True), split_params({})[0])
    assert not wants_edit(Settings(edit_enabled=True), ImagingParams(edit=False))


def test_edit_param_must_be_a_boolean() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as caught:
        split_params({"edit": "yes"})
    assert caught.value.errors()[0]["loc"] == ("edit",)
