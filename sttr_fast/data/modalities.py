"""Input modalities of the 2s-AGCN family computed from joints, and what each stored file can give.

Bones follow the skeleton graph's inward edges (child - parent, the centre's bone is zero; by
default NTU RGB+D's, whose spine-shoulder joint 21 is the centre); motion is ``x[t + 1] - x[t]`` with
the last frame zero. Arrays are (C, T, V, M) or batches (N, C, T, V, M), numpy or torch.
"""
from __future__ import annotations

import numpy as np

from ..graph import ntu_graph

MODALITIES = ("joint", "bone", "joint_bone", "joint_motion", "bone_motion")
CHANNELS = {"joint": 3, "bone": 3, "joint_bone": 6, "joint_motion": 3, "bone_motion": 3}

# What a file of one stored kind can be turned into (a 6-channel joint_bone file holds the joints).
DERIVABLE = {
    "joint": MODALITIES,
    "joint_bone": MODALITIES,
    "bone": ("bone", "bone_motion"),
    "joint_motion": ("joint_motion",),
    "bone_motion": ("bone_motion",),
}


def ntu_bone_parents() -> np.ndarray:
    """(25,) 0-based parent of every NTU joint; joint 20 (spine shoulder) is its own parent."""
    return np.array(ntu_graph().bone_parents())


_NTU_PARENTS = ntu_bone_parents()


def bones(joints, parents=_NTU_PARENTS):
    """joint[v] - joint[parent[v]] for every joint v (the V axis, second from last); ``parents``
    as ``Graph.bone_parents()`` gives them."""
    if joints.shape[-2] != len(parents):
        raise ValueError(f"the joints have {joints.shape[-2]} joints per body but the skeleton "
                         f"graph's bones are for {len(parents)}")
    return joints - joints[..., list(parents), :]


def motion(x):
    """x[t + 1] - x[t] on the T axis (third from last), with a zero last frame."""
    moved = np.zeros_like(x) if isinstance(x, np.ndarray) else x.new_zeros(x.shape)
    moved[..., :-1, :, :] = x[..., 1:, :, :] - x[..., :-1, :, :]
    return moved


def check_modality(modality: str) -> None:
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")


def check_derivable(stored: str, wanted: str) -> None:
    check_modality(stored)
    check_modality(wanted)
    if wanted not in DERIVABLE[stored]:
        raise ValueError(f"cannot compute {wanted!r} from {stored!r} data; it can give "
                         f"{DERIVABLE[stored]} (a joint file gives every modality)")


def derive(x, stored: str, wanted: str, bone_parents=None):
    """The ``wanted`` modality of a sample holding the ``stored`` one (both names in MODALITIES);
    bones computed from joints follow ``bone_parents`` (default: NTU RGB+D's)."""
    check_derivable(stored, wanted)
    if stored == wanted:
        return x
    if stored == "bone":
        return motion(x)  # the only other choice for bones is bone_motion
    joints = x[..., :3, :, :, :]
    if wanted == "joint":
        return joints
    if wanted == "joint_motion":
        return motion(joints)
    parents = _NTU_PARENTS if bone_parents is None else bone_parents
    bone = x[..., 3:6, :, :, :] if stored == "joint_bone" else bones(joints, parents)
    if wanted == "bone":
        return bone
    if wanted == "bone_motion":
        return motion(bone)
    return _concatenate(joints, bone)


def _concatenate(first, second):
    if isinstance(first, np.ndarray):
        return np.concatenate([first, second], axis=-4)
    import torch

    return torch.cat([first, second], dim=-4)
