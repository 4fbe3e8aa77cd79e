"""Built-in synthetic skeleton data: a learnable 12-class action dataset on the NTU skeleton and
raw ``.skeleton`` folders in NTU's exact format (for tests and timings of ``sttr prepare``)."""
from ..skeleton_file import write_skeleton
from .actions import ACTION_NAMES
from .dataset import SyntheticActionDataset, generate_actions
from .generate import NUM_CLASSES, action_in_world
from .raw import ntu_names, write_raw_dataset

__all__ = ["ACTION_NAMES", "NUM_CLASSES", "SyntheticActionDataset", "action_in_world",
           "generate_actions", "ntu_names", "write_raw_dataset", "write_skeleton"]
