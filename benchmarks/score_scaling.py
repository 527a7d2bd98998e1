"""Scoring time: a 4096-feature SAE over up to 1M held-out tokens on this machine, and how the time grows with
tokens and with features (the store is streamed, never held in memory).

Builds its inputs once under --work: `shapes` renders, TAESD tokens of a stride-1 hook (4096 tokens per 64x64
image) for held-out images, and TopK SAEs of several widths trained on training images (each step skipped when its
output is up to date).

    .venv/bin/python benchmarks/score_scaling.py --taesd ../shared/weights/taesd --work /tmp/scorebench
    .venv/bin/python benchmarks/score_scaling.py --taesd ../shared/weights/taesd --case 4096x1000000 --case 4096x250000

A 10M-token store (611 held-out 128x128 images):

    .venv/bin/python benchmarks/score_scaling.py --taesd ../shared/weights/taesd --work /tmp/scorebench10m \
        --images 1222 --size 128 --holdout-every 2 --widths 4096 --case 4096x10000000

``--case WIDTHxTOKENS`` (repeatable) scores only those cases; ``--setup-only`` builds the inputs and stops. Each
case writes ``scores_WIDTH_TOKENS[_TAG]`` under --work and prints its total, stage timings and peak RSS (of this
process, so run one case per process for a clean memory figure).
"""

import argparse
import json
import resource
import time
from pathlib import Path

from frobnolab.analysis.sae import SAETrainConfig, train_sae
from frobnolab.analysis.run import score_sae
from frobnolab.analysis.score import ScoreConfig
from frobnolab.analysis.store import ExtractConfig, extract
from frobnolab.scenes.dataset import RenderConfig, render_dataset


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--taesd", required=True)
    ap.add_argument("--work", default="/tmp/scorebench")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=64, help="image side in pixels (enc1 has size^2 tokens an image)")
    ap.add_argument("--holdout-every", type=int, default=8, help="every this many images, the last is held out")
    ap.add_argument("--hook", default="enc1")
    ap.add_argument("--tokens", default="125000,250000,500000,1000000")
    ap.add_argument("--widths", default="1024,2048,4096")
    ap.add_argument("--case", action="append", default=[], help="WIDTHxTOKENS: score only this case (repeatable)")
    ap.add_argument("--setup-only", action="store_true", help="build the inputs, score nothing")
    ap.add_argument("--tag", default="", help="suffix of the output folders (scores_WIDTH_TOKENS_TAG)")
    ap.add_argument("--device", default="cpu", help="torch device of extraction, SAE training and scoring")
    args = ap.parse_args()
    w = Path(args.work)
    t = time.time()
    data = render_dataset(RenderConfig("shapes", n=args.images, size=args.size, seed=0,
                                       holdout_every=args.holdout_every), w / "render", progress=False)
    model = f"taesd:{Path(args.taesd).resolve()}"
    test = extract(ExtractConfig(model=model, dataset=str(data), hooks=(args.hook,), split="test",
                                 device=args.device), w / "test",
                   progress=False)
    train = extract(ExtractConfig(model=model, dataset=str(data), hooks=(args.hook,), split="train",
                                  tokens_per_image=128, device=args.device), w / "train", progress=False)
    widths = sorted(set(map(int, args.widths.split(","))) | {int(c.split("x")[0]) for c in args.case})
    saes = {}
    for width in widths:
        saes[width] = w / f"sae{width}"
        if not (saes[width] / "training.json").exists():
            train_sae(train, saes[width], SAETrainConfig(hook=args.hook, width=width, k=32, training_tokens=200_000,
                                                        checkpoints=0, device=args.device), progress=False,
                      evaluate=False)
    print(f"setup {time.time() - t:.0f} s", flush=True)
    if args.setup_only:
        return
    rows = []

    def timed(width: int, n: int):
        t = time.time()
        out = w / (f"scores_{width}_{n}" + (f"_{args.tag}" if args.tag else ""))
        s = score_sae(test, saes[width], out, ScoreConfig(max_tokens=n, device=args.device), hook=args.hook,
                      progress=False, log=lambda *_: None)
        rows.append({"features": width, "tokens": s["tokens"], "seconds": round(time.time() - t, 1),
                     "stages": s["timings"],
                     "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                     "device": args.device})
        print(json.dumps(rows[-1]), flush=True)

    if args.case:
        for case in args.case:
            width, n = map(int, case.lower().split("x"))
            timed(width, n)
    else:
        widest = max(saes)
        for n in map(int, args.tokens.split(",")):  # the widest SAE over growing token counts
            timed(widest, n)
        n = min(map(int, args.tokens.split(",")))
        for width in sorted(saes)[:-1]:  # the narrower ones on the fewest tokens
            timed(width, n)
    (w / ("score_scaling" + (f"_{args.tag}" if args.tag else "") + ".json")).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
