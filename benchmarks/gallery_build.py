"""Gallery build time for a 4,096-feature SAE: every alive feature's page, the shown features' figures, the feature
map (issue 16's target: all pages in <= 3 min on 2 cores).

Builds its inputs once under --work (each step skipped when its output is there): `shapes` renders at 64 px, the
conv autoencoder (a short schedule: the gallery's cost does not depend on how good the model is), a store of its
`enc0` hook (32x32 tokens per image), a 4,096-wide TopK SAE, and a light scoring (small nulls, short scene MLPs, no
bootstrap; the gallery reads the scores, it does not recompute them). Then it times two builds of the same run:

- the baseline: only the shown features' pages (``every_alive=False``: the gallery before every feature had a page);
- the full gallery: a page for every alive feature, the feature map, the shown features' figures.

    .venv/bin/python benchmarks/gallery_build.py --work /tmp/gallerybench

Prints both times, their ratio, the pages written and the peak RSS of this process.
"""

import argparse
import json
import resource
import time
from pathlib import Path

from frobnolab.analysis.gallery import build_gallery
from frobnolab.analysis.run import score_sae
from frobnolab.analysis.sae import SAETrainConfig, train_sae
from frobnolab.analysis.score import ScoreConfig
from frobnolab.analysis.store import ExtractConfig, extract
from frobnolab.models.conv_ae import ConvAEConfig
from frobnolab.models.train import TrainAEConfig, train_autoencoder
from frobnolab.scenes.dataset import RenderConfig, render_dataset


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/gallerybench")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--pages", type=int, default=24, help="shown features (the costly figures)")
    ap.add_argument("--sae-tokens", type=int, default=4_000_000, help="SAE training tokens (most of 4,096 alive)")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = work / "render"
    if not (data / "manifest.json").exists():
        render_dataset(RenderConfig("shapes", n=args.images, size=64, seed=0), data, progress=True)
    if not (work / "ae" / "model.safetensors").exists() and not (work / "ae" / "config.json").exists():
        train_autoencoder(data, work / "ae", TrainAEConfig(model=ConvAEConfig(channels=(16, 32), latent_channels=4),
                                                          steps=300, batch_size=16))
    if not (work / "store" / "manifest.json").exists():
        extract(ExtractConfig(model=str((work / "ae").resolve()), dataset=str(data.resolve()), hooks=("enc0",),
                              seed=0), work / "store", force=True)
    sae = work / f"sae{args.width}_{args.sae_tokens}"
    train_sae(work / "store", sae, SAETrainConfig(hook="enc0", width=args.width, k=32, training_tokens=args.sae_tokens,
                                                  batch_size=1024, lr=2e-3, checkpoints=1))
    scores = work / f"scores{args.width}_{args.sae_tokens}"
    if not (scores / "features.parquet").exists():
        t = time.time()
        score_sae(work / "store", sae, scores, ScoreConfig(n_null=256, scene_steps=100, bootstrap=0, causal_top=16,
                                                           understood_shuffles=2))
        print(f"scoring: {time.time() - t:.0f} s")
    t = time.time()
    build_gallery(scores, work / "site_shown", n_pages=args.pages, every_alive=False, progress=False)
    shown = time.time() - t
    t = time.time()
    site = build_gallery(scores, work / "site", n_pages=args.pages, progress=True)
    full = time.time() - t
    pages = len(list(site.glob("feature_*.html")))
    alive = json.loads((scores / "summary.json").read_text())["alive"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"gallery of a {args.width}-feature SAE ({alive} alive on the held-out tokens): {pages} feature pages in "
          f"{full:.1f} s; "
          f"shown pages only ({args.pages}): {shown:.1f} s; ratio {full / shown:.2f}x; "
          f"{1000 * (full - shown) / max(pages - args.pages, 1):.1f} ms per extra page; peak RSS {peak:.2f} GiB")


if __name__ == "__main__":
    main()
