"""Models for cxrlt: timm backbones, heads, study-level fusion with clinical context, losses and EMA.

Everything is built from dataclass configs and looked up by name in a registry (BACKBONES, HEADS,
LOSSES, MODELS), so a TOML file or `--set` override picks and tunes every part.
"""

from cxrlt.models.backbones import BACKBONES, Backbone, BackboneConfig, create_backbone, save_backbone_checkpoint
from cxrlt.models.context import ContextConfig
from cxrlt.models.ema import EmaConfig, create_ema
from cxrlt.models.factory import MODELS, ImageClassifier, ModelConfig, build_model, class_text_embeddings
from cxrlt.models.heads import HEADS, HeadConfig, LinearHead, MLDecoderHead, build_head
from cxrlt.models.losses import LOSSES, LossConfig, build_loss, schema_counts
from cxrlt.models.study import StudyConfig, StudyModel
from cxrlt.models.text import TextEncoder, TextEncoderConfig, default_text_encoder_path
from cxrlt.models.views import VIEW_TYPES, view_type_index

__all__ = [
    "BACKBONES",
    "HEADS",
    "LOSSES",
    "MODELS",
    "VIEW_TYPES",
    "Backbone",
    "BackboneConfig",
    "ContextConfig",
    "EmaConfig",
    "HeadConfig",
    "ImageClassifier",
    "LinearHead",
    "LossConfig",
    "MLDecoderHead",
    "ModelConfig",
    "StudyConfig",
    "StudyModel",
    "TextEncoder",
    "TextEncoderConfig",
    "build_head",
    "build_loss",
    "build_model",
    "class_text_embeddings",
    "create_backbone",
    "create_ema",
    "default_text_encoder_path",
    "save_backbone_checkpoint",
    "schema_counts",
    "view_type_index",
]
