"""A user's script: the config's run, with OneCycleLR made by the user's function (fit(scheduler=...)).

    python tests/helpers/one_cycle.py CONFIG [overrides]
    torchrun ... tests/helpers/one_cycle.py CONFIG [overrides]

The same curve as the config's `schedule.name=one_cycle schedule.args.max_lr=0.5` (whose epochs and
steps_per_epoch come from the run), so the two ways must train bitwise alike.
"""

import sys

from torch.optim.lr_scheduler import OneCycleLR

import distrain


def one_cycle(cfg):
    steps_per_epoch = -(-cfg.data.args["num_train"] // cfg.data.global_batch_size)  # an uneven last batch counts
    return lambda optimizer: OneCycleLR(
        optimizer, max_lr=0.5, epochs=cfg.trainer.epochs, steps_per_epoch=steps_per_epoch
    )


def main(config, *overrides):
    cfg = distrain.load_config(config, list(overrides))
    distrain.fit(cfg, scheduler=one_cycle(cfg))


if __name__ == "__main__":
    distrain.run_main(main, *sys.argv[1:])
