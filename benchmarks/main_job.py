"""The main job's old default (until 2026-12-01) vs its new default, in one run on this machine: each stage's
time, the study's size (held-out tokens per model) and its health (autoencoder PSNR, SAE dead latents and explained
variance at their L0).

    .venv/bin/python benchmarks/main_job.py --work /tmp/mainjob [--taesd DIR]

The old default: 256 shapes images at 64 px, the autoencoder at PyTorch's default init trained 600 steps of 32
whole images, SAEs with sae-lens's zero decoder bias on 400k tokens, TAESD at 64 tokens per image. Both runs go
through today's code; the old one's outputs are those of the old code (the new options are off).
"""

import argparse
import json
import time
from pathlib import Path

from frobnolab.analysis.pipeline import QUICKSTART_PRESETS, QuickstartConfig, run_quickstart
from frobnolab.analysis.sae import SAETrainConfig
from frobnolab.models.conv_ae import ConvAEConfig
from frobnolab.models.pretrained import find_taesd
from frobnolab.models.train import TrainAEConfig

OLD = QuickstartConfig(images=256, size=64, ae=TrainAEConfig(model=ConvAEConfig(init="torch"), steps=600),
                       sae=SAETrainConfig(hook="enc1", width=256, k=8, training_tokens=400_000, lr=2e-3,
                                          init_b_dec="zeros"),
                       taesd_sae=SAETrainConfig(hook="enc7", width=256, k=8, training_tokens=400_000, lr=2e-3,
                                                init_b_dec="zeros"),
                       taesd_tokens_per_image=64)


def health(run: Path, taesd: bool) -> dict:
    def read(p):
        return json.loads((run / p).read_text())

    out = {"ae_psnr": read("ae/training.json")["evaluation"]["psnr"]}
    for name, pre in (("ae", ""), ("taesd", "taesd-")) if taesd else (("ae", ""),):
        ev = read(f"{pre}sae/training.json")["evaluation"]
        out[f"{name}_sae"] = {k: ev[k] for k in ("tokens", "l0", "dead_fraction", "explained_variance")}
        s = read(f"{pre}scores/summary.json")
        out[f"{name}_scores"] = {"held_out_tokens": s["tokens"], "alive": s["alive"], "candidates": s["candidates"]}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/mainjob")
    ap.add_argument("--taesd", default=None, help="TAESD weights (default: found as the main job finds them)")
    args = ap.parse_args()
    taesd = find_taesd(args.taesd)[0]
    rows = {}
    for name, cfg in (("old default", OLD), ("new default", QUICKSTART_PRESETS["quickstart"])):
        run = Path(args.work) / name.split()[0]
        t = time.time()
        stages = run_quickstart(cfg, run, taesd=taesd, progress=False, log=lambda *_: None)
        rows[name] = {"wall_s": round(time.time() - t, 1), "stages": stages, **health(run, bool(taesd))}
        print(json.dumps({name: rows[name]}), flush=True)
    (Path(args.work) / "main_job.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
