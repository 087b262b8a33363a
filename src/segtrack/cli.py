"""The ``segtrack`` command. Imports neither torch nor any plugin's heavy dependency until a
command that trains runs."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from segtrack import __version__
from segtrack.errors import PeerLost, SegtrackError


def _settings_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("settings")
    group.add_argument("--config", metavar="FILE", help="TOML settings file layered over configs/settings.toml")
    group.add_argument("--env", metavar="NAME", help="settings environment: development (default), testing, production")
    group.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override one setting, e.g. --set train.epochs=3 (repeatable)",
    )
    group.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    return common


def build_parser(plugin_manager=None) -> argparse.ArgumentParser:
    common = _settings_options()
    parser = argparse.ArgumentParser(
        prog="segtrack",
        parents=[common],
        description="Train segmentation models with lifecycle hooks and plugins.",
        epilog="Set SEGTRACK_PLUGINS__AUTOLOAD=false to start without any installed plugin.",
    )
    parser.add_argument("--version", action="version", version=f"segtrack {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = sub.add_parser("train", parents=[common], help="train on the configured data")
    train.add_argument(
        "--resume", metavar="PATH|auto", help="continue from a checkpoint; auto = <checkpoint.dir>/last.pt if present"
    )
    train.set_defaults(handler=_train)

    cv = sub.add_parser("cv", parents=[common], help="k-fold cross-validation, one fit per fold")
    cv.add_argument("--folds", type=int, metavar="K", help="number of folds (default: data.folds)")
    cv.set_defaults(handler=_cv)

    predict = sub.add_parser("predict", parents=[common], help="write a mask per image from a checkpoint or ONNX file")
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="PATH", help="a segtrack checkpoint (e.g. checkpoints/best.pt)")
    source.add_argument("--onnx", metavar="PATH", help="a model exported by segtrack (exports/NAME.onnx)")
    predict.add_argument("--input", required=True, metavar="DIR", help="folder of images (PNG, JPEG, TIFF, .npy)")
    predict.add_argument("--out", required=True, metavar="DIR", help="folder for the masks (same names)")
    predict.add_argument("--overlay", action="store_true", help="also write NAME_overlay.png (image + mask)")
    predict.add_argument("--device", default="auto", help="checkpoint only: auto, cpu, cuda, cuda:N (default auto)")
    predict.set_defaults(handler=_predict)

    plugins = sub.add_parser("plugins", parents=[common], help="list plugins, models, datasets, hooks, load failures")
    plugins.add_argument("--json", action="store_true", help="print JSON")
    plugins.add_argument("--hooks", action="store_true", help="list every hook segtrack calls instead")
    plugins.set_defaults(handler=_plugins)

    if plugin_manager is not None:
        plugin_manager.call("cli_commands", subparsers=sub)
        for subparser in sub.choices.values():
            _adopt_common(subparser, common)
    return parser


def _adopt_common(parser: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    """Give plugin commands (and their subcommands) the settings options too."""
    existing = {a.dest for a in parser._actions}
    for action in common._actions:
        if action.dest not in existing:
            parser._add_action(action)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _adopt_common(child, common)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv in (["--version"], ["-V"]):
        print(f"segtrack {__version__}")
        return 0
    early, _ = _settings_options().parse_known_args(argv)
    logging.basicConfig(
        level=logging.INFO if early.verbose else logging.WARNING,
        format="segtrack: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        from segtrack.config.settings import read_settings, resolve_settings
        from segtrack.plugins.manager import get_plugin_manager

        settings = read_settings(early.config, early.env, early.overrides)  # every layer, nothing checked yet
        manager = get_plugin_manager(settings)
        parser = build_parser(manager)
        args = parser.parse_args(argv)
        if not getattr(args, "handler", None):
            parser.print_help()
            return 2
        if args.handler is _predict:
            _dims_from_the_model(settings)
        settings = resolve_settings(settings, manager)  # with every plugin's schema, once
        args.plugin_manager = manager
        code = args.handler(args, settings)
        return 0 if code is None else int(code)
    except (SegtrackError, PeerLost) as exc:
        print(f"segtrack: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("segtrack: interrupted", file=sys.stderr)
        return 130


def _train(args, settings) -> int:
    from segtrack.loop.trainer import SegmentationTrainer

    result = SegmentationTrainer(settings, plugin_manager=args.plugin_manager).fit(resume=args.resume)
    return 0 if result.status in ("completed", "stopped") else 1


def _cv(args, settings) -> int:
    from segtrack.loop.trainer import SegmentationTrainer

    result = SegmentationTrainer(settings, plugin_manager=args.plugin_manager).cv(folds=args.folds)
    return 0 if all(f.status in ("completed", "stopped") for f in result.folds) else 1


def _dims_from_the_model(settings) -> None:
    """predict reads the dimensionality from the checkpoint or ONNX file, not ``data.dims``: a
    per-axis ``infer.roi_size`` is checked against the model loaded, not against the default dims."""
    roi = (settings.get("infer") or {}).get("roi_size")
    if isinstance(roi, list) and len(roi) in (2, 3):
        settings.set("data.dims", len(roi))


def _predict(args, settings) -> int:
    from pathlib import Path

    from segtrack.inference.predict import check_source, from_checkpoint, from_onnx, predict_folder

    source = check_source(args.checkpoint, args.onnx)
    if args.checkpoint:  # secrets the checkpoint holds masked (a builder's token) come from this project
        predictor = from_checkpoint(source, args.device, {"model": dict(settings.get("model") or {})})
    else:
        predictor = from_onnx(source)
    # what the model was trained with is recorded in it; only what is set here for this prediction replaces it
    given = {override.split("=", 1)[0].strip() for override in args.overrides or ()}
    predictor.use_windows(settings.get("infer"), explicit=any(key.startswith("infer.") for key in given))
    if "data.normalize" in given:
        predictor.normalize = settings["data"]["normalize"]
    predict_folder(predictor, Path(args.input), Path(args.out), args.overlay)
    return 0


def _plugins(args, settings) -> int:
    from segtrack.models.registry import dataset_names, model_names
    from segtrack.plugins.manager import hook_names, hookspecs

    manager = args.plugin_manager
    if args.hooks:
        hooks = {name: (getattr(hookspecs, name).__doc__ or "").strip().splitlines()[0] for name in hook_names()}
        if args.json:
            print(json.dumps(hooks, indent=2))
        else:
            width = max(map(len, hooks))
            print("\n".join(f"{name:<{width}}  {summary}" for name, summary in hooks.items()))
        return 0
    plugins = [
        {
            "name": r.name,
            "source": r.source,
            "distribution": r.distribution,
            "version": r.version,
            "hooks": list(r.hooks),
        }
        for r in manager.plugin_info.values()
    ]
    failed = [{"name": f.name, "distribution": f.distribution, "error": f.error} for f in manager.load_failures]
    disabled = list(settings.get("plugins", {}).get("disabled", []))
    models, datasets = model_names(), dataset_names()
    if args.json:
        print(
            json.dumps(
                {"plugins": plugins, "failed": failed, "disabled": disabled, "models": models, "datasets": datasets},
                indent=2,
            )
        )
        return 0
    for p in plugins:
        origin = f"{p['distribution']} {p['version']}" if p["distribution"] else p["source"]
        print(f"{p['name']}  ({origin}, {p['source']})\n    hooks: {', '.join(p['hooks']) or '-'}")
    for f in failed:
        print(f"{f['name']}  FAILED TO LOAD ({f['distribution']}): {f['error']}")
    for name in disabled:
        print(f"{name}  disabled (plugins.disabled)")
    print("models (model.name):")
    print("\n".join(f"    {name}  {origin}" for name, origin in models.items()))
    print("datasets (data.source):")
    print("\n".join(f"    {name}  {origin}" for name, origin in datasets.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
