"""Command line: ``langmim pretrain | finetune | eval | report | export | data | demo``."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import CheckpointError, ConfigError, DataError, LangmimError
from .eval.external_spec import is_external, parse_external
from .method_specs import METHODS

OVERRIDE_HELP = "config overrides as key=value, e.g. train.steps=100 model.arch=demo method=clip"
TARGET_FORMATS = ("mae", "mmseg", "detectron2", "beit")  # export_targets.TARGET_FORMATS, named here without torch
SEEDS_HELP = ("runs that report the same model name are seeds of one column, each cell 'mean +- half-width (n=K)' of "
              "the 95%% Student-t interval; a run's seed is the seed-K directory in its path (runs/clip/seed-0), else "
              "the train seed its results record")
COMPARE_HELP = ("verdict columns: A - B over paired seeds (seed k of A with seed k of B; a model with one run, e.g. "
                "random-init, is paired with every seed) with its 95%% interval and 'ahead', 'level' (the interval "
                "holds 0), 'behind' or 'cannot tell' (under two pairs), from a paired t-test")


def _presets() -> str:
    from .config import preset_names

    return ", ".join(preset_names())


def _method_settings() -> str:
    """Each registered method's own keys, from its spec."""
    from .config.keys import section_keys

    return "; ".join(f"{name}: " + (", ".join(section_keys(spec.settings(), f"{name}.")) if spec.settings else "none")
                     for name, spec in METHODS.items())


def _finetune_presets() -> str:
    from .config import preset_names

    return ", ".join(preset_names("finetune"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="langmim",
        description="Pre-train vision transformers by masked image modelling in a language semantic "
        "space (RILS, MILAN) beside MAE and CLIP baselines, and evaluate them.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("pretrain", help="pre-train one method; writes checkpoints, metrics and config.yaml",
                       description=f"Pre-train a method (method={'|'.join(METHODS)}) from a preset or YAML file "
                       "with key=value overrides. Run it under torchrun for several processes. Each method's own "
                       f"settings ({_method_settings()}).")
    p.add_argument("--config", default="demo", help=f"a packaged preset ({_presets()}) or a YAML file; default: demo")
    p.add_argument("--resume", default=None, metavar="latest|PATH",
                   help="'latest' continues from the newest checkpoint in output_dir (starting fresh if there "
                   "is none); a path continues from that checkpoint file")
    p.add_argument("--stop-after", type=int, default=None, metavar="STEP",
                   help="stop after this global step with a checkpoint (for time-boxed jobs); resume later")
    p.add_argument("--no-tensorboard", action="store_true", help="write metrics.jsonl only, no TensorBoard events")
    p.add_argument("--dry-run", action="store_true",
                   help="build the model, print parameter counts and training FLOPs per image, take one step on a "
                   "synthetic batch of 2, and exit (no data read, nothing written)")
    p.add_argument("overrides", nargs="*", help=OVERRIDE_HELP)

    f = sub.add_parser("finetune", help="fine-tune a pre-trained run's vision tower end to end (MAE's main_finetune.py); "
                       "writes checkpoints, metrics, config.yaml, model-best.pt and model-last.pt",
                       description="Fine-tune the vision tower of a pre-trained run (finetune.pretrained=RUN; or timm/MAE weights "
                       "with init.vision=FILE) with a new fc_norm and head on an image folder in ImageNet's layout "
                       "(finetune.dataset=imagefolder finetune.data_root=DIR with train/ and val/) or the built-in Fashion-MNIST "
                       "images, with MAE's recipe: RandAugment, mixup/cutmix, label smoothing, random erasing, layer-wise lr "
                       "decay, lr = blr x batch / 256 with warm-up and cosine per step. Validates every epoch. Run it under "
                       "torchrun for several processes. The run loads with `langmim eval --checkpoint RUN` (the fine-tuned "
                       "tower) and `langmim export RUN`.")
    f.add_argument("--config", default="finetune_demo",
                   help=f"a fine-tuning preset ({_finetune_presets()}) or a YAML file; default: finetune_demo")
    f.add_argument("--resume", default=None, metavar="latest|PATH",
                   help="'latest' continues from the newest checkpoint in output_dir (starting fresh if there is none); "
                   "a path continues from that checkpoint file")
    f.add_argument("--no-tensorboard", action="store_true", help="write metrics.jsonl only, no TensorBoard events")
    f.add_argument("--dry-run", action="store_true",
                   help="print the resolved recipe (with the lr used from blr), build the model, take one step on a synthetic "
                   "batch of 2 and exit (no data read, nothing written)")
    f.add_argument("overrides", nargs="*", help="config overrides as key=value, e.g. finetune.pretrained=runs/demo "
                   "finetune.epochs=10 finetune.blr=1e-4")

    e = sub.add_parser("eval", help="evaluate a checkpoint: classification, retrieval, scene probes, compositional "
                       "zero-shot, detection, segmentation, distribution shift",
                       description="Evaluate a checkpoint file or run directory on the built-in data: Fashion-MNIST "
                       "test images rendered as centred scenes (zeroshot, knn, linear, fewshot, finetune, finetune_lowshot), held-out "
                       "captioned scenes (retrieval, compositional), scenes with items, boxes and masks (presence, cells, binding, "
                       "counting, detection, segmentation, finetune_detection, finetune_segmentation) and shifted renders of the test "
                       "images (shift); writes one JSON per task. Tasks that need a text tower are skipped with a note for MAE and MILAN.")
    e.add_argument("--checkpoint", required=True,
                   help="a langmim checkpoint file or run directory (newest checkpoint), or an external model "
                   "with weights on disk: timm:MODEL:WEIGHTS or openclip:MODEL:WEIGHTS (MODEL local-dir: WEIGHTS is a "
                   "folder the library writes, e.g. langmim's export)")
    e.add_argument("--dataset", default=None, metavar="PATH|wds/NAME",
                   help="an image folder with train/ and val/ class sub-folders (classification tasks), a "
                   "CSV/TSV with image-path and caption columns (retrieval), or wds/NAME: a CLIP_benchmark "
                   "WebDataset set in --dataset-root (classification or retrieval); default: the built-in data")
    e.add_argument("--dataset-root", default=None, metavar="DIR",
                   help="the folder of a wds/NAME set (train/ and test/ shards, classnames.txt, "
                   "zeroshot_classification_templates.txt); {dataset} and {dataset_cleaned} are filled as "
                   "CLIP_benchmark fills them")
    e.add_argument("--tasks", default="zeroshot,knn,linear",
                   help="comma-separated: zeroshot, knn, linear, fewshot, finetune, finetune_lowshot, retrieval, presence, "
                   "cells, binding, counting, compositional, detection, segmentation, finetune_detection, finetune_segmentation, "
                   "shift, or 'all'")
    e.add_argument("--output", default=None, help="directory for the result JSONs; default: RUN/results "
                   "(runs/external/NAME-DIGEST/results for external models, DIGEST from the weights' path)")
    e.add_argument("--data-root", default=None, metavar="DIR",
                   help="where the built-in data's Fashion-MNIST files are; default: $LANGMIM_FASHION_MNIST, then "
                   "the run's data.root if it trained on fashion-scenes, then the standard places")
    e.add_argument("overrides", nargs="*", help="eval.* overrides, e.g. eval.probe_train_size=5000 "
                   "(data.root=DIR is the same as --data-root)")

    r = sub.add_parser("report", help="compile the results of several runs into one markdown table and PNG figures",
                       description="Read the result JSONs of each run (RUN/results, written by langmim eval or the "
                       "demo) and write report.md with one column per model (with --seeds, one per model over its "
                       "seed runs), margins over a floor and shares of a floor-to-ceiling gap, paired verdicts "
                       "(--compare), plus few-shot, retrieval and segmentation figures where those tasks were run.")
    r.add_argument("runs", nargs="+", metavar="RUN", help="run directories (or results directories)")
    r.add_argument("--output", default="runs/report", help="directory for report.md and the PNGs; default: runs/report")
    r.add_argument("--floor", default=None, metavar="MODEL",
                   help="a model's column (e.g. random-init) to print every other model's margin over, in points")
    r.add_argument("--ceiling", default=None, metavar="MODEL",
                   help="with --floor, a model's column (e.g. supervised): every other model's share of the "
                   "floor-to-ceiling gap, in percent ('n/a' when the gap is under 0.01 points)")
    r.add_argument("--seeds", action="store_true", help=SEEDS_HELP)
    r.add_argument("--compare", default=None, metavar="A:B[,C:D]", help=COMPARE_HELP)

    x = sub.add_parser("export", help="export a checkpoint for timm (vision tower), open_clip (CLIP/RILS), as safetensors, "
                       "or for MAE/MILAN, mmseg, detectron2 (ViTDet) and BEiT",
                       description="Write the vision tower as a timm local-dir folder (timm.create_model('local-dir:OUT', "
                       "pretrained=True)), a model with a text tower as an open_clip local-dir folder "
                       "(open_clip.create_model('local-dir:OUT')), or the whole state dict as safetensors with the "
                       "resolved config as metadata; or the vision tower renamed for MAE's/MILAN's main_finetune.py (mae), "
                       "mmsegmentation's MAE backbone (mmseg), detectron2's ViTDet (detectron2) or BEiT's fine-tuning "
                       "(beit), each with langmim_export.json and an example config for that library. The preprocessing "
                       "travels with every export.")
    x.add_argument("run", metavar="RUN", help="a checkpoint file or a run directory (newest checkpoint)")
    x.add_argument("--format", required=True, choices=("timm", "open_clip", "safetensors", "checkpoint", *TARGET_FORMATS),
                   help="what to write (checkpoint: a sharded checkpoint folder as one checkpoint-N.pt file)")
    x.add_argument("--out", default=None, metavar="PATH",
                   help="output folder (timm, open_clip, mae, mmseg, detectron2, beit) or file (safetensors, checkpoint); "
                        "default: RUN/export-FORMAT[.safetensors], for checkpoint the .pt beside the folder; a folder with "
                        "files in it is refused without --overwrite")
    x.add_argument("--overwrite", action="store_true",
                   help="write a folder export into a folder with files in it, replacing the export's own files there")
    x.add_argument("--image-size", type=int, default=None, metavar="PX",
                   help="mae, mmseg, detectron2, beit: the target recipe's input size, which sets the grid the position "
                        "table is resampled to (default: 224; mmseg 512, its ADE20K crop)")

    g = sub.add_parser("data", help="write the built-in data as WebDataset shards: training scenes (img2dataset "
                       "layout) or the evaluation sets (CLIP_benchmark layout); or preview a world as a PNG",
                       description="shards: render fashion-scenes (train-split items) into tar shards with {key}.png, "
                       "{key}.txt and {key}.json per sample, the layout img2dataset writes; train on them with "
                       "data.name=webdataset data.root='OUT/{00000..NNNNN}.tar'. clip-benchmark: write the built-in "
                       "evaluation sets as CLIP_benchmark WebDataset sets, OUT/fashion-mnist (classification: train/ and "
                       "test/) and OUT/fashion-scenes-captions (retrieval), read by `langmim eval --dataset wds/NAME "
                       "--dataset-root OUT/NAME` and by `clip_benchmark eval` alike.")
    g.add_argument("action", choices=("shards", "clip-benchmark", "preview"), help="what to write (preview: a PNG grid of "
                   "pre-training scenes of --world with their captions)")
    g.add_argument("--world", default="web", choices=("clean", "web"), help="preview: the world to draw (default web)")
    g.add_argument("--out", required=True, help="output folder")
    g.add_argument("--shard-size", type=int, default=None, help="samples per shard (default 1000 for shards, 10000 for clip-benchmark)")
    g.add_argument("--seed", type=int, default=0, help="shards: scene seed; clip-benchmark: the eval.seed whose train rows to write (default 0)")
    g.add_argument("--canvas", type=int, default=64, help="image side in pixels (default 64)")
    g.add_argument("--num-samples", type=int, default=10000, help="shards: scenes to write (default 10000)")
    g.add_argument("--plain-share", type=float, default=0.3, help="shards: share of plain single-item scenes (default 0.3)")
    g.add_argument("--train-size", type=int, default=60000,
                   help="clip-benchmark: Fashion-MNIST train rows, the ones the probes take at eval.probe_train_size=N (default all 60000)")
    g.add_argument("--test-size", type=int, default=10000, help="clip-benchmark: the first N test images, as eval.test_size=N (default all 10000)")
    g.add_argument("--retrieval-size", type=int, default=1000, help="clip-benchmark: held-out captioned scenes, as eval.retrieval_size=N (default 1000)")
    g.add_argument("--image-format", default="webp", choices=("webp", "png"), help="clip-benchmark: lossless image format (default webp, as CLIP_benchmark)")
    g.add_argument("--data-root", default=None, metavar="DIR", help="where the Fashion-MNIST files are (default: the standard places)")

    d = sub.add_parser("demo", help="pre-train RILS on the built-in scenes, evaluate, write runs/demo/report.md",
                       description="The laptop demo: pre-trains with the 'demo' preset (resuming an interrupted "
                       "run), evaluates it beside a random encoder of the same shape and writes report.md.")
    d.add_argument("overrides", nargs="*", help=OVERRIDE_HELP)
    return parser


def builtin_data_root(explicit: str | None, cfg) -> str | None:
    """Where evaluation finds Fashion-MNIST, whatever the run trained on: ``--data-root``, else
    the environment variable, else the run's own ``data.root`` if that was Fashion-MNIST, else
    the standard places (None lets ``find_fashion_mnist`` search them)."""
    import os

    from .data.fashion_mnist import ENV_VAR

    if explicit:
        return explicit
    if os.environ.get(ENV_VAR):
        return None
    return cfg.data.root if cfg.data.name == "fashion-scenes" else None


def require(path: str, what: str) -> None:
    """Refuse a path that is not there, in io's words, before torch (seconds to import) loads."""
    if not Path(path).exists():
        raise CheckpointError(f"{what} '{path}' does not exist")


def parse_tasks(text: str) -> list[str]:
    """``--tasks``: task names separated by commas, or 'all'."""
    from .eval.registry import TASK_NAMES

    tasks = list(TASK_NAMES) if text.strip() == "all" else [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASK_NAMES]
    if unknown or not tasks:
        raise ConfigError(f"--tasks: unknown task(s) {', '.join(unknown) or '(none given)'}; valid: {', '.join(TASK_NAMES)}, all")
    return tasks


def eval_overrides(items: Sequence[str], data_root: str | None) -> tuple[dict[str, Any], str | None]:
    """The eval.* overrides, checked against the default config, and the data root (``data.root=DIR``
    among them, else ``data_root``)."""
    from .config import Config, apply_dict, parse_override

    overrides = {}
    for item in items:
        key, value = parse_override(item)
        if key == "data.root":
            data_root = str(value)
        elif key.startswith("eval."):
            overrides[key] = value
        else:
            raise ConfigError(f"eval accepts eval.* overrides and data.root=DIR (the built-in data), got '{key}'")
    apply_dict(Config(), overrides, "command line")
    return overrides, data_root


def check_eval_paths(args: argparse.Namespace) -> None:
    """Refuse a langmim --checkpoint, --dataset or --dataset-root that is not there."""
    if not is_external(args.checkpoint):
        require(args.checkpoint, "checkpoint")
    wds = (args.dataset or "").startswith("wds/")
    if args.dataset and not wds and not Path(args.dataset).exists():
        raise DataError(f"--dataset '{args.dataset}' does not exist (expected an image folder with train/ and val/, a CSV/TSV "
                        "table, or wds/NAME)")
    if args.dataset_root and not wds:
        raise ConfigError(f"--dataset-root is the folder of a --dataset wds/NAME set; --dataset is {args.dataset!r}")
    if args.dataset_root and not Path(args.dataset_root).is_dir():
        raise DataError(f"--dataset-root '{args.dataset_root}' is not a folder")


def cmd_eval(args: argparse.Namespace) -> None:
    tasks = parse_tasks(args.tasks)  # mistakes in the arguments are named before torch loads
    overrides, data_root = eval_overrides(args.overrides, args.data_root)
    external = parse_external(args.checkpoint) if is_external(args.checkpoint) else None
    check_eval_paths(args)
    from .api import load, run_name
    from .config import Config, apply_dict
    from .eval.suite import evaluate

    if external is not None:
        from .eval.external import load_external

        model = load_external(args.checkpoint)
        name = model.source.replace(":", "-").replace("/", "-")
        default_out = Path("runs/external") / external.results_folder() / "results"
    else:
        model = load(args.checkpoint)
        name = run_name(model)
        default_out = Path(model.checkpoint_path).parent / "results"
    settings = model.config if model.config is not None else Config()  # an external model: the default eval.*
    apply_dict(settings, overrides, "command line")
    results = evaluate(model, tasks, settings.eval, Path(args.output) if args.output else default_out, name,
                       builtin_data_root(data_root, settings), dataset=args.dataset, dataset_root=args.dataset_root)
    print(json.dumps({t: r["metrics"] for t, r in results.items()}, indent=1))


def cmd_finetune(args: argparse.Namespace) -> None:
    from .config import load_config

    cfg = load_config(args.config, args.overrides, folder="finetune")  # config mistakes surface before torch is imported
    if cfg.finetune.pretrained:
        require(cfg.finetune.pretrained, "finetune.pretrained")
    from . import dist
    from .finetune.train import dry_run, finetune

    if args.dry_run:
        dry_run(cfg)
        return
    run_dir = finetune(cfg, resume=args.resume, log_tensorboard=not args.no_tensorboard)
    if dist.is_main():
        print(f"run directory: {run_dir}")


def export_out(args: argparse.Namespace) -> Path:
    """Where an export goes (--out, else beside the run), refused when it is a symbolic link (for the
    target libraries' formats), the wrong kind of thing, or a folder with files in it and no
    --overwrite: the export would replace a config.json, README.md or weights file someone else wrote there."""
    run, folder = Path(args.run), args.format in ("timm", "open_clip", *TARGET_FORMATS)
    run_dir = run if run.is_dir() and run.suffix != ".dcp" else run.parent  # the folder of a checkpoint file or sharded one
    out = Path(args.out) if args.out else run_dir / f"export-{args.format}{'' if folder else '.safetensors'}"
    if args.format in TARGET_FORMATS:
        from .files import refuse_link

        refuse_link(out)  # the weights, sidecar and config would land wherever the link points
    if folder and out.exists() and not out.is_dir():
        raise LangmimError(f"--out '{out}' is a file; a {args.format} export is a folder")
    if not folder and out.is_dir():
        raise LangmimError(f"--out '{out}' is a folder; a {args.format} export is one file")
    if folder and out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise LangmimError(f"--out '{out}' is a folder with files in it; export into a new or empty folder, or add --overwrite "
                           "to replace the export's files there")
    return out


def cmd_export(args: argparse.Namespace) -> None:
    require(args.run, "checkpoint")
    if args.image_size is not None and args.format not in TARGET_FORMATS:
        raise LangmimError(f"--image-size applies to --format {', '.join(TARGET_FORMATS)}, not {args.format}")
    if args.format == "checkpoint":
        from .io import atomic_save, load_checkpoint, resolve_checkpoint

        source = resolve_checkpoint(args.run)
        out = Path(args.out) if args.out else source.with_suffix(".pt")
        atomic_save(load_checkpoint(source), out, digest=True)
    else:
        out = export_out(args)
        from .api import load
        from .export import export

        export(load(args.run), args.format, out, image_size=args.image_size)
    print(f"exported: {out}")


def cmd_data(args: argparse.Namespace) -> None:
    if args.action == "preview":
        from .data.scenes.preview import preview_grid
        from .worlds import WebWorld

        out = Path(args.out)
        preview_grid(WebWorld() if args.world == "web" else None, canvas=args.canvas, seed=args.seed, root=args.data_root,
                     plain_share=args.plain_share).save(out)
        print(f"wrote {out}")
        return
    if args.action == "shards":
        from .data.shards import write_scene_shards

        shards = write_scene_shards(Path(args.out), args.num_samples, 1000 if args.shard_size is None else args.shard_size, args.seed, args.canvas,
                                    args.plain_share, root=args.data_root)
        print(f"wrote {len(shards)} shards: {shards[0].parent}/{{{shards[0].stem}..{shards[-1].stem}}}.tar")
        return
    from .data.benchmark_sets import write_builtin_sets

    counts = write_builtin_sets(Path(args.out), args.canvas, args.train_size, args.test_size, args.retrieval_size, args.seed,
                                args.data_root, args.image_format, 10000 if args.shard_size is None else args.shard_size)
    for split, count in counts.items():
        print(f"wrote {count} samples: {Path(args.out) / split}")


def parse_pairs(text: str | None) -> list[tuple[str, str]]:
    """``--compare A:B,C:D`` as [(A, B), (C, D)]."""
    pairs = [[name.strip() for name in item.split(":")] for item in (text or "").split(",") if item.strip()]
    if any(len(p) != 2 or not all(p) for p in pairs) or (text is not None and not pairs):
        raise ConfigError(f"--compare takes MODEL:MODEL pairs separated by commas, e.g. rils:clip,mae:random-init; got {text!r}")
    return [(a, b) for a, b in pairs]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse a command line; options may come before, between or after the key=value overrides."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    if not argv or argv[0] not in commands:
        return parser.parse_args(argv)  # help, a version of the usage error, or an unknown command
    args = commands[argv[0]].parse_intermixed_args(argv[1:])
    args.command = argv[0]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "pretrain":
            from .config import load_config
            from .method_specs import check_method_rules

            cfg = load_config(args.config, args.overrides)  # config mistakes, method rules included, surface before torch is imported
            check_method_rules(cfg)
            from . import dist
            from .engine.loop import pretrain

            if args.dry_run:
                from .engine.dryrun import dry_run

                dry_run(cfg)
                return 0
            run_dir = pretrain(cfg, resume=args.resume, log_tensorboard=not args.no_tensorboard, stop_after=args.stop_after)
            if dist.is_main():
                print(f"run directory: {run_dir}")
        elif args.command == "finetune":
            cmd_finetune(args)
        elif args.command == "eval":
            cmd_eval(args)
        elif args.command == "report":
            from .report import write_report

            report = write_report([Path(r) for r in args.runs], Path(args.output), args.floor, args.ceiling,
                                  parse_pairs(args.compare), args.seeds)
            print(f"report: {report}")
        elif args.command == "export":
            cmd_export(args)
        elif args.command == "data":
            cmd_data(args)
        elif args.command == "demo":
            from .demo import run_demo

            run_demo(args.overrides)
    except LangmimError as err:
        print(f"langmim: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        from .engine.interrupt import StoppedBySignal

        stopped = isinstance(err, StoppedBySignal)
        print(f"langmim: {err if stopped else 'interrupted; --resume latest continues from the last checkpoint'}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
