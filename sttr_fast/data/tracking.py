"""Who is who across frames, for pose estimators that find people frame by frame.

OpenPose, MMPose and MediaPipe list the people of a frame in an order of their own that changes
from frame to frame (by size, by confidence), with no identities. Slotting people by that order,
as 2s-AGCN does with NTU's bodies, would swap persons whenever the order changes, so the readers in
``pose_formats.py`` follow people with the rule below (docs/data.md §9) before keeping the
most confident ones.

Rule, frame by frame: every track remembers where each of its joints was last seen. The distance
between a track and a detected person is the mean Euclidean distance, in frame-normalised
coordinates, over the joints seen both in the track and in the person (infinite when there is no
such joint). Pairs are matched greedily, closest first, among those under ``max_distance``; a person
left unmatched starts a new track. A person with no joint seen (every score 0) is dropped.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

DEFAULT_MATCH_DISTANCE = 0.1  # a tenth of the frame; people move far less than that between frames


def track_people(frames: Sequence[np.ndarray], max_distance: float = DEFAULT_MATCH_DISTANCE
                 ) -> np.ndarray:
    """Tracks (K, T, V, 3) from ``frames``: per frame a (P, V, 3) array of the people detected
    (x, y in frame-normalised units, score; a joint is seen when its score is above 0). Track k
    holds its person's joints in the frames it was matched in and zeros elsewhere; tracks are in
    the order they started (ties within a frame: the order the frame lists its people)."""
    if not frames:
        raise ValueError("track_people needs at least one frame")
    num_joints = frames[0].shape[1]
    last_position = np.zeros((0, num_joints, 2))   # per track, where each joint was last seen
    ever_seen = np.zeros((0, num_joints), dtype=bool)
    assignments = []                                # (frame, track, person) per match
    for t, people in enumerate(frames):
        seen = people[:, :, 2] > 0
        people, seen = people[seen.any(axis=1)], seen[seen.any(axis=1)]
        distance = _mean_distances(last_position, ever_seen, people[:, :, :2], seen)
        track_of = np.full(len(people), -1)
        for k, p in _closest_pairs_first(distance, max_distance):
            if track_of[p] < 0 and k not in track_of:
                track_of[p] = k
        for p in np.flatnonzero(track_of < 0):
            track_of[p] = len(last_position)
            last_position = np.concatenate([last_position, np.zeros((1, num_joints, 2))])
            ever_seen = np.concatenate([ever_seen, np.zeros((1, num_joints), dtype=bool)])
        for p, k in enumerate(track_of):
            last_position[k][seen[p]] = people[p, seen[p], :2]
            ever_seen[k] |= seen[p]
            assignments.append((t, k, people[p]))
    tracks = np.zeros((len(last_position), len(frames), num_joints, 3))
    for t, k, person in assignments:
        tracks[k, t] = person
    return tracks


def most_confident(tracks: np.ndarray, num_person: int) -> np.ndarray:
    """The ``num_person`` tracks of (K, T, V, 3) with the highest summed score over all frames and
    joints, highest first (ties: the earlier track), zero-padded when there are fewer."""
    order = np.argsort(-tracks[..., 2].sum(axis=(1, 2)), kind="stable")[:num_person]
    kept = np.zeros((num_person, *tracks.shape[1:]), dtype=tracks.dtype)
    kept[:len(order)] = tracks[order]
    return kept


def _mean_distances(track_positions, track_seen, positions, seen) -> np.ndarray:
    """(K, P) mean distance over the joints seen in both track k and person p; inf without one."""
    both = track_seen[:, None, :] & seen[None, :, :]
    gaps = np.linalg.norm(track_positions[:, None] - positions[None], axis=-1)
    counts = both.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(both, gaps, 0.0).sum(axis=-1) / counts
    return np.where(counts > 0, mean, np.inf)


def _closest_pairs_first(distance: np.ndarray, max_distance: float):
    """(track, person) pairs under ``max_distance``, closest first; equal distances in track, then
    person order."""
    tracks, people = np.nonzero(distance < max_distance)
    order = np.lexsort((people, tracks, distance[tracks, people]))
    return zip(tracks[order].tolist(), people[order].tolist())
