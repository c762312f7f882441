"""Data for sama-edit: clip and paired-edit datasets, SynthEdit, the streams, the latent cache.

See docs/data.md for the formats and docs/synthedit.md for the synthetic world.
"""

from datamodules.cache import precompute
from datamodules.clips import VIDEO_SUFFIXES, VideoClips
from datamodules.edit_pairs import IMAGE_SUFFIXES, EditPair, EditPairs
from datamodules.manifests import ManifestError
from datamodules.streams import READ_ERRORS, STREAMS, SamaDataModule, collate_items
from datamodules.synthedit import (
    SynthEditClips,
    SynthEditGenerator,
    SynthEditImagePairs,
    SynthEditPairs,
    write_dataset,
)
from sama.latent_cache import CachedCodec, CachedTextEncoder, LatentCache, tensor_key, text_key

__all__ = [
    "IMAGE_SUFFIXES",
    "READ_ERRORS",
    "STREAMS",
    "VIDEO_SUFFIXES",
    "CachedCodec",
    "CachedTextEncoder",
    "EditPair",
    "EditPairs",
    "LatentCache",
    "ManifestError",
    "SamaDataModule",
    "SynthEditClips",
    "SynthEditGenerator",
    "SynthEditImagePairs",
    "SynthEditPairs",
    "VideoClips",
    "collate_items",
    "precompute",
    "tensor_key",
    "text_key",
    "write_dataset",
]
