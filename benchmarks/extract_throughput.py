"""Extraction throughput: tokens per second of `extract` (forward + capture + ground-truth pooling + chunked
writes) vs the bare model forward on the same batches, in one run.

    .venv/bin/python benchmarks/extract_throughput.py --dataset runs/quickstart/render --model taesd:../shared/weights/taesd --hooks enc5
"""

import argparse
import json
import shutil
import tempfile
import time

import numpy as np
import torch

from frobnolab.analysis.store import ActivationStore, ExtractConfig, extract
from frobnolab.models.io import load_model
from frobnolab.scenes.dataset import Dataset


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--hooks", default="")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    ds = Dataset(args.dataset)
    model = load_model(args.model, args.device).eval()
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    hooks = tuple(args.hooks.split(",")) if args.hooks else ()
    # the bare side reads its images from memory and moves each batch to the device, as extract must
    x_all = torch.from_numpy(np.asarray(ds["rgb"])).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        model(x_all[: args.batch_size].to(args.device))  # warm-up
        sync()
        t = time.perf_counter()
        for k in range(0, len(ds), args.batch_size):
            model(x_all[k:k + args.batch_size].to(args.device))
        sync()
        bare = time.perf_counter() - t
    tmp = tempfile.mkdtemp()
    try:
        t = time.perf_counter()
        out = extract(ExtractConfig(model=args.model, dataset=args.dataset, hooks=hooks, batch_size=args.batch_size,
                                    device=args.device),
                      f"{tmp}/store", progress=False, model=model)
        full = time.perf_counter() - t
        store = ActivationStore(out)
        tokens = sum(len(store[h]) for h in store.hooks)
    finally:
        shutil.rmtree(tmp)
    res = {"model": args.model, "hooks": list(hooks), "images": len(ds), "tokens": tokens,
           "bare_forward_s": round(bare, 3), "extract_s": round(full, 3),
           "bare_tokens_per_s": round(tokens / bare), "extract_tokens_per_s": round(tokens / full),
           "ratio": round(bare / full, 3), "torch_threads": torch.get_num_threads(), "device": args.device,
           "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
