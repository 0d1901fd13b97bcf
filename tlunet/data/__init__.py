"""Data: loaders for the papers' layouts, tf.data pipelines with joint augmentation, phantoms.

Contract: 2D images come out as float32 (H, W, C) in [0, 1], masks as float32 (H, W, 1) holding
0/1 or class indices; loaders keep their source file lists (and per-case metadata) for reports.
"""

from tlunet.data.augment import AUGMENT_PRESETS, AugmentConfig, augment_pair, augment_volume
from tlunet.data.folders import LAYOUTS, find_class_folders, find_pairs, frames_by_group, list_files, read_frames
from tlunet.data.hc18 import HC18Record, fill_annotation, find_hc18, hc18_set, load_hc18_record, subject_of
from tlunet.data.io import DataError, image_channels, read_image, read_mask
from tlunet.data.lung_us import (RIB_CLASSES, LungUSFrame, find_lung_us_ribs, lung_us_groups, lung_us_ribs_set,
                                 read_frame_mask, unannotated_rib_lines)
from tlunet.data.nifti import NIFTI_LAYOUTS, find_nifti_pairs, hu_window, load_nifti, make_patch_dataset, resample, sample_patch
from tlunet.data.patches import hdf5_patch_set, read_hdf5_patches
from tlunet.data.pocus import find_pocus, pocus_video_folds, video_of
from tlunet.data.pipeline import (SegmentationSet, load_arrays, make_classification_dataset,
                                  make_dataset, resize_pair)
from tlunet.data.splits import (experiment_splits, fraction_indices, kfold_indices, split_by_subject, split_indices,
                                stratified_split)

__all__ = [
    "AUGMENT_PRESETS", "AugmentConfig", "DataError", "HC18Record", "LAYOUTS", "SegmentationSet",
    "augment_pair", "augment_volume", "fill_annotation", "find_class_folders", "find_hc18",
    "find_pairs", "find_nifti_pairs", "NIFTI_LAYOUTS", "frames_by_group", "hc18_set", "hu_window", "image_channels", "load_arrays", "load_hc18_record",
    "load_nifti", "make_classification_dataset", "make_dataset", "make_patch_dataset", "read_frames", "read_image", "read_mask", "resample",
    "resize_pair", "sample_patch", "split_by_subject", "split_indices", "subject_of", "experiment_splits",
    "fraction_indices", "kfold_indices", "stratified_split", "list_files",
    "RIB_CLASSES", "LungUSFrame", "find_lung_us_ribs", "lung_us_groups", "lung_us_ribs_set", "read_frame_mask",
    "unannotated_rib_lines",
    "hdf5_patch_set", "read_hdf5_patches", "find_pocus", "pocus_video_folds", "video_of",
]
