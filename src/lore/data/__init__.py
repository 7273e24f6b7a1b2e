from .datasets import FORMATS, ImageDataset, Splits, load_dataset, load_image
from .sampling import EpochBatchSampler, ShardedSampler, few_shot_indices, first_per_class
from .transforms import eval_transform, train_transform

__all__ = ["FORMATS", "ImageDataset", "Splits", "load_dataset", "load_image", "EpochBatchSampler",
           "ShardedSampler", "few_shot_indices", "first_per_class", "train_transform", "eval_transform"]
