"""Where do batches come from? Data sets by name, the sharding sampler and the batch sources.

    data = build_datasets(cfg.data, seed)            # DataSets(train, test, num_features, num_classes)
    train = build_train_batches(data.train, ...)     # per-step batches of this rank's shard
    test = build_eval_batches(data.test, ...)        # this rank's disjoint slice of the test set
"""

from distrain.data.batches import Batch, EvalBatches, TrainBatches, build_eval_batches, build_train_batches
from distrain.data.datasets import DataSets, build_datasets
from distrain.data.sampling import GlobalBatchSampler, eval_batch_ranges

__all__ = [
    "Batch", "DataSets", "EvalBatches", "GlobalBatchSampler", "TrainBatches", "build_datasets",
    "build_eval_batches", "build_train_batches", "eval_batch_ranges",
]
