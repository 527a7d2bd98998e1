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


def _cmd_render(args) -> int:
    from frobnolab.scenes.dataset import RenderConfig, render_dataset

    cfg = RenderConfig(family=args.family, n=args.n, size=args.size, seed=args.seed, shard_size=args.shard_size)
    out = render_dataset(cfg, args.out, workers=args.workers, force=args.force, progress=not args.quiet,
                         command=shlex.join(["frobnolab"] + sys.argv[1:]))
    print(f"dataset: {out}")
    return 0


QUICKSTART_PRESETS = {
    # name: (family, images, size)
    "tiny": ("shapes", 16, 32),
    "quickstart": ("shapes", 256, 64),
}


def _cmd_quickstart(args) -> int:
    """The main job, end to end on an embedded default. For now: render the default family."""
    from pathlib import Path

    from frobnolab.scenes.dataset import RenderConfig, render_dataset

    family, n, size = QUICKSTART_PRESETS[args.preset]
    run = Path(args.out)
    data = render_dataset(RenderConfig(family, n=n, size=size, seed=args.seed), run / "render",
                          workers=args.workers, progress=not args.quiet, command="frobnolab quickstart")
    print(f"dataset:  {data}  ({n} images of {size}x{size}, family {family!r})")
    print(f"preview:  {data / 'preview.png'}")
    print(f"manifest: {data / 'manifest.json'}")
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
    r.add_argument("--workers", type=int, default=0, help="render processes; 0 = one per core, 1 = in-process")
    r.add_argument("--shard-size", type=int, default=16, help="images per shard (chunk, work and resume unit)")
    r.add_argument("--force", action="store_true", help="replace a different dataset already at --out")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(run=_cmd_render)

    q = sub.add_parser("quickstart", help="run the main job end to end on an embedded default",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    q.add_argument("--preset", choices=sorted(QUICKSTART_PRESETS), default="quickstart",
                   help="size of the run: tiny (seconds, for tests) or quickstart (minutes)")
    q.add_argument("--out", default="runs/quickstart", help="run folder; each stage writes a subfolder")
    q.add_argument("--seed", type=int, default=0, help="seed of every stage")
    q.add_argument("--workers", type=int, default=0, help="render processes; 0 = one per core")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.set_defaults(run=_cmd_quickstart)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"frobnolab {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
