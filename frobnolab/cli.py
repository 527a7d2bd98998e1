"""The ``frobnolab`` command: one subcommand per stage of a run.

Bad input (a malformed family file, an impossible option) exits with status 2 and one short line naming the file,
the field and the reason; nothing is written.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import textwrap


def _cmd_families(args) -> int:
    from frobnolab.scenes import load_family, shipped_families

    if args.action == "list":
        for name in shipped_families():
            fam = load_family(name)
            print(f"{name:10s} {textwrap.shorten(fam.description, 100)}")
        return 0
    if not args.name:
        raise ValueError("families describe: give a family name or file")
    fam = load_family(args.name)
    print(f"# {fam.name}  ({fam.path})\n")
    print(fam.source)
    return 0


def _ray_config(args):
    if args.ray is None:
        return None
    from frobnolab.scenes.cluster import RayConfig

    return RayConfig(address=args.ray, workers=args.workers)


def _cmd_render(args) -> int:
    from frobnolab.scenes.dataset import RenderConfig, render_dataset

    cfg = RenderConfig(family=args.family, n=args.n, size=args.size, seed=args.seed, shard_size=args.shard_size)
    out = render_dataset(cfg, args.out, workers=args.workers, force=args.force, progress=not args.quiet,
                         command=shlex.join(["frobnolab"] + sys.argv[1:]), ray=_ray_config(args))
    print(f"dataset: {out}")
    return 0


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _cmd_train_ae(args) -> int:
    from frobnolab.models.conv_ae import ConvAEConfig
    from frobnolab.models.train import TrainAEConfig, train_autoencoder

    cfg = TrainAEConfig(model=ConvAEConfig(channels=args.channels, latent_channels=args.latent_channels),
                        steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device)
    rec = train_autoencoder(args.dataset, args.out, cfg, progress=not args.quiet)
    ev = rec["evaluation"]
    print(f"model: {args.out}  (held-out PSNR {ev['psnr']:.2f} dB, SSIM {ev['ssim']:.3f})")
    return 0


def _cmd_train_field(args) -> int:
    from frobnolab.models.field import FieldConfig
    from frobnolab.models.train import TrainFieldConfig, train_field

    cfg = TrainFieldConfig(model=FieldConfig(hidden=args.hidden, layers=args.layers, n_freqs=args.freqs),
                           mode=args.mode, steps=args.steps, max_seconds=args.max_seconds, lr=args.lr, seed=args.seed,
                           device=args.device, samples_per_ray=args.samples, importance_samples=args.importance)
    rec = train_field(args.dataset, args.out, cfg, progress=not args.quiet)
    ev = rec["evaluation"]
    print(f"model: {args.out}  (held-out PSNR {ev['psnr']:.2f} dB, occupancy IoU {ev['occupancy_iou']:.3f})")
    return 0


def _cmd_extract(args) -> int:
    from frobnolab.analysis.store import ActivationStore, ExtractConfig, extract

    cfg = ExtractConfig(model=args.model, dataset=args.dataset, hooks=tuple(args.hooks.split(",")) if args.hooks else (),
                        split=args.split, batch_size=args.batch_size, tokens_per_image=args.tokens_per_image,
                        seed=args.seed, device=args.device)
    if args.workers and args.ray is None:
        raise ValueError("extract --workers: only with --ray (a local extraction runs in this process)")
    out = extract(cfg, args.out, force=args.force, progress=not args.quiet, ray=_ray_config(args))
    store = ActivationStore(out)
    for h in store.hooks:
        t = store[h]
        print(f"{h}: {len(t)} tokens of {t.d_in} channels")
    print(f"store: {out}")
    return 0


def _cmd_hooks(args) -> int:
    from frobnolab.models.io import load_model

    model = load_model(args.model)
    for h in model.hook_points:
        print(f"{h.name:14s} {h.path:28s} {h.meaning}")
    return 0


def _sae_config(args, hook_required=True):
    from frobnolab.analysis.presets import preset
    from frobnolab.analysis.sae import SAETrainConfig

    fields = preset(args.preset) if args.preset else {}
    for opt, name in (("hook", "hook"), ("architecture", "architecture"), ("width", "width"), ("k", "k"),
                      ("sparsity", "sparsity"), ("tokens", "training_tokens"), ("batch_size", "batch_size"),
                      ("lr", "lr"), ("lr_schedule", "lr_schedule"), ("normalize", "normalize"), ("seed", "seed"),
                      ("device", "device")):
        v = getattr(args, opt, None)
        if v is not None:
            fields[name] = v
    if "hook" not in fields:
        raise ValueError("give --hook (or a preset that names one)")
    return SAETrainConfig(**fields)


def _cmd_train_sae(args) -> int:
    from frobnolab.analysis.sae import train_sae

    rec = train_sae(args.store, args.out, _sae_config(args), progress=not args.quiet)
    ev = rec["evaluation"]
    print(f"sae: {args.out}/sae  (held-out explained variance {ev['explained_variance']:.3f}, L0 {ev['l0']:.1f}, "
          f"dead {ev['dead_fraction']:.1%}, fidelity {ev['fidelity_zero']:.3f})")
    return 0


def _cmd_sweep_sae(args) -> int:
    from frobnolab.analysis.sweep import run_sweep, sweep_configs

    base = _sae_config(args)
    runs = sweep_configs(base, args.architectures.split(","), _ints(args.widths), _ints(args.ks),
                         [float(v) for v in args.sparsities.split(",")])
    rows = run_sweep(args.store, args.out, runs, progress=not args.quiet)
    for r in rows:
        print(f"{r['run']:32s} L0 {r['l0']:7.2f}  EV {r['explained_variance']:.3f}  fidelity {r['fidelity_zero']:.3f}")
    print(f"frontier: {args.out}/frontier.png")
    return 0


def _cmd_score(args) -> int:
    from frobnolab.analysis.score import ScoreConfig, score_sae

    cfg = ScoreConfig(holdout_concepts=tuple(args.holdout.split(",")) if args.holdout else (),
                      max_tokens=args.max_tokens, n_null=args.nulls, causal_top=args.causal_top,
                      causal_images=args.causal_images, bootstrap=args.bootstrap, seed=args.seed, device=args.device)
    s = score_sae(args.store, args.sae, args.out, cfg, hook=args.hook, progress=not args.quiet,
                  other_sae=args.other_sae, log=(lambda *_: None) if args.quiet else print)
    d = s["dictionary"]
    print(f"{s['tokens']} held-out tokens, {s['alive']}/{s['features']} features alive; MCC {d['mcc']:.3f}; "
          f"{s['candidates']} frobnoloid candidate(s)")
    for name, r in s.get("heldout_recovery", {}).items():
        print(f"held-out {name}: {r['tracking_features']} tracking feature(s), recall {r['recall']:.2f}, "
              f"precision {r['precision']:.2f}")
    print(f"scores: {args.out}/features.parquet  summary: {args.out}/summary.json  report: {args.out}/report.md")
    return 0


def _cmd_validate_scorer(args) -> int:
    from pathlib import Path

    from frobnolab.analysis.planted import validate_scorer
    from frobnolab.scenes.dataset import RenderConfig, render_dataset

    data = args.dataset or render_dataset(RenderConfig("clutter", n=args.n, size=64, seed=args.seed),
                                          Path(args.out) / "render", progress=not args.quiet)
    r = validate_scorer(data, args.out, progress=not args.quiet, seed=args.seed)
    for u in r["units"]:
        mark = {True: "ok  ", False: "FAIL", None: "    "}[u["ok"]]
        print(f"{mark} {u['name']:20s} {u['kind']:11s} best named {u['named']:12s} ({u['named_r2']:.2f})  pair "
              f"{u['pair']:24s} ({u['pair_r2']:.2f})  scene {u['scene_r2']:.2f}  frob {u['frob']:.3f} "
              f"(rank {u['frob_rank']})")
    print(f"attributed {r['attributed']}/{r['attributable']} ({r['attribution_rate']:.0%}); nameless unit ranked "
          f"{r['nameless_rank']}; noise at null: {r['noise_at_null']}  ->  {'PASSED' if r['passed'] else 'FAILED'}")
    return 0 if r["passed"] else 1


def _cmd_gallery(args) -> int:
    from frobnolab.analysis.gallery import build_gallery

    out = build_gallery(args.run_dir, args.out, n_pages=args.pages, progress=not args.quiet)
    print(f"gallery: {out / 'index.html'}")
    return 0


def _cmd_quickstart(args) -> int:
    """The main job, end to end on an embedded default."""
    import os
    from pathlib import Path

    from frobnolab.analysis.pipeline import QUICKSTART_PRESETS, run_quickstart

    taesd = args.taesd or os.environ.get("FROBNOLAB_TAESD_DIR")
    run = Path(args.out)
    times = run_quickstart(QUICKSTART_PRESETS[args.preset], run, taesd=taesd, workers=args.workers,
                           progress=not args.quiet)
    print(f"\nrun folder: {run}   ({sum(times.values()):.0f} s in all)")
    print(f"  images and ground truth: {run / 'render' / 'preview.png'}")
    print(f"  autoencoder:             {run / 'ae' / 'training.json'}")
    print(f"  SAE (sae-lens format):   {run / 'sae' / 'sae'}   metrics: {run / 'sae' / 'training.json'}")
    print(f"  feature scores:          {run / 'scores' / 'report.md'}   table: {run / 'scores' / 'features.parquet'}")
    print(f"  feature gallery:         {run / 'gallery' / 'index.html'}   notebook: analysis/gallery.ipynb "
          f"(FROBNOLAB_RUN={run})")
    if not taesd:
        print("  (give --taesd DIR or $FROBNOLAB_TAESD_DIR to study TAESD too)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="frobnolab", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    f = sub.add_parser("families", help="list the shipped scene families, or print one",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    f.add_argument("action", choices=["list", "describe"], nargs="?", default="list",
                   help="list: one line per shipped family; describe: print a family's file")
    f.add_argument("name", nargs="?", help="family name or file, for describe")
    f.set_defaults(run=_cmd_families)

    r = sub.add_parser("render", help="render a scene family into a dataset with exact ground truth",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    r.add_argument("family", help="a shipped family name (see `frobnolab families`) or a family file (.yaml/.toml)")
    r.add_argument("--n", type=int, default=64, help="number of images")
    r.add_argument("--size", type=int, default=None, help="image side in pixels (default: the family's)")
    r.add_argument("--seed", type=int, default=0, help="dataset seed; same family + seed gives identical bytes")
    r.add_argument("--out", required=True, help="dataset folder to write (made atomically)")
    r.add_argument("--workers", type=int, default=0,
                   help="render processes (Ray actors with --ray); 0 = one per core, 1 = in-process")
    r.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run the shards on Ray: alone, a local Ray started here; or a cluster's address "
                        "(auto, HOST:PORT, ray://HOST:10001). Needs pip install 'frobnolab[ray]'")
    r.add_argument("--shard-size", type=int, default=16, help="images per shard (chunk, work and resume unit)")
    r.add_argument("--force", action="store_true", help="replace a different dataset already at --out")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(run=_cmd_render)

    def common(sp, device=True):
        sp.add_argument("--seed", type=int, default=0, help="seed of initialisation and sampling")
        if device:
            sp.add_argument("--device", default="cpu", help="cpu or cuda")
        sp.add_argument("--quiet", action="store_true", help="no progress bar")

    fmt = argparse.ArgumentDefaultsHelpFormatter
    t = sub.add_parser("train-ae", help="train the small convolutional autoencoder on a dataset", formatter_class=fmt)
    t.add_argument("dataset", help="dataset folder (frobnolab render)")
    t.add_argument("--out", required=True, help="model folder to write (model.safetensors, model.json, training.json)")
    t.add_argument("--channels", type=_ints, default=(16, 32, 64), help="encoder block channels, e.g. 16,32,64")
    t.add_argument("--latent-channels", type=int, default=8, help="channels of the bottleneck code")
    t.add_argument("--steps", type=int, default=1500, help="optimiser steps")
    t.add_argument("--batch-size", type=int, default=32, help="images per step")
    t.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate")
    common(t)
    t.set_defaults(run=_cmd_train_ae)

    t = sub.add_parser("train-field", help="train a NeRF-style coordinate field on a single-scene dataset",
                       formatter_class=fmt)
    t.add_argument("dataset", help="dataset folder of one scene from many views (e.g. family `single`)")
    t.add_argument("--out", required=True, help="model folder to write")
    t.add_argument("--mode", choices=["volume", "direct", "both"], default="both",
                   help="volume: photometric loss through volume rendering; direct: regression on exact 3D ground "
                        "truth; both: their sum")
    t.add_argument("--hidden", type=int, default=128, help="width of the MLP trunk")
    t.add_argument("--layers", type=int, default=4, help="hidden layers of the trunk")
    t.add_argument("--freqs", type=int, default=8, help="Fourier octaves of the position encoding")
    t.add_argument("--steps", type=int, default=3000, help="optimiser steps")
    t.add_argument("--samples", type=int, default=24, help="evenly spaced samples per ray (volume rendering)")
    t.add_argument("--importance", type=int, default=24,
                   help="more samples per ray where the first found the surfaces (0: none)")
    t.add_argument("--max-seconds", type=float, default=0.0,
                   help="stop after this long (0: no limit); the learning rate then decays over this time")
    t.add_argument("--lr", type=float, default=5e-3, help="Adam learning rate")
    common(t)
    t.set_defaults(run=_cmd_train_field)

    e = sub.add_parser("extract", help="store a model's activations as tokens with their ground truth",
                       formatter_class=fmt)
    e.add_argument("--model", required=True,
                   help="saved model folder, or taesd[:PATH], taesdxl[:PATH], random-taesd[:SEED], sd-vae[:SOURCE]")
    e.add_argument("--dataset", required=True, help="dataset folder")
    e.add_argument("--hooks", default="", help="comma-separated hook point names or module paths (default: all; "
                                               "see `frobnolab hooks MODEL`)")
    e.add_argument("--out", required=True, help="activation store folder to write")
    e.add_argument("--split", choices=["train", "test", "all"], default="all", help="which images")
    e.add_argument("--batch-size", type=int, default=16, help="images per forward pass and per chunk")
    e.add_argument("--tokens-per-image", type=int, default=0,
                   help="random tokens kept per image and hook point (0: all); fields: rays per image")
    e.add_argument("--force", action="store_true", help="replace a different store already at --out")
    e.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run the chunks on Ray actors, each loading the model once (one GPU each with --device "
                        "cuda): alone, a local Ray; or a cluster's address (auto, HOST:PORT, ray://HOST:10001)")
    e.add_argument("--workers", type=int, default=0, help="Ray actors (with --ray); 0 = one per CPU (GPU) of the cluster")
    common(e)
    e.set_defaults(run=_cmd_extract)

    def sae_options(sp):
        sp.add_argument("store", help="activation store folder (frobnolab extract)")
        sp.add_argument("--out", required=True, help="output folder")
        sp.add_argument("--preset", help="named preset applied first (see frobnolab.analysis.presets)")
        sp.add_argument("--hook", help="hook point of the store to train on")
        sp.add_argument("--tokens", type=int, help="training tokens (default 500000)")
        sp.add_argument("--batch-size", type=int, help="tokens per step (default 1024)")
        sp.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
        sp.add_argument("--lr-schedule", help="sae-lens scheduler: constant, cosineannealing, ...")
        sp.add_argument("--normalize", help="sae-lens activation normalisation (default expected_average_only_in)")
        sp.add_argument("--seed", type=int, help="seed (default 0)")
        sp.add_argument("--device", help="cpu or cuda (default cpu)")
        sp.add_argument("--quiet", action="store_true", help="no progress bars")

    t = sub.add_parser("train-sae", help="train a sparse autoencoder with sae-lens on an activation store")
    sae_options(t)
    t.add_argument("--architecture", help="standard, topk, batchtopk, jumprelu, matryoshka_batchtopk, gated "
                                          "(default topk)")
    t.add_argument("--width", type=int, help="latents (default 256)")
    t.add_argument("--k", type=int, help="active latents (TopK family; default 16)")
    t.add_argument("--sparsity", type=float, help="L1 (standard, gated) or L0 (jumprelu) coefficient (default 1)")
    t.set_defaults(run=_cmd_train_sae)

    t = sub.add_parser("sweep-sae", help="train a grid of SAEs on one store and plot the sparsity-fidelity frontier")
    sae_options(t)
    t.add_argument("--architectures", default="topk", help="comma-separated architectures")
    t.add_argument("--widths", default="128,256", help="comma-separated widths")
    t.add_argument("--ks", default="4,8,16", help="comma-separated k values (TopK family)")
    t.add_argument("--sparsities", default="0.3,1,3", help="comma-separated coefficients (other architectures)")
    t.set_defaults(run=_cmd_sweep_sae)

    t = sub.add_parser("score", help="score every SAE feature against ground truth and the optimal output",
                       formatter_class=fmt)
    t.add_argument("store", help="activation store the SAE was trained on")
    t.add_argument("sae", help="SAE folder (frobnolab train-sae)")
    t.add_argument("--out", required=True, help="folder for features.parquet, summary.json, report.md")
    t.add_argument("--hook", help="hook point (default: the SAE's training record)")
    t.add_argument("--holdout", default="", help="comma-separated concepts withheld from the named set")
    t.add_argument("--max-tokens", type=int, default=0, help="held-out tokens scored (0: all)")
    t.add_argument("--nulls", type=int, default=32, help="random-direction null features")
    t.add_argument("--causal-top", type=int, default=64, help="features ablated exactly")
    t.add_argument("--causal-images", type=int, default=16, help="held-out images for causal effects")
    t.add_argument("--bootstrap", type=int, default=50, help="bootstrap resamples for frobnoloid intervals")
    t.add_argument("--other-sae", help="a second SAE (another seed) for the stability score")
    common(t)
    t.set_defaults(run=_cmd_score)

    t = sub.add_parser("validate-scorer", help="run the scorer on planted truth and check it recovers it",
                       formatter_class=fmt)
    t.add_argument("--out", required=True, help="folder for the tokens and validation.json")
    t.add_argument("--dataset", help="dataset folder to plant units on (default: render clutter)")
    t.add_argument("--n", type=int, default=160, help="images to render when no dataset is given")
    common(t, device=False)
    t.set_defaults(run=_cmd_validate_scorer)

    t = sub.add_parser("gallery", help="write a scored run's feature gallery as a static HTML site",
                       formatter_class=fmt)
    t.add_argument("run_dir", metavar="RUN", help="run folder (with scores/) or a scores folder")
    t.add_argument("--out", required=True, help="folder for index.html and the feature pages")
    t.add_argument("--pages", type=int, default=24, help="features that get a page of pictures")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(run=_cmd_gallery)

    k = sub.add_parser("hooks", help="list a model's documented hook points", formatter_class=fmt)
    k.add_argument("model", help="saved model folder or pretrained name (as for extract --model)")
    k.set_defaults(run=_cmd_hooks)

    q = sub.add_parser("quickstart", help="run the main job end to end on an embedded default",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    q.add_argument("--preset", choices=["quickstart", "tiny"], default="quickstart",
                   help="size of the run: tiny (seconds, for tests) or quickstart (minutes)")
    q.add_argument("--out", default="runs/quickstart", help="run folder; each stage writes a subfolder")
    q.add_argument("--workers", type=int, default=0, help="render processes; 0 = one per core")
    q.add_argument("--taesd", help="folder of TAESD weights (taesd_encoder/decoder.safetensors) to study TAESD too")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.set_defaults(run=_cmd_quickstart)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileExistsError, FileNotFoundError, ImportError, ConnectionError) as e:
        print(f"frobnolab {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
