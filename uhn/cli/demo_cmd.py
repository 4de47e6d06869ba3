"""``uhn demo``: single-shot retrieval of corrupted MNIST digits with every similarity.

    uhn demo --n-memories 100 --corruption gaussian --level 0.5 --out figures/demo.png

Stores N real MNIST digits, corrupts one query per stored digit, retrieves all of them as one batch
with max separation for each similarity, prints the fraction retrieved (squared error <= 50, the
paper's criterion) and writes a picture: target, query and each similarity's output.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

SIMILARITIES = ("dot", "cosine", "euclidean", "manhattan", "kl", "reverse_kl")


#: options whose command-line default differs from the API's: (CLI default, API default, where)
API_DEFAULTS = {"separation": ("max", "identity", "Memory")}

#: figure formats --out may name (matplotlib writes each through save_figure's atomic replace)
FORMATS = (".png",)


def register(sub) -> None:
    from uhn.cli import nonnegative_float, nonnegative_int, positive_int
    p = sub.add_parser("demo", help="retrieve corrupted MNIST digits with every similarity; write a picture",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="mnist", help="uhn.models.data dataset: mnist, digits, natural or lfw")
    p.add_argument("--n-memories", type=positive_int, default=100, help="stored images (one query each)")
    p.add_argument("--corruption", default="gaussian", help="uhn.models.corruption kind of the queries")
    p.add_argument("--level", type=nonnegative_float, default=0.5, help="corruption level")
    p.add_argument("--separation", default="max",
                   help="any separation name with default parameters (default: max; the API's "
                        "default, Memory, is identity)")
    p.add_argument("--threshold", type=nonnegative_float, default=50.0,
                   help="squared-error criterion on 784 pixels (scaled by D / 784)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="dataset subset and corruption seed")
    p.add_argument("--out", type=Path, default=Path("figures") / "demo_retrieval.png",
                   help="the picture (PNG)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from uhn.models import Memory
    from uhn.models.corruption import corrupt
    from uhn.models.data import load_dataset

    from uhn.cli import check_out_file, note
    if args.out.suffix.lower() not in FORMATS:
        raise ValueError(f"--out must name a {' or '.join(FORMATS)} file, got {str(args.out)!r}")
    check_out_file(args.out)
    from uhn.models.corruption import KINDS
    from uhn.models.separation import get_separation
    get_separation(args.separation)           # bad names stop here, before the data is loaded
    if args.corruption not in KINDS:
        raise ValueError(f"unknown corruption {args.corruption!r}; choose one of {KINDS}")
    note(f"loading {args.n_memories} {args.dataset} images ...")
    ds = load_dataset(args.dataset, n=args.n_memories, seed=args.seed)
    Q = corrupt(ds.X, args.corruption, args.level, ds.image_shape, seed=args.seed)
    thr = args.threshold * ds.D / 784
    print(f"stored {ds.n} {ds.name} images (D={ds.D}); queries: {args.corruption} {args.level:g}; "
          f"separation: {args.separation}; correct if sum((x - z)^2) <= {thr:g}")
    from uhn.cli import defaults_note
    if defaults_note(args, API_DEFAULTS):
        print(defaults_note(args, API_DEFAULTS))
    outputs = {}
    for name in SIMILARITIES:
        mem = Memory(ds.X, similarity=name, separation=args.separation)
        mem.retrieve(Q[:1])     # first call: numba loads (or compiles) its kernels; not timed
        t0 = time.perf_counter()
        Z = mem.retrieve(Q)
        dt = time.perf_counter() - t0
        err = ((Z - ds.X) ** 2).sum(1)
        outputs[name] = Z
        print(f"  {name:>11}: {np.mean(err <= thr):6.3f} retrieved   ({dt * 1e3:6.1f} ms for {ds.n} queries)")

    note(f"drawing the picture -> {args.out} ...")
    import matplotlib
    matplotlib.use("Agg")
    from uhn.models.plotting import save_figure
    import matplotlib.pyplot as plt

    show = min(6, ds.n)
    cols = 2 + len(SIMILARITIES)
    fig, axes = plt.subplots(show, cols, figsize=(1.3 * cols, 1.3 * show), squeeze=False)
    titles = ["target", "query"] + list(SIMILARITIES)
    for r in range(show):
        row = [ds.X[r], Q[r]] + [outputs[s][r] for s in SIMILARITIES]
        for c, img in enumerate(row):
            ax = axes[r, c]
            ax.imshow(np.clip(img.reshape(ds.image_shape), 0, 1), cmap="gray" if len(ds.image_shape) == 2 else None)
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=8)
    fig.suptitle(f"{ds.name}: {ds.n} memories, {args.corruption} {args.level:g}, {args.separation} separation",
                 fontsize=9)
    fig.tight_layout()
    try:
        written = save_figure(fig, args.out)
    finally:
        plt.close(fig)
    print(f"wrote {written[0]}")
    return 0
