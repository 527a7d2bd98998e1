"""Held-out concept recovery on planted truth (issue 15, analysis/heldout.py): for each seed and withheld set, the
planted unit of the withheld concept, whether it surfaces as a frobnoloid candidate (recall) and whether every
candidate is a true finding (precision), over the report seeds (developed on the dev seeds).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/heldout_recovery.py --work /tmp/heldout
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/heldout_recovery.py --seeds 0     # the dev seed

Each seed renders its own ``clutter`` 160 (render seed = the seed) under --work; each (seed, set) scoring run writes
``seed{S}/{SET}/validation.json``; all of it lands in ``--work/heldout.json``. Prints one line per run and the
pooled figures per set.
"""

import argparse
import time

from frobnolab.analysis.heldout import REPORT_SEEDS, WITHHELD, heldout_recovery


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/heldout")
    ap.add_argument("--seeds", default=",".join(map(str, REPORT_SEEDS)))
    ap.add_argument("--sets", default=",".join(WITHHELD), help=f"withheld sets, of {', '.join(WITHHELD)}")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    sets = {k: WITHHELD[k] for k in args.sets.split(",")}
    t = time.time()
    r = heldout_recovery(args.work, seeds, sets, progress=False)
    print(f"{'seed':>4} {'set':11s} {'unit: scene, best name (eta2), gap, q, candidate':72s} recall precision "
          f"candidates")
    for x in r["runs"]:
        us = "; ".join(f"{u['name']}: {u['scene_r2']:.2f}, {u['named']} ({u['named_r2']:.2f}), {u['gap']:.2f}, "
                       f"{u['q_value']:.3f}, {'yes' if u['candidate'] else 'no: ' + ', '.join(u['why_not'])}"
                       for u in x["units"])
        rec = "-" if x["recall"] is None else f"{x['recall']:.2f}"
        pre = "-" if x["precision"] is None else f"{x['precision']:.2f}"
        print(f"{x['seed']:>4} {x['set']:11s} {us:72s} {rec:>6} {pre:>9} {', '.join(x['candidates']) or '-'}"
              + (f" (false: {', '.join(x['false_candidates'])})" if x["false_candidates"] else "")
              + f"  [{x['seconds']:.0f} s]")
    for k, p in r["pooled"].items():
        rec = "-" if p["recall"] is None else f"{p['recall']:.2f}"
        pre = "-" if p["precision"] is None else f"{p['precision']:.2f}"
        print(f"pooled {k}: recall {rec} ({p['withheld_units']} units), precision {pre} ({p['candidates']} "
              f"candidates), noise flagged {p['noise_flagged']}")
    print(f"seeds {args.seeds}; {time.time() - t:.0f} s; {args.work}/heldout.json")


if __name__ == "__main__":
    main()
