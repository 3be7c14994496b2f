"""The text-and-image processor of Qwen-Image-Edit, for images only.

``QwenImageEditPlusPipeline`` calls ``processor(text=..., images=...)``: a
``Qwen2VLProcessor`` that tokenises the prompt and expands each
``<|image_pad|>`` into the image's patch count. In transformers 5 that class
also demands a video processor, which exists only where torchvision is
installed; the edit stage never sends video. :class:`ImageOnlyQwen2VLProcessor`
is ``Qwen2VLProcessor`` with the video part left out of its constructor, so the
same ``__call__`` runs with or without torchvision, from the same
``processor/`` folder (its tokenizer files and ``preprocessor_config.json``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import AutoImageProcessor, AutoTokenizer, Qwen2VLProcessor
from transformers.processing_utils import ProcessorMixin


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` without a video processor."""

    def __init__(self, image_processor: Any = None, tokenizer: Any = None,
                 chat_template: str | None = None, **kwargs: Any) -> None:
        # The attributes Qwen2VLProcessor.__init__ sets before its base class runs.
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = (getattr(tokenizer, "image_token_id", None)
                               or tokenizer.convert_tokens_to_ids(self.image_token))
        self.video_token_id = (getattr(tokenizer, "video_token_id", None)
                               or tokenizer.convert_tokens_to_ids(self.video_token))
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template,
                                **kwargs)


def load_processor(folder: Path) -> ImageOnlyQwen2VLProcessor:
    """The processor in ``folder`` (a Qwen-Image-Edit ``processor/`` folder)."""
    image_processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return ImageOnlyQwen2VLProcessor(image_processor, tokenizer)
