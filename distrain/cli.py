"""The `distrain` command.

    distrain train CONFIG [key=value ...]                  train (one process, torchrun or srun); CONFIG is a
                                                           YAML file or a shipped config's name (xor)
    distrain eval CONFIG checkpoint=PATH [key=value ...]   evaluate a checkpoint (or a run directory's newest)
    distrain predict CONFIG checkpoint=PATH [split=test] [out=FILE] [key=value ...]
                                                           the model's outputs for every sample, in order
    distrain inspect PATH                                  print a checkpoint's metadata
    distrain export PATH --out FILE                        the model's weights as one plain state dict
    distrain plot RUN_DIR [RUN_DIR ...] [--out DIR]        loss and accuracy curves (PNG)
    distrain shards CONFIG OUT [--samples-per-shard N] [--format F] [key=value ...]
                                                           the config's data set written as shards
    distrain examples [copy WHAT [DEST]]                   list the shipped examples, or copy one out
    distrain init [DIR] [--slurm] [--launch]               a script and a config of your own to edit

Exit status: 0 success; 1 an unexpected error (with traceback); 2 a bad config, environment or file, or a
file that cannot be written (a message naming it, no traceback); 3 training diverged (NaN or Inf, with
trainer.on_nonfinite: stop); 4 a peer was lost (one line per surviving rank: the lost rank and the checkpoint
a restart resumes from); 5 the job hung or its ranks called different collectives (one message naming the
rank behind: distrain/launch/watchdog.py); 6 a worker whose launcher is gone could not save and stop in
time; 128+N stopped by signal N after saving a checkpoint.
torch is imported only by the commands that need it, so `distrain --help` is instant.
"""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distrain",
        description="Train PyTorch models with plain DDP, the same way in one process, under torchrun and under SLURM.",
    )
    from distrain.version import __version__

    parser.add_argument("--version", action="version", version=f"distrain {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = sub.add_parser("train", help="train from a YAML config")
    train.add_argument("config", help="a YAML config's path, or a shipped config's name (xor: configs/xor.yaml)")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.lr=0.05")
    evaluate = sub.add_parser("eval", help="evaluate a checkpoint on the test set (any number of ranks)")
    evaluate.add_argument("config", help="the run's YAML config")
    evaluate.add_argument(
        "overrides", nargs="*", metavar="key=value", help="checkpoint=PATH (required) and dotted overrides"
    )
    predict = sub.add_parser(
        "predict", help="write the model's outputs for every sample of a split (any number of ranks), in data set order"
    )
    predict.add_argument("config", help="the run's YAML config")
    predict.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="checkpoint=PATH (required), split=test|val|train, out=FILE (.pt or .csv; default "
        "<run.dir>/predictions-<split>.pt), and dotted overrides",
    )
    inspect = sub.add_parser("inspect", help="print a checkpoint's metadata without building the model")
    inspect.add_argument("path", help="a checkpoint (.pt file or sharded folder) or a run directory (its newest)")
    export = sub.add_parser(
        "export",
        help="write a checkpoint's model weights as one plain state dict (.pt, "
        "or .safetensors), from a .pt or a sharded checkpoint, for inference elsewhere",
    )
    export.add_argument("path", help="a checkpoint (.pt file or sharded folder) or a run directory (its newest)")
    export.add_argument("--out", required=True, help="output file: FILE.pt (torch.save) or FILE.safetensors")
    plot = sub.add_parser("plot", help="loss and accuracy curves of one or more runs (PNG)")
    plot.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (several: overlaid)")
    plot.add_argument("--out", help="output folder (default: RUN_DIR/plots for one run, ./plots for several)")
    shards = sub.add_parser(
        "shards",
        help="write the config's data set as shards (OUT/train, OUT/test) for data.name=shards or webdataset",
    )
    shards.add_argument("config", help="a YAML config whose data section names the data set")
    shards.add_argument("out", help="a new (or empty) folder: OUT/train and OUT/test are written into it")
    shards.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. data.args.root=data")
    shards.add_argument("--samples-per-shard", type=int, default=8192, metavar="N", help="samples in each shard")
    shards.add_argument(
        "--format",
        choices=("files", "webdataset"),
        default="files",
        help="files: distrain's .npy shards (data.name: shards); webdataset: .tar files of PNG images and "
        ".cls labels (data.name: webdataset)",
    )
    examples = sub.add_parser("examples", help="list the shipped configs, scripts, SLURM and launch files, or copy")
    actions = examples.add_subparsers(dest="action", metavar="ACTION")
    actions.add_parser("list", help="every shipped file (the default)")
    copy = actions.add_parser("copy", help="copy a shipped config, file or folder out, at the same relative path")
    copy.add_argument("what", help="a config's name (xor), a folder (configs, examples, slurm, launch) or a file")
    copy.add_argument("dest", nargs="?", default=".", help="where to copy to (default: the current folder)")
    init = sub.add_parser("init", help="write train.py and config.yaml of your own to edit (the XOR tutorial)")
    init.add_argument("dir", nargs="?", default=".", help="the folder to write into (default: the current one)")
    init.add_argument("--slurm", action="store_true", help="also the SLURM batch scripts, in DIR/slurm")
    init.add_argument(
        "--launch",
        action="store_true",
        help="also the launchers (torchrun, Accelerate, Kubernetes, TorchX, Ray), in DIR/launch",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    # Overrides may follow an option (`shards CONFIG OUT --samples-per-shard 100 key=value`): argparse
    # leaves those over, and only they (key=value words) are taken back.
    args, rest = parser.parse_known_args(argv)
    if rest and (not hasattr(args, "overrides") or any(w.startswith("-") or "=" not in w for w in rest)):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if rest:
        args.overrides = [*args.overrides, *rest]
    from distrain.errors import UserError, report_user_error

    try:
        if args.command == "train":
            return _train(args)
        if args.command == "eval":
            return _eval(args)
        if args.command == "plot":
            return _plot(args)
        if args.command == "predict":
            return _predict(args)
        if args.command == "export":
            return _export(args)
        if args.command == "shards":
            return _shards(args)
        if args.command == "examples":
            return _examples(args)
        if args.command == "init":
            return _init(args)
        return _inspect(args)
    except UserError as exc:
        report_user_error(exc)
        return exc.exit_code


def _config(args: argparse.Namespace) -> str:
    """The config argument's file: a path as given, or a shipped config's name (distrain.examples)."""
    from distrain.examples import resolve_config

    return resolve_config(args.config)


def _train(args: argparse.Namespace) -> int:
    from distrain.config.parse import load_config

    config = _config(args)
    cfg = _default_run_dir(load_config(config, args.overrides), config)
    from distrain.launch.signals import Interrupted
    from distrain.loop.trainer import train

    try:
        train(cfg)
    except Interrupted as exc:
        print(f"distrain: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


def _default_run_dir(cfg, config_path: str):
    """run.dir unset: runs/<config name> (a script's default, runs/<script name>, would be runs/distrain)."""
    import dataclasses

    from distrain.config.schema import default_run_dir

    if cfg.run.dir is not None:
        return cfg
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, dir=default_run_dir(config_path)))


def _eval(args: argparse.Namespace) -> int:
    from distrain.config.parse import load_config

    checkpoint, rest = _take(args.overrides, "checkpoint", required=True)
    cfg = load_config(_config(args), rest)
    from distrain.evaluate import evaluate_checkpoint

    evaluate_checkpoint(cfg, checkpoint)
    return 0


def _take(
    overrides: list[str], key: str, *, required: bool, default: str | None = None
) -> tuple[str | None, list[str]]:
    """The value of one `key=value` among the overrides, and the other overrides."""
    from distrain.errors import ConfigError

    found = [o for o in overrides if o.startswith(f"{key}=")]
    if len(found) > 1 or (required and not found):
        raise ConfigError(key, f"needs exactly one {key}=...")
    rest = [o for o in overrides if not o.startswith(f"{key}=")]
    return (found[0].partition("=")[2] if found else default), rest


def _predict(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from distrain.config.parse import load_config
    from distrain.launch.env import detect
    from distrain.prediction import predict, write_predictions

    checkpoint, rest = _take(args.overrides, "checkpoint", required=True)
    split, rest = _take(rest, "split", required=False, default="test")
    out, rest = _take(rest, "out", required=False)
    config = _config(args)
    cfg = _default_run_dir(load_config(config, rest), config)
    outputs = predict(cfg, checkpoint=checkpoint, split=split)
    if detect(os.environ).is_main:
        path = Path(out) if out else Path(cfg.run.dir) / f"predictions-{split}.pt"
        write_predictions(outputs, path)
        print(path)
    return 0


def _plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from distrain.reporting.plots import plot_runs

    runs = [Path(r) for r in args.run_dirs]
    out = Path(args.out) if args.out else (runs[0] / "plots" if len(runs) == 1 else Path("plots"))
    for path in plot_runs(runs, out):
        print(path)
    return 0


def _shards(args: argparse.Namespace) -> int:
    import dataclasses

    from distrain.config.parse import load_config
    from distrain.data.splits import build_splits
    from distrain.errors import ConfigError

    if args.samples_per_shard <= 0:
        raise ConfigError("--samples-per-shard", f"must be > 0, got {args.samples_per_shard}")
    cfg = load_config(_config(args), args.overrides)
    # The data set's own splits, whole: a validation hold-out (data.val_fraction) is the training run's.
    data = build_splits(dataclasses.replace(cfg.data, val_fraction=0.0), cfg.seed)
    if args.format == "webdataset":
        from distrain.data.webdataset import write_tar_splits

        print(write_tar_splits(data, args.out, args.samples_per_shard))
    else:
        from distrain.data.shard_files import write_splits

        print(write_splits(data, args.out, args.samples_per_shard))
    return 0


def _export(args: argparse.Namespace) -> int:
    from distrain.checkpoint.export import export_weights

    print(export_weights(args.path, args.out))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from distrain.checkpoint.inspection import inspect_checkpoint

    print(inspect_checkpoint(args.path))
    return 0


def _examples(args: argparse.Namespace) -> int:
    from distrain import examples
    from distrain.version import __version__

    if args.action == "copy":
        for path in examples.copy(args.what, args.dest):
            print(path)
        return 0
    print(f"shipped with distrain {__version__} (in {examples.root()}):")
    for name in examples.files():
        print(f"  {name}")
    print("train one by name: distrain train xor; copy one out: distrain examples copy xor .")
    return 0


def _init(args: argparse.Namespace) -> int:
    from pathlib import Path

    from distrain.starter import CONFIG, SCRIPT, write_starter

    for path in write_starter(args.dir, slurm=args.slurm, launch=args.launch):
        print(path)
    where = Path(args.dir)
    script, config = where / SCRIPT, where / CONFIG
    print(f"next: python {script} {config}   (or torchrun --standalone --nproc_per_node=2 {script} {config})")
    return 0
