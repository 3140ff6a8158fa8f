"""Tiny randomly initialised models with the target models' architectures and loading paths."""

from __future__ import annotations

import json
import sys
from pathlib import Path

# BiRefNet/RMBG-2.0 ship their model as remote code: config.json's auto_map names
# BiRefNet_config.BiRefNetConfig and birefnet.BiRefNet. This folder has the same
# interface (a list of side-output logit maps, the last at full resolution).
BIREFNET_CONFIG = '''
from transformers import PretrainedConfig


class BiRefNetConfig(PretrainedConfig):
    model_type = "SegformerForSemanticSegmentation"

    def __init__(self, bb_pretrained=False, **kwargs):
        self.bb_pretrained = bb_pretrained
        super().__init__(**kwargs)
'''

BIREFNET_MODEL = '''
import torch
from torch import nn
from transformers import PreTrainedModel

from .BiRefNet_config import BiRefNetConfig


class BiRefNet(PreTrainedModel):
    config_class = BiRefNetConfig

    def __init__(self, config):
        super().__init__(config)
        self.encoder = nn.Conv2d(3, 4, 3, stride=4, padding=1)
        self.decoder = nn.Conv2d(4, 1, 3, padding=1)
        self.post_init()

    def forward(self, x):
        coarse = self.decoder(torch.relu(self.encoder(x)))
        fine = nn.functional.interpolate(coarse, size=x.shape[-2:], mode="bilinear")
        return [coarse, fine]
'''


def make_tiny_birefnet(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "BiRefNet_config.py").write_text(BIREFNET_CONFIG)
    (folder / "birefnet.py").write_text(BIREFNET_MODEL)
    (folder / "__init__.py").write_text("")
    sys.path.insert(0, str(folder.parent))
    try:
        package = __import__(f"{folder.name}.birefnet", fromlist=["BiRefNet"])
        config_module = __import__(f"{folder.name}.BiRefNet_config", fromlist=["BiRefNetConfig"])
    finally:
        sys.path.remove(str(folder.parent))
    model = package.BiRefNet(config_module.BiRefNetConfig())
    model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "BiRefNet_config.BiRefNetConfig",
        "AutoModelForImageSegmentation": "birefnet.BiRefNet",
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def make_tiny_vit(folder: Path) -> Path:
    """A ViT with google/vit-large-patch16-224's architecture, shrunk: same classes, same files."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8)
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def make_tiny_clip(folder: Path) -> Path:
    """A CLIP with openai/clip-vit-base-patch32's classes and files (CLIPModel, CLIPProcessor), shrunk and random.

    The tokenizer is built offline: CLIP's byte-level BPE over the 256 byte symbols (each also as
    an end of word), with a few merges, so "red" and "mug" are one token each.
    """
    from tokenizers import pre_tokenizers
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    merges = [("r", "e"), ("re", "d</w>"), ("m", "u"), ("mu", "g</w>")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tower = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = CLIPConfig(text_config={**tower, "vocab_size": len(vocab), "max_position_embeddings": 16,
                                     "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
                        vision_config={**tower, "image_size": 32, "patch_size": 8}, projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tokenizer=CLIPTokenizer(vocab=vocab, merges=merges)).save_pretrained(folder)
    return folder
