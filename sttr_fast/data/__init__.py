"""Skeleton data: NTU RGB+D raw files to 2s-AGCN arrays (``sttr prepare``), Datasets over the
formats users have, modalities, augmentations, and built-in synthetic data."""
from .augmentation import Augmentation
from .body_selection import select_bodies
from .datasets import AGCNDataset, CTRGCNDataset, PysklDataset, SkeletonDataset
from .modalities import MODALITIES, bones, derive, motion
from .normalisation import pre_normalise
from .ntu_samples import official_missing_samples, parse_sample_name, read_missing_list
from .prepare import PrepareSettings, prepare_ntu
from .skeleton_file import RawSkeleton, SkeletonParseError, read_skeleton, write_skeleton
from .synthetic import SyntheticActionDataset

__all__ = ["AGCNDataset", "Augmentation", "CTRGCNDataset", "MODALITIES", "PrepareSettings",
           "PysklDataset", "RawSkeleton", "SkeletonDataset", "SkeletonParseError",
           "SyntheticActionDataset", "bones", "derive", "motion", "official_missing_samples",
           "parse_sample_name", "pre_normalise", "prepare_ntu", "read_missing_list",
           "read_skeleton", "select_bodies", "write_skeleton"]
