"""Twelve procedural actions on the NTU skeleton, as joint-angle programs over time.

Each action maps ``(rng, u, amplitude)`` to the motion of its one or two persons: ``u`` (T,) is
the action's progress, 0 before it starts and 1 after it ends, so the sample's timing and speed
live in ``u``; ``amplitude`` scales the angles. Pairs that share poses differ in time or in a
limb (sit down / stand up are each other's reverse; wave and drink both raise the right hand;
clap, punch and hug all bring the arms forward), so a model needs both spatial and temporal
structure to tell them apart.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .body import (HEAD, L_ELBOW, L_HIP, L_KNEE, L_SHOULDER, NECK, R_ELBOW, R_HIP, R_KNEE,
                   R_SHOULDER, SPINE_MID, rotation_x, rotation_y, rotation_z)


@dataclass
class PersonMotion:
    """Local joint rotations (T, 3, 3), height above standing (T,), the direction the body faces
    (yaw about +y; 0 faces -z) and where the pelvis stands on the floor, (T, 2) x and z."""

    rotations: dict[int, np.ndarray] = field(default_factory=dict)
    lift: np.ndarray | float = 0.0
    facing: float = 0.0
    floor_position: np.ndarray | tuple[float, float] = (0.0, 0.0)

    def turn(self, joint: int, rotation: np.ndarray) -> None:
        """Add a rotation at ``joint`` after those already there."""
        self.rotations[joint] = (self.rotations[joint] @ rotation if joint in self.rotations
                                 else rotation)


def smoothstep(x) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def hold(u, ramp: float = 0.2) -> np.ndarray:
    """0 -> 1 over the first ``ramp`` of the action, 1, then back to 0 over the last ``ramp``."""
    return smoothstep(u / ramp) * smoothstep((1.0 - u) / ramp)


def cycle_phase(u, count: int) -> np.ndarray:
    """Phase in [0, 1) within each of ``count`` equal cycles of the action; 0 outside it."""
    return (np.clip(u, 0.0, 1.0) * count) % 1.0 * (u < 1.0)


def pulses(u, count: int) -> np.ndarray:
    """``count`` smooth 0 -> 1 -> 0 bumps spread over the action."""
    return np.sin(math.pi * cycle_phase(u, count)) ** 2


def _limb_pair(side: str):
    """(shoulder, elbow, hip, knee, outward sign): +x is the person's right."""
    if side == "right":
        return R_SHOULDER, R_ELBOW, R_HIP, R_KNEE, 1.0
    return L_SHOULDER, L_ELBOW, L_HIP, L_KNEE, -1.0


def raise_arm_forward(person, side, flexion, inward=0.0, elbow=0.0) -> None:
    """Arm lifted forward by ``flexion``, swung towards the midline by ``inward``, forearm bent up
    by ``elbow`` (all radians, arrays over time)."""
    shoulder, elbow_joint, _, _, outward = _limb_pair(side)
    person.turn(shoulder, rotation_y(-outward * np.asarray(inward)) @ rotation_x(flexion))
    person.turn(elbow_joint, rotation_x(elbow))


def lift_leg(person, side, hip_flexion, knee_flexion) -> None:
    _, _, hip, knee, _ = _limb_pair(side)
    person.turn(hip, rotation_x(hip_flexion))
    person.turn(knee, rotation_x(-np.asarray(knee_flexion)))  # the shin folds backwards


def wave(rng, u, amplitude):
    person, raised = PersonMotion(), hold(u)
    waves = rng.uniform(2.0, 4.0)
    swing = 0.45 * np.sin(2 * math.pi * waves * u + rng.uniform(0, 2 * math.pi))
    person.turn(R_SHOULDER, rotation_z(1.45 * amplitude * raised))       # arm out to the side
    person.turn(R_ELBOW, rotation_z((1.2 * amplitude + swing) * raised))  # forearm up, swinging
    return [person]


def clap(rng, u, amplitude):
    person, raised = PersonMotion(), hold(u)
    claps = rng.integers(3, 7)
    together = 0.5 + 0.5 * np.cos(2 * math.pi * claps * u)
    inward = (0.55 * together - 0.25 * (1 - together)) * raised
    for side in ("right", "left"):
        raise_arm_forward(person, side, 1.2 * amplitude * raised, inward, 0.5 * raised)
    return [person]


def kick(rng, u, amplitude):
    person = PersonMotion()
    phase = cycle_phase(u, rng.integers(1, 3))
    kicks = np.sin(math.pi * phase) ** 2
    chamber = np.sin(2 * math.pi * phase) ** 2  # knee bent on the way up and down, straight at the top
    lift_leg(person, "right", 1.25 * amplitude * kicks, 1.1 * chamber)
    person.turn(SPINE_MID, rotation_x(0.2 * kicks))  # lean back against the kick
    for side in ("right", "left"):
        shoulder, _, _, _, outward = _limb_pair(side)
        person.turn(shoulder, rotation_z(outward * 0.35 * kicks))
    return [person]


def bow(rng, u, amplitude):
    person = PersonMotion()
    bent = pulses(u, rng.integers(1, 3))
    person.turn(SPINE_MID, rotation_x(-0.95 * amplitude * bent))
    person.turn(NECK, rotation_x(-0.3 * bent))
    for shoulder in (R_SHOULDER, L_SHOULDER):
        person.turn(shoulder, rotation_x(0.8 * amplitude * bent))  # arms keep hanging down
    return [person]


def jump(rng, u, amplitude):
    person = PersonMotion()
    phase = cycle_phase(u, rng.integers(2, 5))
    airborne = np.where((phase > 0.3) & (phase < 0.7), np.sin(math.pi * (phase - 0.3) / 0.4), 0.0)
    crouch = np.where(phase <= 0.3, np.sin(math.pi * phase / 0.3) ** 2,
                      np.where(phase >= 0.7, np.sin(math.pi * (phase - 0.7) / 0.3) ** 2, 0.0))
    for side in ("right", "left"):
        lift_leg(person, side, 0.8 * crouch, 1.5 * crouch)
        raise_arm_forward(person, side, 2.3 * amplitude * airborne - 0.5 * crouch)
    person.turn(SPINE_MID, rotation_x(-0.35 * crouch))
    person.lift = 0.25 * amplitude * airborne
    return [person]


def _seated(person, seated, amplitude) -> None:
    """Hips and knees folded by ``seated`` in [0, 1], leaning forward while moving."""
    for side in ("right", "left"):
        lift_leg(person, side, 1.45 * amplitude * seated, 1.55 * amplitude * seated)
        raise_arm_forward(person, side, 0.35 * seated, 0.0, 0.6 * seated)
    person.turn(SPINE_MID, rotation_x(-0.5 * np.sin(math.pi * seated)))


def sit_down(rng, u, amplitude):
    person = PersonMotion()
    _seated(person, smoothstep(u), amplitude)
    return [person]


def stand_up(rng, u, amplitude):
    person = PersonMotion()
    _seated(person, 1.0 - smoothstep(u), amplitude)
    return [person]


def punch(rng, u, amplitude):
    person = PersonMotion()
    count = int(rng.integers(3, 7))
    guard = hold(u, 0.1)
    extension = np.sin(math.pi * cycle_phase(u, count)) ** 4
    right_turn = np.floor(np.clip(u, 0.0, 1.0) * count) % 2 == 0
    for side, active in (("right", right_turn), ("left", ~right_turn)):
        out = extension * active
        # guard: fists up in front of the chin; punch: the arm straight forward
        raise_arm_forward(person, side, (0.5 + 1.05 * out) * amplitude * guard,
                          0.35 * (1 - out) * guard, (1.9 - 1.85 * out) * guard)
    person.turn(SPINE_MID, rotation_y(0.3 * extension * np.where(right_turn, 1.0, -1.0)))
    return [person]


def march(rng, u, amplitude):
    person = PersonMotion()
    steps = rng.uniform(2.0, 4.0)
    stride = np.sin(2 * math.pi * steps * u + rng.uniform(0, 2 * math.pi)) * hold(u, 0.1)
    for side, lifted in (("right", np.maximum(stride, 0)), ("left", np.maximum(-stride, 0))):
        lift_leg(person, side, 1.1 * amplitude * lifted, 1.7 * amplitude * lifted)
    raise_arm_forward(person, "right", -0.5 * stride)  # arms swing against the legs
    raise_arm_forward(person, "left", 0.5 * stride)
    return [person]


def drink(rng, u, amplitude):
    person, raised = PersonMotion(), hold(u, 0.3)
    sips = 0.1 * np.sin(2 * math.pi * rng.uniform(1.0, 2.0) * u) * raised
    raise_arm_forward(person, "right", (0.75 + sips) * amplitude * raised, 0.45 * raised,
                      2.3 * raised)
    person.turn(NECK, rotation_x(0.35 * raised))  # head tilts back
    person.turn(HEAD, rotation_x(0.15 * raised))
    return [person]


def _facing_pair(distance) -> list[PersonMotion]:
    """Two persons facing each other along x, ``distance`` (T,) apart between their pelvises."""
    distance = np.asarray(distance)
    zeros = np.zeros_like(distance)
    first = PersonMotion(facing=-math.pi / 2, floor_position=np.stack([-distance / 2, zeros], -1))
    second = PersonMotion(facing=math.pi / 2, floor_position=np.stack([distance / 2, zeros], -1))
    return [first, second]


def hug(rng, u, amplitude):
    embrace = hold(u, 0.3)
    start = rng.uniform(1.0, 1.4)
    pair = _facing_pair(start - (start - 0.42) * embrace)
    for person in pair:
        for side in ("right", "left"):
            raise_arm_forward(person, side, 1.45 * amplitude * embrace, 0.75 * embrace,
                              0.9 * embrace)
        person.turn(SPINE_MID, rotation_x(-0.2 * embrace))
    return pair


def handshake(rng, u, amplitude):
    joined = hold(u, 0.3)
    start = rng.uniform(1.1, 1.4)
    pair = _facing_pair(start - (start - 0.85) * joined)
    shake = 0.15 * np.sin(2 * math.pi * rng.uniform(2.0, 4.0) * u) * joined
    for person in pair:
        raise_arm_forward(person, "right", (0.85 * amplitude + shake) * joined, 0.3 * joined,
                          0.6 * joined)
    return pair


ACTIONS = (
    ("wave", wave), ("clap", clap), ("kick", kick), ("bow", bow), ("jump", jump),
    ("sit down", sit_down), ("stand up", stand_up), ("punch", punch), ("march", march),
    ("drink", drink), ("hug", hug), ("handshake", handshake),
)
ACTION_NAMES = tuple(name for name, _ in ACTIONS)
