"""SynthEdit: a procedural video-editing world with exact ground truth (docs/synthedit.md).

Scenes of 1-3 moving, anti-aliased shapes in named colours over solid, gradient, stripes or
checker backgrounds; seven edit categories with several phrasings each; the target is rendered
from the same scene with only the edit applied, so the edit mask is exact.
"""

from datamodules.synthedit.datasets import SynthEditClips, SynthEditImagePairs, SynthEditPairs
from datamodules.synthedit.generator import (
    SPLITS,
    SynthEditGenerator,
    SynthEditSample,
    sample_seed,
)
from datamodules.synthedit.real_footage import (
    REAL_CATEGORIES,
    RealFootageClips,
    RealFootageGenerator,
    RealFootageImagePairs,
    RealFootagePairs,
    apply_global_edit,
)
from datamodules.synthedit.scenes import (
    CATEGORIES,
    HELDOUT_COMBOS,
    LOCAL_CATEGORIES,
    heldout_combos_in,
    is_heldout,
)
from datamodules.synthedit.world import BACKGROUND_COLORS, COLORS, SHAPES, SIZES, STYLES
from datamodules.synthedit.writer import synth_main, write_dataset

__all__ = [
    "BACKGROUND_COLORS",
    "CATEGORIES",
    "COLORS",
    "HELDOUT_COMBOS",
    "LOCAL_CATEGORIES",
    "REAL_CATEGORIES",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "STYLES",
    "RealFootageClips",
    "RealFootageGenerator",
    "RealFootageImagePairs",
    "RealFootagePairs",
    "SynthEditClips",
    "SynthEditGenerator",
    "SynthEditImagePairs",
    "SynthEditPairs",
    "SynthEditSample",
    "apply_global_edit",
    "heldout_combos_in",
    "is_heldout",
    "sample_seed",
    "synth_main",
    "write_dataset",
]
