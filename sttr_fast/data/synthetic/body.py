"""The 25-joint NTU skeleton as a kinematic tree: rest pose, rotations, forward kinematics.

Body frame: metres, y up, the person faces -z, their right is +x, the pelvis (spine base, joint 0)
at the origin. A joint's local rotation turns everything below it in the tree.
"""
from __future__ import annotations

import numpy as np

NUM_JOINTS = 25
(SPINE_BASE, SPINE_MID, NECK, HEAD, L_SHOULDER, L_ELBOW, L_WRIST, L_HAND, R_SHOULDER, R_ELBOW,
 R_WRIST, R_HAND, L_HIP, L_KNEE, L_ANKLE, L_FOOT, R_HIP, R_KNEE, R_ANKLE, R_FOOT, SPINE_SHOULDER,
 L_HAND_TIP, L_THUMB, R_HAND_TIP, R_THUMB) = range(NUM_JOINTS)

# (joint, parent, offset from the parent in the rest pose: standing, arms hanging), parents first.
_TREE = (
    (SPINE_MID, SPINE_BASE, (0.0, 0.28, 0.0)),
    (SPINE_SHOULDER, SPINE_MID, (0.0, 0.22, 0.0)),
    (NECK, SPINE_SHOULDER, (0.0, 0.07, 0.0)),
    (HEAD, NECK, (0.0, 0.14, 0.01)),
    (L_SHOULDER, SPINE_SHOULDER, (-0.18, -0.03, 0.0)),
    (L_ELBOW, L_SHOULDER, (0.0, -0.28, 0.0)),
    (L_WRIST, L_ELBOW, (0.0, -0.25, 0.0)),
    (L_HAND, L_WRIST, (0.0, -0.07, 0.0)),
    (L_HAND_TIP, L_HAND, (0.0, -0.08, 0.0)),
    (L_THUMB, L_HAND, (0.025, -0.04, -0.03)),
    (R_SHOULDER, SPINE_SHOULDER, (0.18, -0.03, 0.0)),
    (R_ELBOW, R_SHOULDER, (0.0, -0.28, 0.0)),
    (R_WRIST, R_ELBOW, (0.0, -0.25, 0.0)),
    (R_HAND, R_WRIST, (0.0, -0.07, 0.0)),
    (R_HAND_TIP, R_HAND, (0.0, -0.08, 0.0)),
    (R_THUMB, R_HAND, (-0.025, -0.04, -0.03)),
    (L_HIP, SPINE_BASE, (-0.09, -0.06, 0.0)),
    (L_KNEE, L_HIP, (0.0, -0.42, 0.0)),
    (L_ANKLE, L_KNEE, (0.0, -0.40, 0.0)),
    (L_FOOT, L_ANKLE, (0.0, -0.05, -0.12)),
    (R_HIP, SPINE_BASE, (0.09, -0.06, 0.0)),
    (R_KNEE, R_HIP, (0.0, -0.42, 0.0)),
    (R_ANKLE, R_KNEE, (0.0, -0.40, 0.0)),
    (R_FOOT, R_ANKLE, (0.0, -0.05, -0.12)),
)
REST_OFFSETS = np.zeros((NUM_JOINTS, 3))
for _joint, _parent, _offset in _TREE:
    REST_OFFSETS[_joint] = _offset
ANKLE_HEIGHT = 0.08  # ankle above the floor when standing

# Each joint's mirror image across the body's midline (left <-> right).
MIRRORED_JOINT = np.arange(NUM_JOINTS)
for _left, _right in ((L_SHOULDER, R_SHOULDER), (L_ELBOW, R_ELBOW), (L_WRIST, R_WRIST),
                      (L_HAND, R_HAND), (L_HIP, R_HIP), (L_KNEE, R_KNEE), (L_ANKLE, R_ANKLE),
                      (L_FOOT, R_FOOT), (L_HAND_TIP, R_HAND_TIP), (L_THUMB, R_THUMB)):
    MIRRORED_JOINT[_left], MIRRORED_JOINT[_right] = _right, _left


def rotation_x(angle) -> np.ndarray:
    """(T, 3, 3) right-handed rotations about +x; positive lifts a hanging limb forward (-z)."""
    return _rotation(np.asarray(angle, dtype=np.float64), 1, 2)


def rotation_y(angle) -> np.ndarray:
    """(T, 3, 3) right-handed rotations about +y (vertical)."""
    return _rotation(np.asarray(angle, dtype=np.float64), 2, 0)


def rotation_z(angle) -> np.ndarray:
    """(T, 3, 3) right-handed rotations about +z; positive swings a hanging limb towards +x."""
    return _rotation(np.asarray(angle, dtype=np.float64), 0, 1)


def _rotation(angle: np.ndarray, first: int, second: int) -> np.ndarray:
    matrices = np.zeros(angle.shape + (3, 3))
    matrices[..., :, :] = np.eye(3)
    cos, sin = np.cos(angle), np.sin(angle)
    matrices[..., first, first], matrices[..., first, second] = cos, -sin
    matrices[..., second, first], matrices[..., second, second] = sin, cos
    return matrices


def forward_kinematics(local_rotations: dict[int, np.ndarray], frames: int,
                       bone_scale: np.ndarray) -> np.ndarray:
    """(T, 25, 3) joint positions, pelvis at the origin, from per-joint (T, 3, 3) local rotations
    (joints not given keep the rest pose) and a (25,) length factor for each joint's bone."""
    identity = np.broadcast_to(np.eye(3), (frames, 3, 3))
    orientation = {SPINE_BASE: local_rotations.get(SPINE_BASE, identity)}
    positions = np.zeros((frames, NUM_JOINTS, 3))
    for joint, parent, _ in _TREE:
        offset = REST_OFFSETS[joint] * bone_scale[joint]
        positions[:, joint] = positions[:, parent] + orientation[parent] @ offset
        orientation[joint] = orientation[parent] @ local_rotations.get(joint, identity)
    return positions


def mirrored(positions: np.ndarray) -> np.ndarray:
    """The left-right mirror image of (..., 25, 3) body-frame positions: the same action done
    with the other hand or foot."""
    return positions[..., MIRRORED_JOINT, :] * np.array([-1.0, 1.0, 1.0])


def stand_on_floor(positions: np.ndarray, lift=0.0) -> np.ndarray:
    """Shift each frame vertically so the lower ankle is ``ANKLE_HEIGHT`` above the floor (y = 0),
    plus ``lift`` (T,) for a body in the air."""
    lowest = positions[:, [L_ANKLE, R_ANKLE], 1].min(axis=1)
    return positions + (ANKLE_HEIGHT - lowest + lift)[:, None, None] * np.array([0.0, 1.0, 0.0])
