"""Where do batches come from? Data sets by name or the user's, the splits, the sharding sampler and
the batch sources.

    data = build_splits(cfg.data, seed)              # DataSets(train, test, val, num_classes, ...)
    info = describe_data(data, cfg.data.target_key)  # classes and shapes, before the model is built
    train = build_train_batches(data.train, ...)     # per-step batches of this rank's share (or a stream's)
    test = build_eval_batches(data.test, ...)        # this rank's disjoint slice of the test set
"""

from distrain.data.batches import Batch, EvalBatches, TrainBatches
from distrain.data.datasets import DataSets
from distrain.data.sampling import GlobalBatchSampler, eval_batch_ranges
from distrain.data.sources import build_eval_batches, build_train_batches
from distrain.data.splits import DataInfo, build_splits, describe_data, probe_batch

__all__ = [
    "Batch",
    "DataInfo",
    "DataSets",
    "EvalBatches",
    "GlobalBatchSampler",
    "TrainBatches",
    "build_eval_batches",
    "build_splits",
    "build_train_batches",
    "describe_data",
    "eval_batch_ranges",
    "probe_batch",
]
