"""SAE training throughput: `train_sae` streaming shuffled batches from the store vs sae-lens's SAETrainer fed the
same tokens from one in-memory tensor, and a plain PyTorch TopK loop for reference, in one run (same width, k,
batch size, token count; no evaluation), best of 3 interleaved passes each.

    .venv/bin/python benchmarks/sae_throughput.py --store STORE --hook HOOK [--tokens 1000000]
"""

import argparse
import json
import tempfile
import time

import sae_lens.training.sae_trainer  # noqa: F401  (import cost paid before any timing)
import torch

from frobnolab.analysis.sae import SAETrainConfig, make_trainer, train_sae, training_sae
from frobnolab.analysis.store import ActivationStore


def in_memory_batches(x: torch.Tensor, batch: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(len(x), generator=g)
        for s in range(0, len(x) - batch + 1, batch):
            yield x[perm[s:s + batch]]


def plain_topk(x: torch.Tensor, width: int, k: int, batch: int, tokens: int, lr: float) -> float:
    d = x.shape[1]
    W_enc = torch.nn.Parameter(torch.randn(d, width, device=x.device) / d**0.5)
    W_dec = torch.nn.Parameter(W_enc.data.T.clone())
    b_enc, b_dec = torch.nn.Parameter(torch.zeros(width, device=x.device)), torch.nn.Parameter(x.mean(0).clone())
    opt = torch.optim.Adam([W_enc, W_dec, b_enc, b_dec], lr=lr)
    it = in_memory_batches(x, batch, 0)
    t = time.perf_counter()
    for _ in range(tokens // batch):
        xb = next(it)
        pre = (xb - b_dec) @ W_enc + b_enc
        top = torch.topk(pre, k, dim=-1)
        f = torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(top.values))
        loss = ((f @ W_dec + b_dec - xb) ** 2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    _sync(x.device)
    return time.perf_counter() - t


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", required=True)
    ap.add_argument("--hook", required=True)
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3, help="passes of each side, interleaved; the best counts")
    ap.add_argument("--device", default="cpu", help="both sides train there; sae-lens's tensor is held there")
    args = ap.parse_args()
    cfg = SAETrainConfig(hook=args.hook, width=args.width, k=args.k, training_tokens=args.tokens,
                         batch_size=args.batch, checkpoints=0, normalize="none", device=args.device)
    tok = ActivationStore(args.store)[args.hook]
    x = torch.from_numpy(tok.activations("train")).contiguous().to(args.device)

    import sae_lens.training.sae_trainer as tm
    from functools import partial
    from pathlib import Path

    tm.tqdm = partial(tm.tqdm, disable=True)

    def run_ours(d: str) -> float:
        t = time.perf_counter()
        train_sae(args.store, f"{d}/a", cfg, progress=False, evaluate=False)
        _sync(args.device)
        return time.perf_counter() - t

    def run_theirs(d: str) -> float:
        sae = training_sae(cfg, tok.d_in)
        trainer = make_trainer(cfg, sae, in_memory_batches(x, args.batch, 0), Path(d) / "ck")
        t = time.perf_counter()
        trainer.fit()
        _sync(args.device)
        return time.perf_counter() - t

    # best of --repeats passes, the order alternating (the first pass of a process pays allocator warm-up)
    ours, theirs = [], []
    for r in range(args.repeats):
        for name in (("ours", "theirs") if r % 2 == 0 else ("theirs", "ours")):
            with tempfile.TemporaryDirectory() as d:
                (ours if name == "ours" else theirs).append(run_ours(d) if name == "ours" else run_theirs(d))
    ours, theirs = min(ours), min(theirs)
    plain = plain_topk(x, args.width, args.k, args.batch, args.tokens, cfg.lr)
    res = {"store_tokens": len(tok), "d_in": tok.d_in, "width": args.width, "k": args.k, "tokens": args.tokens,
           "frobnolab_train_sae_tok_s": round(args.tokens / ours),
           "sae_lens_in_memory_tok_s": round(args.tokens / theirs),
           "plain_torch_topk_tok_s": round(args.tokens / plain), "ratio_vs_sae_lens": round(theirs / ours, 3),
           "threads": torch.get_num_threads(), "repeats": args.repeats, "device": args.device,
           "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
