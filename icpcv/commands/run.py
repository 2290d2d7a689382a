"""``icpcv run``: parse the options, build the RunConfig, call the pipeline (icpcv.run.pipeline)."""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from icpcv.cohort import geometry, volume_shape
from icpcv.cohort.phantom import ACQUISITIONS, CONFOUNDS, check_phantom_fits
from icpcv.cohort.intensity import TABLE_COLUMNS as INTENSITY_TABLE_COLUMNS
from icpcv.cohort.table import read_scan_csv, table_has_volumes
from icpcv.config import (DEFAULT_MODELS_LABELS, DEFAULT_MODELS_VOLUMES, OPTIMIZERS, PRECISIONS, PRESETS,
                          SALIENCY_METHODS, SHORTCUT_GRADS, TRAIN_OPTIONS, RunConfig, TrainConfig)
from icpcv.errors import InputError
from icpcv.folds import check_val_fraction
from icpcv.plausible import check_device, check_options
from icpcv.progress import Progress
from icpcv.util import parse_shape
from icpcv.writable import check_inputs_kept, check_run_outputs


#: the attribution methods (icpcv.explain.attribution.METHODS, spelled here: that module imports torch)
ATTRIBUTION_METHODS = ("gradient", "gradient_x_input", "integrated_gradients", "occlusion")


def _saliency_options(args) -> dict:
    """Issue 14: ``--saliency N``, ``--saliency-methods`` and ``--shortcut`` as RunConfig fields."""
    n = getattr(args, "saliency", 0) or 0
    if n < 0:
        raise InputError(f"--saliency {n}: give the number of held-out scans to map per monkey (0 = off)")
    methods = tuple(m.strip() for m in str(getattr(args, "saliency_methods", None) or ",".join(SALIENCY_METHODS))
                    .split(",") if m.strip())
    unknown = [m for m in methods if m not in ATTRIBUTION_METHODS]
    if unknown or not methods:
        raise InputError(f"--saliency-methods: unknown method(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(ATTRIBUTION_METHODS)}")
    shortcut = bool(getattr(args, "shortcut", False))
    if shortcut and args.manifest is not None:
        raise InputError("--shortcut plants a marker in the synthetic phantom; it does not apply to --manifest")
    return dict(saliency=int(n), saliency_methods=methods, shortcut=shortcut)


#: header columns that carry a scan's acquisition (the seed's and the plain format's; docs/acquisition.md)
ACQ_SOURCE_COLUMNS = ("scan area", "eyeball (od or os)", "scan date", "fov_x_mm", "eye", "acquired_at", "protocol")


def nuisance_defaults(manifest, has_volumes: bool, covariates=None) -> tuple[str, ...]:
    """Issue 19: the nuisance baselines whose inputs a scan table has: ``acq`` when its header names an
    acquisition field (or --covariates are given), ``image_stats`` when it has volumes or the seed's
    per-volume intensity columns (``*_pixel_intensity_y``)."""
    columns = set(read_scan_csv(Path(manifest)).columns)
    out = ()
    if columns & set(ACQ_SOURCE_COLUMNS) or covariates:
        out += ("acq",)
    if has_volumes or columns & set(INTENSITY_TABLE_COLUMNS):
        out += ("image_stats",)
    return out


def _acquisition_options(args) -> dict:
    """Issue 19: ``--acquisition``, ``--confound`` (the phantom's) and ``--covariates`` as RunConfig fields."""
    acquisition = getattr(args, "acquisition", None) or RunConfig.acquisition
    confound = getattr(args, "confound", None) or RunConfig.confound
    if args.manifest is not None and (acquisition != RunConfig.acquisition or confound != RunConfig.confound):
        raise InputError("--acquisition and --confound shape the synthetic phantom; they do not apply to --manifest "
                         "(a table's acquisition is read from its columns)")
    if acquisition == "realistic" and getattr(args, "shortcut", False):
        raise InputError("--shortcut and --acquisition realistic cannot be combined (the marker's box is placed on "
                         "the run's grid, a realistic scan is rendered on its own)")
    text = getattr(args, "covariates", None) or ""
    covariates = tuple(c.strip() for c in text.split(",") if c.strip())
    if len(set(covariates)) != len(covariates):
        raise InputError(f"--covariates names a column twice: {text}")
    return dict(acquisition=acquisition, confound=confound, covariates=covariates)


def _tune_options(args, models) -> dict:
    """Issue 21: ``--tune SPEC`` and ``--inner-folds K`` as RunConfig fields (absent: their defaults)."""
    from icpcv.models import CNNS, known_models, make_model  # lazy: start-up time (torch)
    from icpcv.tune.spec import parse_spec  # lazy: start-up time (only with --tune)

    spec_text, inner = getattr(args, "tune", None), getattr(args, "inner_folds", None)
    if spec_text is None:
        if inner is not None:
            raise InputError("--inner-folds applies to --tune; give --tune SPEC too")
        return {}
    if inner is not None and inner < 2:
        raise InputError(f"--inner-folds {inner}: give at least 2 (default: one inner fold per training monkey)")
    spec = parse_spec(spec_text, is_network=lambda m: m in CNNS, known_models=known_models())
    if spec.name in models:
        raise InputError(f"--tune: the tuned model's name {spec.name} is also in --models; name it otherwise "
                         "(a spec file's 'name')")
    check_val_fraction(args.val_fraction, [m for m in spec.models if make_model(m).stochastic])  # they early-stop
    return dict(tune=spec.to_dict(), inner_folds=inner)


def _shape(text: str) -> tuple[int, int, int]:
    return parse_shape(text, min_size=4, example="20x20x48")


def add_geometry_options(group) -> None:
    """``--fov-mm``, ``--depth-mm``, ``--mirror-os``, ``--axes`` (run and prepare; docs/acquisition.md)."""
    group.add_argument("--fov-mm", type=float, nargs=2, metavar=("X", "Y"),
                       help="crop every volume to this field of view in mm around the scan centre before resampling "
                            "(one voxel size in micrometres); smaller scans and line scans are skipped, never stretched")
    group.add_argument("--depth-mm", type=float, metavar="Z", help="... and to this depth in mm")
    group.add_argument("--mirror-os", action="store_true",
                       help="flip left eyes (OS) along X into the right eye's (OD) orientation")
    group.add_argument("--axes", help="the raw volumes' axis order when it is not X,Y,Z (Z = depth), e.g. ZYX for TIFF "
                                      "stacks whose pages hold depth along the columns")


def geometry_config(args) -> dict:
    """The geometry options as RunConfig / PrepareOptions fields, checked (InputError naming the option)."""
    fov = tuple(args.fov_mm) if getattr(args, "fov_mm", None) else None
    depth = getattr(args, "depth_mm", None)
    axes = getattr(args, "axes", None)
    problem = geometry.check_options(fov, depth, axes)
    if problem:
        raise InputError(problem)
    if axes and getattr(args, "manifest", "") is None:
        raise InputError("--axes declares the raw layout of a scan table's volume files; the synthetic phantom is "
                         "made as X, Y, Z already (use it with --manifest)")
    return dict(fov_mm=fov, depth_mm=depth, mirror_os=bool(getattr(args, "mirror_os", False)),
                axes=geometry.parse_axes(axes) if axes else None)


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="cross-validate models leave-one-monkey-out and write a report",
                       description="Train every model once per fold (each monkey held out in turn; the networks "
                                   "--repeats times), then analyse "
                                   "the out-of-fold predictions at the monkey level and write an HTML report. "
                                   "Without --manifest, runs on the built-in synthetic OCT cohort.")
    d = p.add_argument_group("data")
    d.add_argument("--manifest", help="scan table (CSV): the seed's format (id, monkey_id, iop, icp, torch_present, "
                                      "...) or the plain one (scan_id, subject, iop, icp, path)")
    d.add_argument("--scans", dest="scans_dir", help="seed format: folder holding <id>.pt volumes")
    d.add_argument("--phantom", help="synthetic cohort preset: small (CPU, default), tiny, seed (the default of "
                                     "--preset seed/fast)")
    d.add_argument("--signal", type=float, default=RunConfig.signal,
                   help="synthetic cohort: how much the scan carries about ICP (0 = negative control)")
    d.add_argument("--data-seed", type=int, default=RunConfig.data_seed, help="seed of the synthetic cohort")
    d.add_argument("--shape", type=_shape, help="volume shape X x Y x Z(depth), e.g. 20x20x48")
    d.add_argument("--skip-bad-scans", action="store_true", help="record unreadable volumes as skips, not errors")
    add_geometry_options(d)
    m = p.add_argument_group("models and folds")
    m.add_argument("--models", help="comma-separated: mean, ols_iop, ols_iop2, mixedlm_iop, ridge_scan, cnn, "
                                    "resnet10|18|34|50 (+ _nodil, _scanonly: e.g. resnet50_nodil), and the "
                                    "nuisance baselines acq, image_stats "
                                    "(default: mean,ols_iop,ridge_scan,cnn with volumes; "
                                    "mean,ols_iop,ols_iop2,mixedlm_iop for a labels-only table; each followed by "
                                    "acq and image_stats where the cohort has their inputs: docs/acquisition.md)")
    m.add_argument("--folds", type=int, help="number of folds (default: one per subject; fewer = grouped K-fold)")
    m.add_argument("--leakage-audit", action="store_true",
                   help="after the leave-one-monkey-out run, run the same models on a scan-level random K-fold "
                        "(K = the number of folds; leaky on purpose) in OUT/scan_split and set it beside the honest "
                        "run in stats.json and the report, with the optimism it shows")
    m.add_argument("--tune", metavar="SPEC",
                   help="choose a recipe inside each outer fold on inner folds of its training monkeys only, refit it "
                        "on them and predict the held-out monkey as model <model>_tuned; SPEC: e.g. "
                        "\"cnn: lr=1e-3,3e-4; epochs=20,40\", \"ridge_scan: alpha=0.1,10,1000\", \"resnet10 | resnet18\", "
                        "or a .toml/.json file (docs/tuning.md). Also reports every candidate's plain "
                        "leave-one-monkey-out MAE and how optimistic picking the best of them would be")
    m.add_argument("--inner-folds", type=int, metavar="K",
                   help="--tune: inner folds over each outer fold's training monkeys (default: one per monkey)")
    m.add_argument("--split", choices=["subjects", "scans"], help=argparse.SUPPRESS)  # the old spelling of the audit
    m.add_argument("--val-fraction", type=float, default=RunConfig.val_fraction,
                   help="share of training monkeys for early stopping")
    m.add_argument("--seed", type=int, default=RunConfig.seed, help="seed for folds, initialisation, shuffling, bootstrap")
    m.add_argument("--repeats", type=int,
                   help="train each network R times per fold (seeds from seed, fold and repeat; the baselines are "
                        "deterministic and trained once): every repeat's predictions are kept, the seed ensemble "
                        "(their mean) is analysed, and stats.json's training_variance says how much the verdict "
                        f"depends on the training seed (default {RunConfig.repeats}; --preset fast: "
                        f"{PRESETS['fast'].repeats})")
    t = p.add_argument_group("training")
    t.add_argument("--preset", choices=list(PRESETS),
                   help="GPU defaults: seed = the seed study's ResNet-50 at 128x128x512, Adamax 3e-4, batch 8, fp32; "
                        "fast = ResNet-18 at 64x64x256, bf16, batch 16 (explicit options win; see docs/gpu.md)")
    t.add_argument("--epochs", type=int, help=f"default {TrainConfig.epochs}")
    t.add_argument("--batch-size", type=int, help=f"default {TrainConfig.batch_size}")
    t.add_argument("--lr", type=float, help=f"default {TrainConfig.lr:g}")
    t.add_argument("--weight-decay", type=float, help=f"default {TrainConfig.weight_decay:g}")
    t.add_argument("--patience", type=int, help=f"early-stopping patience in epochs (default {TrainConfig.patience})")
    t.add_argument("--optimizer", choices=list(OPTIMIZERS), help=f"default {TrainConfig.optimizer} (fused on CUDA)")
    t.add_argument("--precision", choices=list(PRECISIONS),
                   help=f"{TrainConfig.precision} (default): bf16 autocast on CUDA where the GPU has native bf16, "
                        "fp32 otherwise")
    t.add_argument("--pretrained", metavar="PATH",
                   help="warm-start the 3D ResNets from a MedicalNet checkpoint or a state dict; refused when less "
                        "than 90%% of the backbone's tensors load")
    t.add_argument("--shortcut-grad", choices=list(SHORTCUT_GRADS), default=RunConfig.shortcut_grad,
                   help="ResNet-18/34's parameter-free shortcut A in the backward pass: standard (the gradient "
                        "flows through it, as in every ResNet) or medicalnet (detached, as MedicalNet's code does: "
                        "for a faithful replication of the seed; see docs/gpu.md)")
    t.add_argument("--no-augment", action="store_true")
    t.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1")
    # ---- issue 14: attribution maps
    x = p.add_argument_group("where the CNN looks (attribution maps)")
    x.add_argument("--saliency", type=int, default=RunConfig.saliency, metavar="N",
                   help="after each fold trains, map up to N held-out scans per monkey with every CNN (attribution "
                        "maps saved in the fold folder; on the phantom scored against the lamina band; report "
                        "section 'Where the CNN looks'); 0 (default) = off")
    x.add_argument("--saliency-methods", default=",".join(SALIENCY_METHODS),
                   help=f"comma-separated, from {', '.join(ATTRIBUTION_METHODS)} (default {','.join(SALIENCY_METHODS)})")
    x.add_argument("--shortcut", action="store_true",
                   help="synthetic cohort: plant the phantom's shortcut marker (a deep-corner box whose brightness "
                        "tracks ICP in half of the monkeys), to check that the maps find it")
    # ---- issue 19: the acquisition (the phantom's, and the nuisance baselines' covariates)
    q = p.add_argument_group("acquisition (docs/acquisition.md)")
    q.add_argument("--acquisition", choices=list(ACQUISITIONS), default=RunConfig.acquisition,
                   help="synthetic cohort: off (default: one field of view, grid and eye) or realistic (the seed "
                        "table's mix: 3-7 mm fields of view in per-monkey shares, two voxel grids, line scans, both "
                        "eyes in some monkeys, pressures set in order over the session's clock)")
    q.add_argument("--confound", choices=list(CONFOUNDS), default=RunConfig.confound,
                   help="synthetic cohort: none (default) or brightness (global brightness rises with the set ICP "
                        "level inside each monkey, the anatomy unchanged): a shortcut the nuisance baselines catch")
    q.add_argument("--covariates", metavar="COL,...",
                   help="table columns the acq nuisance baseline adds to protocol, eye and time in session "
                        "(numbers are standardised, text is one-hot coded)")
    a = p.add_argument_group("analysis")
    a.add_argument("--reference", help=f"baseline the others are compared against (default {RunConfig.reference}); "
                                       "must be one of --models")
    a.add_argument("--n-boot", type=int, default=RunConfig.n_boot)
    a.add_argument("--ci-level", type=float, default=RunConfig.ci_level)
    o = p.add_argument_group("execution")
    o.add_argument("--out", help="run directory (default: reports/<run-name>)")
    o.add_argument("--fresh", action="store_true", help="discard an existing run in --out and start over")
    o.add_argument("--executor", default="local", choices=["local", "processes", "slurm"])
    o.add_argument("--workers", type=int, default=1,
                   help="processes executor: folds side by side (one GPU each where there are GPUs)")
    o.add_argument("--threads", type=int,
                   help="torch CPU threads per fold (default: all cores for local, cores/workers for processes, "
                        "--cpus for slurm); predictions are bit-identical across executors at the same count")
    o.add_argument("--quiet", action="store_true", help="no progress output")
    o.add_argument("--log-file", help="also append progress lines to this file")
    s = p.add_argument_group("slurm executor")
    s.add_argument("--partition")
    s.add_argument("--time", type=int, default=240, help="minutes per fold task")
    s.add_argument("--gpus", type=int, default=0, help="GPUs per fold task")
    s.add_argument("--cpus", type=int, default=2, help="CPUs per fold task")
    s.add_argument("--mem", type=int, default=8, help="GB of memory per fold task")
    s.add_argument("--max-parallel", type=int, default=14, help="array tasks running at once")
    s.add_argument("--deadline", type=float,
                   help="minutes to wait for the tasks before cancelling them (default: every array wave using "
                        "its --time and 3 time-out requeues, plus an hour); a rerun resumes")
    p.set_defaults(func=cmd_run)


def build_config(args) -> RunConfig:
    from icpcv.models import check_models, is_resnet, make_model  # lazy: start-up time (torch)
    from icpcv.models.pretrained import check_pretrained  # lazy: start-up time (torch)

    if args.manifest is not None and not Path(args.manifest).exists():
        raise InputError(f"{args.manifest}: scan table not found")
    preset = PRESETS[args.preset] if getattr(args, "preset", None) else None
    # explicit options win over the preset's training set-up, which replaces TrainConfig's defaults
    train = replace(preset.train if preset else TrainConfig(),
                    **{k: getattr(args, k) for k in TRAIN_OPTIONS if getattr(args, k, None) is not None},
                    augment=not args.no_augment)

    repeats = getattr(args, "repeats", None)
    check_options({"--n-boot": args.n_boot, "--ci-level": args.ci_level, "--epochs": train.epochs,
                   "--batch-size": train.batch_size, "--lr": train.lr, "--weight-decay": train.weight_decay,
                   "--patience": train.patience, "--repeats": repeats, "--seed": args.seed,
                   "--data-seed": args.data_seed, "--signal": args.signal})
    if args.models is not None:
        models = tuple(check_models(args.models.split(",")))
        if not models:
            raise InputError(f"--models {args.models!r} names no model; give e.g. mean,ols_iop,ridge_scan,cnn")
    elif args.manifest is None:  # issue 19: the nuisance baselines join, after the others (their rows unchanged)
        models = DEFAULT_MODELS_VOLUMES + (("acq",) if getattr(args, "acquisition", None) == "realistic" else ()) \
            + ("image_stats",)
    else:  # through the table reader, so that an unreadable table is an InputError, not a traceback
        has_volumes = table_has_volumes(args.manifest, args.scans_dir)
        models = (DEFAULT_MODELS_VOLUMES if has_volumes else DEFAULT_MODELS_LABELS) \
            + nuisance_defaults(args.manifest, has_volumes, getattr(args, "covariates", None))
    if preset and not args.models and "cnn" in models:  # the preset's network takes the light CNN's place
        models = tuple(preset.model if m == "cnn" else m for m in models)
    stochastic = [m for m in models if make_model(m).stochastic]
    reference = getattr(args, "reference", None)
    if reference is not None and reference not in models:  # every fold would train, and nothing be compared
        raise InputError(f"--reference {reference} is not among --models ({','.join(models)}); the run could "
                         "compare no model with it: add it to --models or name another reference")
    if (getattr(args, "saliency", 0) or 0) > 0 and not stochastic:
        raise InputError(f"--saliency {args.saliency} maps where a network looks, but --models ({','.join(models)}) "
                         "has no network (cnn, resnet...); add one or drop --saliency")
    check_val_fraction(args.val_fraction, stochastic)  # the CNNs early-stop
    tune = _tune_options(args, models)  # issue 21
    tuned_stochastic = [c["model"] for c in (tune.get("tune") or {}).get("candidates", [])
                        if make_model(c["model"]).stochastic]  # --repeats applies to their outer fits
    if repeats is None:
        repeats = preset.repeats if preset else RunConfig.repeats
    if repeats > 1 and not stochastic and not tuned_stochastic:
        print(f"note: --repeats {repeats} ignored: no model in --models ({','.join(models)}) depends on training "
              "randomness, so each is trained once", file=sys.stderr)
        repeats = 1
    pretrained = getattr(args, "pretrained", None)
    if pretrained:
        if not Path(pretrained).is_file():
            raise InputError(f"{pretrained}: pretrained checkpoint not found")
        if not any(is_resnet(m) for m in models):
            raise InputError("--pretrained warm-starts the 3D ResNets (resnet10|18|34|50...), but none is in --models "
                             f"({','.join(models)})")
        pretrained = str(Path(pretrained).resolve())
        check_pretrained(pretrained, [m for m in models if is_resnet(m)])  # refuse a wrong file before any fold
    return RunConfig(manifest=str(Path(args.manifest).resolve()) if args.manifest else None,
                     scans_dir=str(Path(args.scans_dir).resolve()) if args.scans_dir else None,
                     phantom=args.phantom or (preset.phantom if preset else RunConfig.phantom), signal=args.signal,
                     data_seed=args.data_seed, models=models,
                     folds=args.folds, split="subjects", val_fraction=args.val_fraction, seed=args.seed,
                     shape=args.shape or (preset.shape if preset else None), train=train,
                     reference=reference or RunConfig.reference,
                     n_boot=args.n_boot, ci_level=args.ci_level, skip_bad_scans=args.skip_bad_scans,
                     pretrained=pretrained, shortcut_grad=getattr(args, "shortcut_grad", RunConfig.shortcut_grad),
                     preset=getattr(args, "preset", None), repeats=int(repeats),
                     **_saliency_options(args),  # issue 14
                     **_acquisition_options(args),  # issue 19
                     **geometry_config(args), **tune)  # issue 19, issue 21


def _check_device_present(device: str) -> None:
    """``--device cuda[:N]`` on a machine without that GPU: refused before the cohort is written."""
    if not str(device).startswith("cuda"):
        return
    import torch  # lazy: start-up time

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= n:
        raise InputError(f"--device {device}: " + (f"this machine has {n} CUDA device(s) (cuda:0 to cuda:{n - 1})"
                                                   if n else "CUDA is not available here; use --device cpu or auto"))


def cmd_run(args) -> int:
    from icpcv.run.pipeline import default_run_name, run  # lazy: start-up time (torch, statsmodels, matplotlib)

    if args.split == "scans":
        print("note: --split scans is now spelled --leakage-audit", file=sys.stderr)
    leakage_audit = args.leakage_audit or args.split == "scans"
    check_device(args.device)
    cfg = build_config(args)
    if cfg.synthetic and cfg.phantom not in ("small", "tiny", "seed"):
        raise InputError(f"unknown --phantom {cfg.phantom!r}; use small, tiny or seed")
    _check_device_present(args.device)
    out = Path(args.out) if args.out else Path("reports") / default_run_name(cfg)
    check_run_outputs(out, args.log_file, option="--out" if args.out else None)  # before any work
    inputs = [cfg.manifest, cfg.scans_dir, cfg.pretrained]  # nothing the user gave is overwritten
    check_inputs_kept(out, inputs, everything=args.fresh, option="--out")
    if args.log_file:
        check_inputs_kept(Path(args.log_file).parent, inputs, writes=(Path(args.log_file).name,), option="--log-file")
    if cfg.synthetic:  # a --shape whose phantom cannot be held (or stored): before any volume is drawn
        check_phantom_fits(cfg.phantom, volume_shape(cfg), out)
    progress = Progress("quiet" if args.quiet else "auto", log_file=args.log_file)
    slurm = dict(partition=args.partition, time=args.time, gpus=args.gpus, cpus=args.cpus, mem=args.mem,
                 max_parallel=args.max_parallel, deadline=args.deadline)
    try:
        progress.message(f"run directory: {out}")
        report = run(cfg, out, device=args.device, executor=args.executor, workers=args.workers, fresh=args.fresh,
                     progress=progress, slurm=slurm, threads=args.threads,
                     leakage_audit=leakage_audit)
    finally:
        progress.close()
    print(f"report: {report}")
    return 0
