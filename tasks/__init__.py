"""Training tasks (objectives) for SAMA: pretext corruptions, reconstruction, edit pairs.

Every task is a :class:`~tasks.base.Task` (a clip-stream pretext task a
:class:`~tasks.base.ClipCorruptionTask`, which writes only its corruption); ``available_tasks()``
lists the built-ins (every public module of this package) and the tasks other packages publish
through the ``sama.tasks`` entry-point group.
"""

from tasks.base import (
    ClipCorruptionTask,
    EditSample,
    Task,
    TaskInfo,
    available_tasks,
    build_task,
    register_task,
    select_anchors,
    with_token,
)
from tasks.cube_inpainting import CubeInpainting, cube_inpaint
from tasks.instruction_editing import EDIT_PREFIX, InstructionEditing
from tasks.reconstruction import Reconstruction
from tasks.sampler import PRETRAIN_MIX, TaskSampler
from tasks.semantic_anchoring import SemanticAnchoring
from tasks.speed_perturbation import SpeedPerturbation, speed_perturb
from tasks.tube_shuffle import TubeShuffle, tube_shuffle, tube_unshuffle

__all__ = [
    "EDIT_PREFIX",
    "PRETRAIN_MIX",
    "ClipCorruptionTask",
    "CubeInpainting",
    "EditSample",
    "InstructionEditing",
    "Reconstruction",
    "SemanticAnchoring",
    "SpeedPerturbation",
    "Task",
    "TaskInfo",
    "TaskSampler",
    "TubeShuffle",
    "available_tasks",
    "build_task",
    "cube_inpaint",
    "register_task",
    "select_anchors",
    "speed_perturb",
    "tube_shuffle",
    "tube_unshuffle",
    "with_token",
]
