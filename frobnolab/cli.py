"""The ``frobnolab`` command: one subcommand per stage of a run.

Bad input (a malformed family file, an impossible option) exits with status 2 and one short line naming the file,
the field and the reason; nothing is written.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
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

    cfg = RenderConfig(family=args.family, n=args.n, size=args.size, seed=args.seed, shard_size=args.shard_size,
                       holdout_every=args.holdout_every)
    out = render_dataset(cfg, args.out, workers=args.workers, force=args.force, progress=not args.quiet,
                         command=shlex.join(["frobnolab"] + sys.argv[1:]), ray=_ray_config(args))
    print(f"dataset: {out}")
    return 0


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _cmd_counterfactual(args) -> int:
    from frobnolab.scenes.counterfactual import render_counterfactual, render_sweeps

    command = shlex.join(["frobnolab"] + sys.argv[1:])
    common = dict(n=args.n, seed=args.seed, size=args.size, workers=args.workers, progress=not args.quiet,
                  force=args.force, command=command)
    if args.factor is None:
        if args.values is not None or args.deltas is not None:
            raise ValueError("--values/--deltas need --factor (without it, every sweep the family lists is rendered)")
        for factor, out in render_sweeps(args.family, out_root=args.out, **common).items():
            print(f"dataset: {out}  ({factor})")
        return 0
    if (args.values is None) == (args.deltas is None):
        raise ValueError(f"--factor {args.factor}: give exactly one of --values or --deltas")
    out = render_counterfactual(args.family, args.factor, values=args.values, deltas=args.deltas, out=args.out,
                                **common)
    print(f"dataset: {out}")
    return 0


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    """``"a,b"`` -> ``("a", "b")``; ``""`` -> ``()``."""
    return tuple(v.strip() for v in text.split(",") if v.strip())


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

    cfg = ExtractConfig(model=args.model, dataset=args.dataset, hooks=args.hooks,
                        split=args.split, batch_size=args.batch_size, tokens_per_image=args.tokens_per_image,
                        concepts=args.concepts, seed=args.seed, device=args.device, context=args.context)
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


def _sae_config(args):
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
    from frobnolab.analysis.score import ScoreConfig

    if args.sae and args.baseline:
        raise ValueError(f"give an SAE folder or --baseline KIND[:N], not both (got SAE {args.sae} and --baseline "
                         f"{args.baseline})")
    if not args.sae and not args.baseline:
        raise ValueError("give an SAE folder (frobnolab train-sae) or --baseline KIND[:N]")
    cfg = ScoreConfig(holdout_concepts=args.holdout,
                      max_tokens=args.max_tokens, n_null=args.nulls, causal_top=args.causal_top,
                      causal_images=args.causal_images, bootstrap=args.bootstrap, scene_steps=args.scene_steps,
                      seed=args.seed, device=args.device)
    log = (lambda *_: None) if args.quiet else print
    if args.baseline:
        from frobnolab.analysis.baselines import BaselineConfig, parse_baseline
        from frobnolab.analysis.run import score_baseline

        kind, n = parse_baseline(args.baseline)
        if args.hook is None:
            raise ValueError(f"--baseline {args.baseline}: give --hook (a baseline has no training record to read "
                             f"it from)")
        if args.other_sae:
            raise ValueError(f"--other-sae {args.other_sae}: only with an SAE, not with --baseline")
        bcfg = BaselineConfig(kind=kind, n=n, fit_tokens=args.fit_tokens, nmf_steps=args.nmf_steps, seed=args.seed)
        s = score_baseline(args.store, kind, args.out, cfg, hook=args.hook, n=n, baseline=bcfg,
                           progress=not args.quiet, log=log)
        b = s["baseline"]
        print(f"baseline {b['kind']}:{b['n']} ({b['d_sae']} features) fitted on {b['fit_tokens']} training tokens; "
              f"FVU {b['fvu_test']:.4f} held out")
    else:
        from frobnolab.analysis.run import score_sae

        s = score_sae(args.store, args.sae, args.out, cfg, hook=args.hook, progress=not args.quiet,
                      other_sae=args.other_sae, log=log)
    d = s["dictionary"]
    print(f"{s['tokens']} held-out tokens, {s['alive']}/{s['features']} features alive; MCC {d['mcc']:.3f}; "
          f"{s['candidates']} frobnoloid candidate(s)")
    f = s["fdr"]
    print(f"beyond chance at q <= {f['q_level']} (each of {f['tested']} live features against ~"
          f"{f['null_matched_median']:.0f} null directions of its firing rate, Benjamini-Hochberg): "
          f"{f['discoveries_gap']} gaps, {f['discoveries_named']} named matches, {f['discoveries_scene']} scene R2s")
    if _understood_line(s):
        print(_understood_line(s))
    for name, r in s.get("heldout_recovery", {}).items():
        print(f"held-out {name}: {r['tracking_features']} tracking feature(s), recall {r['recall']:.2f}, "
              f"precision {r['precision']:.2f}")
    print(f"scores: {args.out}/features.parquet  summary: {args.out}/summary.json  report: {args.out}/report.md")
    return 0


def _understood_line(summary: dict) -> str:
    """The understood share of a scores summary in one line ("" where it was not measured)."""
    u = summary.get("understood", {})
    if not u.get("measured"):
        return ""
    sh = u["understood"]
    return (f"understood share: descriptions {sh['descriptions']:.3f} (shuffled null 95% {u['null95']:.3f}), "
            f"named concepts only {sh['named']:.3f}" + (f", all ground truth {sh['scene']:.3f}" if "scene" in sh
                                                         else ""))


def _cmd_validate_scorer(args) -> int:
    from pathlib import Path

    from frobnolab.analysis.planted import validate_scorer
    from frobnolab.scenes.dataset import RenderConfig, render_dataset

    from frobnolab.analysis.planted_grammar import IMAGES

    n = args.n or (IMAGES if args.benchmark else 160)
    data = args.dataset or render_dataset(RenderConfig("clutter", n=n, size=64, seed=args.seed),
                                          Path(args.out) / "render", progress=not args.quiet)
    if args.benchmark:
        return _benchmark_lines(data, args)
    r = validate_scorer(data, args.out, progress=not args.quiet, seed=args.seed)
    for u in r["units"]:
        mark = {True: "ok  ", False: "FAIL", None: "    "}[u["ok"]]
        print(f"{mark} {u['name']:20s} {u['kind']:11s} best named {u['named']:12s} ({u['named_r2']:.2f})  pair "
              f"{u['pair']:24s} ({u['pair_r2']:.2f})  scene {u['scene_r2']:.2f}  frob {u['frob']:.3f} "
              f"(rank {u['frob_rank']})")
    print(f"attributed {r['attributed']}/{r['attributable']} ({r['attribution_rate']:.0%}); nameless unit ranked "
          f"{r['nameless_rank']}; noise at null: {r['noise_at_null']}  ->  {'PASSED' if r['passed'] else 'FAILED'}")
    return 0 if r["passed"] else 1


def _cmd_validate_counterfactual(args) -> int:
    from frobnolab.analysis.planted_counterfactual import over_seeds

    r = over_seeds(args.out, args.seeds, bases=args.bases, size=args.size, progress=not args.quiet)
    for s, v in r["per_seed"].items():
        print(f"seed {s}: factor units attributed {v['attributed']:.0%}, noise at null {v['noise_at_null']}, "
              f"whole-image unit responds at a distance {v['global_distant']}  ->  "
              f"{'PASSED' if v['passed'] else 'FAILED'}")
    for m in r["missed"]:
        p = "-" if m["p"] is None else f"{m['p']:.3f}"
        sel = "-" if m["selectivity"] is None else f"{m['selectivity']:.2f}"
        print(f"  missed (seed {m['seed']}): {m['unit']} ({m['factor']}): assigned {m['assigned'] or 'nothing'}, "
              f"p {p}, selectivity {sel}")
    print(f"seeds {','.join(map(str, r['seeds']))}: {r['attributed']:.0%} of factor units attributed  ->  "
          f"{'PASSED' if r['passed'] else 'FAILED'}")
    return 0 if r["passed"] else 1


def _cmd_respond(args) -> int:
    from frobnolab.analysis.counterfactual import ResponseConfig, respond

    s = respond(args.scores, args.stores, ResponseConfig(n_null=args.n_null), progress=not args.quiet)
    for f in s["factors"]:
        print(f"{f['factor']:34s} pairs {f['pairs']:6d}  truth changed at {f['changed_share']:4.0%} of tokens  "
              f"features responding {f['responding']:4d} of {s['alive']}  explained by it {f['explained']:4d}")
    for j, v in s["candidates"].items():
        print(f"candidate {j}: {v}")
    print(f"responses: {args.scores}/responses.parquet  report: {args.scores}/report.md")
    return 0


def _cmd_compare(args) -> int:
    from frobnolab.analysis.compare import compare

    r = compare(args.scores_a, args.scores_b, args.out)
    for side in ("a", "b"):
        v = r[side]
        print(f"{side.upper()}: {v['hook']} (stride {v['stride']}): {v['shared']} of {v['alive']} live features shared "
              f"(best match above the rotated-image null's 95th percentile, {v['null95']:.3f})")
    if "splits" in r:
        kids = sum(len(v) > 1 for v in r["splits"]["children"].values())
        print(f"splits: {kids} narrow features with two or more wide children")
    print(f"matched on {r['cells']} held-out cells; {args.out}/compare.md")
    return 0


def _cmd_paint(args) -> int:
    from frobnolab.analysis.paint import paint

    ops = [(op, v) for op, v in (("set", args.set), ("add", args.add), ("scale", args.scale)) if v is not None]
    if len(ops) != 1:
        raise ValueError("give exactly one of --set, --add or --scale")
    extra = {"stride": args.stride} if args.stride != 1 else {}
    r = paint(args.scores, args.image, args.features, op=ops[0][0], value=ops[0][1], mask=args.mask, out=args.out,
              **extra)
    for when in ("before", "after"):
        for where in ("inside", "outside"):
            m = r[when][where]
            print(f"{when:6s} {where:7s}: luma {m['luma']:.3f}  hue {m['hue']:6.1f}  edge energy {m['edge_energy']:.4f}")
    d = r["distribution"]
    print(f"locality {r['locality']:.2f} (the mask is {r['mask_share']:.0%} of the image); edited tokens' nearest "
          f"training activation {d['edited_over_clean_nn_distance']:.2f}x as far as the unedited reconstruction's; "
          f"{args.out}/paint.png")
    if r.get("domain") == "field":
        print(f"{r['rays_edited']} rays cross the region; {r['ray_locality']:.2f} of the change is on them")
    return 0


def _benchmark_lines(data, args) -> int:
    """``validate-scorer --benchmark``: the planted grammar benchmark (analysis/planted_grammar.py), one line per
    rule and the pooled figures; exit 0 whatever they are (a measurement: benchmark.json's meets_bar says whether
    the issue's bar holds)."""
    from pathlib import Path

    from frobnolab.analysis.planted_grammar import benchmark

    r = benchmark(data, args.out, args.seeds, progress=not args.quiet)
    pct = lambda v: "-" if v is None else f"{v:.0%}"  # noqa: E731
    for rule, f in r["pooled"]["by_rule"].items():
        print(f"{rule:13s} units {f['units']:3d}  attributed {pct(f['attribution']):>4s}  nameless recall "
              f"{pct(f['nameless_recall']):>4s}  flagged {f['candidates']:3d}  noise flagged {f['noise_flagged']}")
    p = r["pooled"]
    print(f"seeds {','.join(map(str, r['seeds']))}: named attribution {pct(p['attribution'])}, nameless recall "
          f"{pct(p['nameless_recall'])}, precision {pct(p['precision'])}, noise flagged {p['noise_flagged']}  ->  "
          f"{'meets' if r['meets_bar'] else 'misses'} the bar (95%, 90%, 80%, 0); nameless missed for: "
          f"{', '.join(f'{k} {v}' for k, v in p['missed_because'].items())}; {Path(args.out) / 'benchmark.json'}")
    return 0


def _cmd_gallery(args) -> int:
    from frobnolab.analysis.gallery import build_gallery

    out = build_gallery(args.run_dir, args.out, n_pages=args.pages, progress=not args.quiet)
    print(f"gallery: {out / 'index.html'}")
    return 0


def _cmd_notebook(args) -> int:
    import time

    from frobnolab.analysis.notebook import NotebookError, execute_notebook

    t0 = time.perf_counter()
    try:
        out = execute_notebook(args.run_dir, args.out, timeout=args.timeout, progress=not args.quiet)
    except NotebookError as e:  # the kernel failed on a cell: not bad input, nothing written
        print(f"frobnolab notebook: error: {e}", file=sys.stderr)
        return 1
    print(f"notebook: {out} (executed in {time.perf_counter() - t0:.0f} s, widget state saved; opens without a "
          f"kernel: jupyter lab {shlex.quote(str(out))})")
    return 0


def _cmd_quickstart(args) -> int:
    """The main job, end to end on an embedded default."""
    from pathlib import Path

    from frobnolab.analysis.pipeline import QUICKSTART_PRESETS, run_quickstart
    from frobnolab.errors import unknown

    if args.preset not in QUICKSTART_PRESETS:
        raise unknown("quickstart preset", args.preset, QUICKSTART_PRESETS)
    taesd, hint = None, ""
    if not args.no_taesd:
        from frobnolab.models.pretrained import find_taesd, taesd_hint

        taesd, tried = find_taesd(args.taesd)
        hint = "" if taesd else taesd_hint(tried)
        print(f"TAESD: {taesd}" if taesd else hint)
    run = Path(args.out)
    times = run_quickstart(QUICKSTART_PRESETS[args.preset], run, taesd=taesd, workers=args.workers,
                           progress=not args.quiet, device=args.device)
    print(f"\nrun folder: {run}   ({sum(times.values()):.0f} s in all)")
    print(f"  images and ground truth: {run / 'render' / 'preview.png'}")
    print(f"  autoencoder:             {run / 'ae' / 'training.json'}")
    print(f"  SAE (sae-lens format):   {run / 'sae' / 'sae'}   metrics: {run / 'sae' / 'training.json'}")
    print(f"  feature scores:          {run / 'scores' / 'report.md'}   table: {run / 'scores' / 'features.parquet'}")
    print(f"  feature gallery:         {run / 'gallery' / 'index.html'}   notebook: analysis/gallery.ipynb "
          f"(FROBNOLAB_RUN={run})")
    if taesd:
        print(f"  TAESD SAE:               {run / 'taesd-sae' / 'sae'}   metrics: "
              f"{run / 'taesd-sae' / 'training.json'}")
        print(f"  TAESD feature scores:    {run / 'taesd-scores' / 'report.md'}   table: "
              f"{run / 'taesd-scores' / 'features.parquet'}")
        print(f"  TAESD feature gallery:   {run / 'taesd-gallery' / 'index.html'}")
    elif hint:
        print(f"  ({hint})")
    import json

    for name, folder in (("autoencoder", "scores"), ("TAESD", "taesd-scores")):
        summary = run / folder / "summary.json"
        s = json.loads(summary.read_text()) if summary.exists() else {}
        line = _understood_line(s) if s else ""
        if line:
            print(f"  {name} {line}")
        if s.get("fdr"):
            f = s["fdr"]
            print(f"  {name} beyond chance (q <= {f['q_level']}, {f['tested']} live features): {f['discoveries_gap']} "
                  f"gaps, {f['discoveries_named']} named matches, {f['discoveries_scene']} scene R2s; "
                  f"{s['candidates']} frobnoloid candidate(s)")
        resp = run / folder / "responses.json"
        if resp.exists():
            r = json.loads(resp.read_text())
            c = r.get("p05", {})
            print(f"  {name} counterfactuals ({len(r['factors'])} factors moved alone): {c.get('observed')} of "
                  f"{c.get('tests')} feature-factor responses beat their nulls at p <= 0.05 (chance "
                  f"{c.get('expected_by_chance', float('nan')):.0f}); {r['explained']} features explained by one factor")
        verdicts = run / folder / "verdicts.json"
        for r in json.loads(verdicts.read_text())["candidates"] if verdicts.exists() else []:
            print(f"    candidate {r['feature']} (gap {r['gap']:.2f}, q {r['q_value']:.3f}): {r['verdict']}")
        cmp = run / folder / "baselines.json"
        if cmp.exists():
            for r in json.loads(cmp.read_text())["dictionaries"]:
                print(f"    {r['dictionary']:>8s}: {r['alive']:3d} live of {r['features']:3d}, MCC {r['mcc']:.3f}, "
                      f"coverage {r['coverage_mean']:.3f}, named beyond chance {r['named_discoveries']}, candidates "
                      f"{r['candidates']}")
            print(f"    (the SAE beside its baselines: {cmp})")
    pair = run / "compare" / "compare.json"
    if pair.exists():
        r = json.loads(pair.read_text())
        print(f"  shared features (same pixels, beyond the rotated-image null): autoencoder {r['a']['shared']} of "
              f"{r['a']['alive']}, TAESD {r['b']['shared']} of {r['b']['alive']}  ({run / 'compare' / 'compare.md'})")
    return 0


# ---------------------------------------------------------------------------------------- defaults and help text
# Every option that sets a config field takes its default (and, unless the command line says it differently, its
# help) from that field, so a default has one home: the dataclass. Each subcommand's options are added only when
# that subcommand runs (or asks for --help), so `frobnolab families` never imports torch.


def default(owner, name: str):
    """The default of field ``name`` of the dataclass ``owner`` (its ``default_factory`` called), or of parameter
    ``name`` of the function ``owner``."""
    if dataclasses.is_dataclass(owner):
        for f in dataclasses.fields(owner):
            if f.name == name:
                if f.default is not dataclasses.MISSING:
                    return f.default
                if f.default_factory is not dataclasses.MISSING:
                    return f.default_factory()
                raise TypeError(f"{owner.__name__}.{name} has no default")
        raise TypeError(f"{owner.__name__} has no field {name!r}")
    param = inspect.signature(owner).parameters.get(name)
    if param is None or param.default is inspect.Parameter.empty:
        raise TypeError(f"{owner.__name__}() has no parameter {name!r} with a default")
    return param.default


@functools.cache
def _field_docs(cls) -> dict[str, str]:
    """Each field's documentation: the string literal on the line under it in the class body."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    return {node.target.id: " ".join(nxt.value.value.split()).replace("``", "")
            for node, nxt in zip(body, body[1:])
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)}


def doc(cls, name: str) -> str:
    """The documentation of field ``name`` of the dataclass ``cls``, as an argparse help string."""
    if name not in _field_docs(cls):
        raise TypeError(f"{cls.__name__}.{name} has no documentation line")
    return _field_docs(cls)[name].replace("%", "%%")


def _option(sp, flag: str, cls, name: str, *, help: str | None = None, preset: bool = False, **kw):
    """Add ``flag`` for field ``name`` of ``cls``: default from the field, help from its documentation line.

    ``preset=True``: the option's default is None (a preset's value, else the field's, applies; see _sae_config),
    and the help says the field's default."""
    d = default(cls, name)
    if isinstance(d, (int, float)) and not isinstance(d, bool):
        kw.setdefault("type", type(d))
    help = help or doc(cls, name)
    if preset:
        kw["default"] = None
        help += f" (default: {_shown(d)}, or the preset's)"
    else:
        kw.setdefault("default", d)
    sp.add_argument(flag, help=help, **kw)


def _shown(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default unless it has none (None, empty) or its help already says it."""

    def _get_help_string(self, action):
        d = action.default
        if not action.help or "default" in action.help or d is None or d is argparse.SUPPRESS or d is False or \
                (isinstance(d, (str, tuple)) and not d):
            return action.help
        return f"{action.help} (default: {_shown(d).replace('%', '%%')})"


def _seed_device(sp, cls, device: bool = True):
    _option(sp, "--seed", cls, "seed")
    if device:
        _option(sp, "--device", cls, "device")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")


def _ray_option(sp, help: str):
    from frobnolab.scenes.cluster import RayConfig

    sp.add_argument("--ray", nargs="?", const=default(RayConfig, "address"), metavar="ADDRESS", help=help)


# ---------------------------------------------------------------------------------------------- the subcommands
# name -> (one-line help, function adding its options)
COMMANDS: dict[str, tuple[str, object]] = {}


def _command(name: str, help: str):
    def register(add_options):
        COMMANDS[name] = (help, add_options)
        return add_options
    return register


@_command("families", "list the shipped scene families, or print one")
def _families_options(f):
    f.add_argument("action", choices=["list", "describe"], nargs="?", default="list",
                   help="list: one line per shipped family; describe: print a family's file")
    f.add_argument("name", nargs="?", help="family name or file, for describe")
    f.set_defaults(run=_cmd_families)


@_command("render", "render a scene family into a dataset with exact ground truth")
def _render_options(r):
    from frobnolab.scenes.dataset import RenderConfig, render_dataset

    r.add_argument("family", help="a shipped family name (see `frobnolab families`) or a family file (.yaml/.toml)")
    _option(r, "--n", RenderConfig, "n")
    _option(r, "--size", RenderConfig, "size", type=int, help="image side in pixels (square; default: the family's)")
    _option(r, "--seed", RenderConfig, "seed")
    r.add_argument("--out", required=True, help="dataset folder to write (made atomically)")
    r.add_argument("--workers", type=int, default=default(render_dataset, "workers"),
                   help="render processes (Ray actors with --ray); 0 = one per core, 1 = in-process")
    _ray_option(r, "run the shards on Ray: alone, a local Ray started here; or a cluster's address "
                   "(auto, HOST:PORT, ray://HOST:10001). Needs pip install 'frobnolab[ray]'")
    _option(r, "--shard-size", RenderConfig, "shard_size")
    _option(r, "--holdout-every", RenderConfig, "holdout_every")
    r.add_argument("--force", action="store_true", help="replace a different dataset already at --out")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(run=_cmd_render)


@_command("counterfactual", "render scenes again with exactly one factor changed (a counterfactual dataset)")
def _counterfactual_options(c):
    from frobnolab.scenes.counterfactual import render_counterfactual
    from frobnolab.scenes.dataset import RenderConfig

    c.add_argument("family", help="a shipped family name (see `frobnolab families`) or a family file (.yaml/.toml)")
    c.add_argument("--factor", help="the factor to change, a field path as the dataset's factor names (object0.size, "
                   "object0.material.color.hsv[0], lights[0].intensity, camera.pose.azimuth, shadows, ...); without "
                   "it, every sweep the family lists (counterfactuals:) is rendered, each into OUT/<factor>/")
    c.add_argument("--values", type=_floats,
                   help="rung r sets the factor to the r-th value (V1,V2,...; a list that starts with a minus: "
                        "--values=-110,-70)")
    c.add_argument("--deltas", type=_floats,
                   help="rung r adds the r-th delta to each base's drawn value (D1,D2,...; --deltas=-20,0,20)")
    c.add_argument("--n", type=int, required=True, help="base scenes (the dataset has n x rungs images: image "
                   "b x rungs + r is base b at rung r)")
    _option(c, "--seed", RenderConfig, "seed")
    _option(c, "--size", RenderConfig, "size", type=int, help="image side in pixels (square; default: the family's)")
    c.add_argument("--out", required=True, help="dataset folder to write (made atomically); without --factor, the "
                   "folder that gets one dataset per listed sweep")
    c.add_argument("--workers", type=int, default=default(render_counterfactual, "workers"),
                   help="render processes; 0 = one per core, 1 = in-process")
    c.add_argument("--force", action="store_true", help="replace a different dataset already at --out")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(run=_cmd_counterfactual)


@_command("train-ae", "train the small convolutional autoencoder on a dataset")
def _train_ae_options(t):
    from frobnolab.models.conv_ae import ConvAEConfig
    from frobnolab.models.train import TrainAEConfig

    t.add_argument("dataset", help="dataset folder (frobnolab render)")
    t.add_argument("--out", required=True, help="model folder to write (model.safetensors, model.json, training.json)")
    _option(t, "--channels", ConvAEConfig, "channels", type=_ints)
    _option(t, "--latent-channels", ConvAEConfig, "latent_channels")
    for flag, name in (("--steps", "steps"), ("--batch-size", "batch_size"), ("--lr", "lr")):
        _option(t, flag, TrainAEConfig, name)
    _seed_device(t, TrainAEConfig)
    t.set_defaults(run=_cmd_train_ae)


@_command("train-field", "train a NeRF-style coordinate field on a single-scene dataset")
def _train_field_options(t):
    from frobnolab.models.field import FieldConfig
    from frobnolab.models.train import TrainFieldConfig

    t.add_argument("dataset", help="dataset folder of one scene from many views (e.g. family `single`)")
    t.add_argument("--out", required=True, help="model folder to write")
    _option(t, "--mode", TrainFieldConfig, "mode", choices=["volume", "direct", "both"])
    for flag, name in (("--hidden", "hidden"), ("--layers", "layers"), ("--freqs", "n_freqs")):
        _option(t, flag, FieldConfig, name)
    _option(t, "--steps", TrainFieldConfig, "steps")
    _option(t, "--samples", TrainFieldConfig, "samples_per_ray")
    _option(t, "--importance", TrainFieldConfig, "importance_samples",
            help="more samples per ray where the first found the surfaces (0: none)")
    _option(t, "--max-seconds", TrainFieldConfig, "max_seconds")
    _option(t, "--lr", TrainFieldConfig, "lr")
    _seed_device(t, TrainFieldConfig)
    t.set_defaults(run=_cmd_train_field)


@_command("extract", "store a model's activations as tokens with their ground truth")
def _extract_options(e):
    from frobnolab.analysis.store import ExtractConfig

    e.add_argument("--model", required=True,
                   help="saved model folder, or taesd[:PATH], taesdxl[:PATH], random-taesd[:SEED], sd-vae[:SOURCE]")
    e.add_argument("--dataset", required=True, help="dataset folder")
    _option(e, "--hooks", ExtractConfig, "hooks", type=_names,
            help="comma-separated hook point names or module paths (default: all; see `frobnolab hooks MODEL`)")
    e.add_argument("--out", required=True, help="activation store folder to write")
    _option(e, "--split", ExtractConfig, "split", choices=["train", "test", "all"])
    _option(e, "--batch-size", ExtractConfig, "batch_size")
    _option(e, "--tokens-per-image", ExtractConfig, "tokens_per_image")
    _option(e, "--concepts", ExtractConfig, "concepts", type=_names,
            help="comma-separated concepts to store, by name or by import path module:function (default: every "
                 "registered concept of the model's kind)")
    _option(e, "--context", ExtractConfig, "context", type=_ints,
            help="comma-separated odd window sizes in tokens (e.g. 3,5): also store every concept averaged over the "
                 "k x k tokens around each token, as concepts NAME@k (image models; default: none)")
    e.add_argument("--force", action="store_true", help="replace a different store already at --out")
    _ray_option(e, "run the chunks on Ray actors, each loading the model once (one GPU each with --device cuda): "
                   "alone, a local Ray; or a cluster's address (auto, HOST:PORT, ray://HOST:10001)")
    from frobnolab.scenes.cluster import RayConfig

    _option(e, "--workers", RayConfig, "workers", help="Ray actors (with --ray); 0 = one per CPU (GPU) of the cluster")
    _seed_device(e, ExtractConfig)
    e.set_defaults(run=_cmd_extract)


@_command("hooks", "list a model's documented hook points")
def _hooks_options(k):
    k.add_argument("model", help="saved model folder or pretrained name (as for extract --model)")
    k.set_defaults(run=_cmd_hooks)


def _sae_options(sp):
    from frobnolab.analysis.sae import SAETrainConfig

    sp.add_argument("store", help="activation store folder (frobnolab extract)")
    sp.add_argument("--out", required=True, help="output folder")
    sp.add_argument("--preset", help="named preset applied first (see frobnolab.analysis.presets)")
    sp.add_argument("--hook", help="hook point of the store to train on (or a preset's)")
    for flag, name in (("--tokens", "training_tokens"), ("--batch-size", "batch_size"), ("--lr", "lr"),
                       ("--lr-schedule", "lr_schedule"), ("--normalize", "normalize"), ("--seed", "seed"),
                       ("--device", "device")):
        _option(sp, flag, SAETrainConfig, name, preset=True)
    sp.add_argument("--quiet", action="store_true", help="no progress bars")
    return SAETrainConfig


@_command("train-sae", "train a sparse autoencoder with sae-lens on an activation store")
def _train_sae_options(t):
    from frobnolab.analysis.sae import ARCHITECTURES

    cfg = _sae_options(t)
    _option(t, "--architecture", cfg, "architecture", preset=True,
            help="sae-lens training architecture: " + ", ".join(ARCHITECTURES))
    for flag, name in (("--width", "width"), ("--k", "k"), ("--sparsity", "sparsity")):
        _option(t, flag, cfg, name, preset=True)
    t.set_defaults(run=_cmd_train_sae)


@_command("sweep-sae", "train a grid of SAEs on one store and plot the sparsity-fidelity frontier")
def _sweep_sae_options(t):
    _sae_options(t)
    t.add_argument("--architectures", default="topk", help="comma-separated architectures")
    t.add_argument("--widths", default="128,256", help="comma-separated widths")
    t.add_argument("--ks", default="4,8,16", help="comma-separated k values (TopK family)")
    t.add_argument("--sparsities", default="0.3,1,3", help="comma-separated coefficients (other architectures)")
    t.set_defaults(run=_cmd_sweep_sae)


@_command("score", "score every SAE (or baseline) feature against ground truth and the optimal output")
def _score_options(t):
    from frobnolab.analysis.baselines import KINDS, BaselineConfig
    from frobnolab.analysis.score import ScoreConfig

    t.add_argument("store", help="activation store the SAE was trained on")
    t.add_argument("sae", nargs="?", help="SAE folder (frobnolab train-sae); or give --baseline")
    t.add_argument("--baseline", metavar="KIND[:N]",
                   help="instead of an SAE, fit a baseline dictionary on the store's training tokens of --hook and "
                        f"score it the same way; KIND one of {', '.join(KINDS)}, N its components (default: the "
                        "hook's channels; nmf, kmeans: 4x, at most 1024). Signed kinds have 2N features, relu(z) and "
                        "relu(-z). Its fit is seeded by --seed; OUT also gets baseline.safetensors, baseline.json")
    _option(t, "--fit-tokens", BaselineConfig, "fit_tokens")
    _option(t, "--nmf-steps", BaselineConfig, "nmf_steps")
    t.add_argument("--out", required=True, help="folder for features.parquet, summary.json, report.md")
    t.add_argument("--hook", help="hook point (default: the SAE's training record; required with --baseline)")
    _option(t, "--holdout", ScoreConfig, "holdout_concepts", type=_names,
            help="comma-separated concepts withheld from the named set (they stay ground truth for scene_r2 and "
                 "for recovery)")
    for flag, name in (("--max-tokens", "max_tokens"), ("--nulls", "n_null"), ("--causal-top", "causal_top"),
                       ("--causal-images", "causal_images"), ("--bootstrap", "bootstrap"),
                       ("--scene-steps", "scene_steps")):
        _option(t, flag, ScoreConfig, name)
    t.add_argument("--other-sae", help="a second SAE (another seed) for the stability score")
    _seed_device(t, ScoreConfig)
    t.set_defaults(run=_cmd_score)


@_command("validate-scorer", "run the scorer on planted truth and check it recovers it")
def _validate_scorer_options(t):
    from frobnolab.analysis.planted import validate_scorer
    from frobnolab.analysis.planted_grammar import DEV_SEEDS, REPORT_SEEDS

    t.add_argument("--out", required=True, help="folder for the tokens and validation.json")
    t.add_argument("--dataset", help="dataset folder to plant units on (default: render clutter)")
    t.add_argument("--n", type=int, help="images to render when no dataset is given (default: 160; "
                                         "with --benchmark, planted_grammar.IMAGES)")
    t.add_argument("--seed", type=int, default=default(validate_scorer, "seed"),
                   help="seed of the render and the units")
    t.add_argument("--benchmark", action="store_true",
                   help="run the planted grammar benchmark (units drawn at random, many seeds) instead; exits 0")
    t.add_argument("--seeds", type=_ints, default=REPORT_SEEDS,
                   help=f"the benchmark's seeds of the units (default: the report seeds; developed on "
                        f"{','.join(map(str, DEV_SEEDS))})")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(run=_cmd_validate_scorer)


@_command("validate-counterfactual", "check the counterfactual responses on planted units of real re-renders")
def _validate_counterfactual_options(t):
    from frobnolab.analysis.planted_counterfactual import DEV_SEEDS, REPORT_SEEDS, validate_counterfactual

    t.add_argument("--out", required=True, help="folder for the renders, tokens and seeds.json")
    t.add_argument("--seeds", type=_ints, default=DEV_SEEDS,
                   help=f"seeds of the base scenes and units (default: the development seed; reported on "
                        f"{','.join(map(str, REPORT_SEEDS))})")
    t.add_argument("--bases", type=int, default=default(validate_counterfactual, "bases"),
                   help="base scenes per sweep")
    t.add_argument("--size", type=int, default=default(validate_counterfactual, "size"), help="image side in pixels")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(run=_cmd_validate_counterfactual)


@_command("respond", "measure an SAE's features' responses on counterfactual stores (one factor moved each)")
def _respond_options(t):
    from frobnolab.analysis.counterfactual import ResponseConfig

    t.add_argument("scores", help="the SAE's scores folder (frobnolab score); responses are written into it")
    t.add_argument("--stores", nargs="+", required=True,
                   help="stores extracted from the same model at the SAE's hook on counterfactual datasets "
                        "(frobnolab counterfactual, then frobnolab extract), one per factor")
    _option(t, "--n-null", ResponseConfig, "n_null")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(run=_cmd_respond)


@_command("compare", "match the features of two models (or two SAE widths) on the same pixels")
def _compare_options(t):
    t.add_argument("scores_a", metavar="SCORES_A", help="a scores folder (frobnolab score)")
    t.add_argument("scores_b", metavar="SCORES_B", help="another, its store extracted on the same dataset")
    t.add_argument("--out", required=True, help="folder for compare.json and compare.md")
    t.set_defaults(run=_cmd_compare)


@_command("paint", "edit SAE features inside a mask, decode, and measure the change against the ground truth")
def _paint_options(t):
    t.add_argument("scores", help="the SAE's scores folder (frobnolab score)")
    t.add_argument("--image", type=int, required=True, help="image index in the store's dataset")
    t.add_argument("--features", type=_ints, required=True, help="features to edit (J1,J2,...)")
    t.add_argument("--set", type=float, help="set the features to this, in units of each one's largest activation")
    t.add_argument("--add", type=float, help="add this, in units of each feature's largest activation")
    t.add_argument("--scale", type=float, help="multiply the features by this")
    t.add_argument("--mask", default="all",
                   help="where: image models: all, foreground, shadow, instance=K, any boolean buffer, or "
                        "box:R0,C0,R1,C1 (pixels); coordinate fields: all, box3:X0,Y0,Z0,X1,Y1,Z1 (world units) or "
                        "instance=K (inside object K); the image index is then the held-out view re-rendered")
    t.add_argument("--stride", type=int, default=1, help="coordinate fields: render every N-th row and column")
    t.add_argument("--out", required=True, help="folder for paint.json and paint.png")
    t.set_defaults(run=_cmd_paint)


@_command("gallery", "write a scored run's feature gallery as a static HTML site")
def _gallery_options(t):
    from frobnolab.analysis.gallery import build_gallery

    t.add_argument("run_dir", metavar="RUN", help="run folder (with scores/) or a scores folder")
    t.add_argument("--out", required=True, help="folder for index.html and the feature pages")
    t.add_argument("--pages", type=int, default=default(build_gallery, "n_pages"),
                   help="features that get a page of pictures")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(run=_cmd_gallery)


@_command("notebook", "execute the gallery notebook against a scored run and save it with its outputs and widget "
                     "state (it then opens without a kernel)")
def _notebook_options(t):
    from frobnolab.analysis.notebook import execute_notebook

    t.add_argument("run_dir", metavar="RUN", help="run folder (with scores/) or a scores folder")
    t.add_argument("--out", help="the executed notebook to write (default: RUN/gallery.ipynb)")
    t.add_argument("--timeout", type=int, default=default(execute_notebook, "timeout"),
                   help="seconds a cell may run")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(run=_cmd_notebook)


@_command("quickstart", "run the main job end to end on an embedded default")
def _quickstart_options(q):
    from frobnolab.analysis.pipeline import QUICKSTART_PRESETS, run_quickstart

    q.add_argument("--preset", default="quickstart",
                   help=f"size of the run, one of: {', '.join(QUICKSTART_PRESETS)} (tiny: seconds, for tests; "
                        "quickstart: minutes; gpu: 256 px, for --device cuda)")
    q.add_argument("--out", default="runs/quickstart", help="run folder; each stage writes a subfolder")
    q.add_argument("--workers", type=int, default=default(run_quickstart, "workers"),
                   help="render processes; 0 = one per core")
    q.add_argument("--taesd", help="folder of TAESD weights (taesd_encoder/decoder.safetensors, or a diffusers "
                                   "folder); default: the first found of $FROBNOLAB_TAESD_DIR, the Hugging Face "
                                   "cache (madebyollin/taesd), ../shared/weights/taesd beside the repository")
    q.add_argument("--no-taesd", action="store_true", help="study the small autoencoder alone")
    q.add_argument("--device", default=default(run_quickstart, "device"),
                   help="torch device of every training, extraction and scoring stage (cpu, cuda, cuda:1)")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.set_defaults(run=_cmd_quickstart)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line; with ``command``, only that subcommand gets its options (and imports what they need):
    the others are listed but empty."""
    p = argparse.ArgumentParser(prog="frobnolab", description=__doc__.splitlines()[0], formatter_class=_Help)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help, add_options) in COMMANDS.items():
        sp = sub.add_parser(name, help=help, description=help, formatter_class=_Help)
        if command is None or command == name:
            add_options(sp)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv[0] if argv else "").parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileExistsError, FileNotFoundError, ImportError, ConnectionError) as e:
        print(f"frobnolab {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
