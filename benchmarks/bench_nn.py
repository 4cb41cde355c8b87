"""Benchmark the multi-task nets; prints tables and ratios measured in one run.

Part ``compare`` (same data, same features, matched sizes): our MMoE vs DeepCTR-Torch's MMOE.
Both get the same encoded rows of the feature store under --root (training days <= 13, scored
on day 14): the sparse ids (one 16-d embedding each), the multi-hot fields (mean-pooled), the
standardised dense columns and the pretrained vectors (ours: frozen lookup tables; DeepCTR: the
same vectors expanded per row as dense inputs), 8 experts (128, 64), linear softmax gates,
towers (32,), Adam at the same learning rate, batch 4096, the same number of epochs, each model
in a fresh process of its own (as the stage trains one net per process).  Reported:
training rows/s (training loop only) and the day-14 weighted uAUC.  DeepCTR-Torch is not in the
project venv: it runs in a separate interpreter (--deepctr-python), see
benchmarks/requirements-bench.txt for the install lines.

Part ``epoch``: wall time of one training epoch of MMoE and PLE (nn.yaml sizes) on random
tensors with ``--rows`` rows (default 6.7M = the full preliminary training set) and the input
widths of the feature store under --root (or of the full-scale defaults when there is none),
for each of ``--precisions``.

Both parts print the roofline: the dense layers' matrix-product FLOPs per training row (2 per
weight forward, x3 with the backward pass; embedding lookups excluded) times the rows per second,
next to what a 4096x400 @ 400x1024 product of the same precision reaches in the same run.

    python benchmarks/bench_nn.py --root R --part compare [--epochs 1]
    python benchmarks/bench_nn.py --root R --part epoch [--rows 6700000] [--archs mmoe,ple]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEEPCTR_PYTHON = "/tmp/bench-venv/bin/python"
ACTION_NAMES = ("read_comment", "like", "click_avatar", "forward", "favorite", "comment", "follow")


# ============================================================================ DeepCTR worker
# Runs inside the bench venv: imports numpy, torch and deepctr_torch only.

def deepctr_worker(work: Path) -> None:
    import torch
    from deepctr_torch.inputs import DenseFeat, SparseFeat, VarLenSparseFeat
    from deepctr_torch.models import MMOE

    spec = json.loads((work / "spec.json").read_text())
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    data = np.load(work / "train.npz")
    valid = np.load(work / "valid.npz")
    dim = spec["emb_dim"]
    columns, x_train, x_valid = [], {}, {}
    for j, (name, card) in enumerate(zip(spec["cat_names"], spec["cat_cards"])):
        columns.append(SparseFeat(name, vocabulary_size=card, embedding_dim=dim))
        x_train[name], x_valid[name] = data["cat"][:, j].astype(np.float32), valid["cat"][:, j].astype(np.float32)
    for name, (n_tokens, width) in spec["bags"].items():
        columns.append(VarLenSparseFeat(SparseFeat(name, vocabulary_size=n_tokens, embedding_dim=dim),
                                        maxlen=width, combiner="mean"))
        x_train[name], x_valid[name] = data[name].astype(np.float32), valid[name].astype(np.float32)
    for name, width in spec["dense_blocks"].items():
        columns.append(DenseFeat(name, width))
        x_train[name], x_valid[name] = data[name].astype(np.float32), valid[name].astype(np.float32)
    model = MMOE(columns, num_experts=spec["n_experts"], expert_dnn_hidden_units=tuple(spec["expert_dims"]),
                 gate_dnn_hidden_units=(), tower_dnn_hidden_units=tuple(spec["tower_dims"]),
                 task_types=["binary"] * len(ACTION_NAMES), task_names=list(ACTION_NAMES),
                 seed=spec["seed"], device="cpu")
    model.compile(torch.optim.Adam(model.parameters(), lr=spec["lr"]), loss="binary_crossentropy")
    y = data["labels"].astype(np.float32)
    t0, c0 = time.perf_counter(), time.process_time()
    model.fit(x_train, y, batch_size=spec["batch_size"], epochs=spec["epochs"], verbose=0, shuffle=True)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    preds = model.predict(x_valid, batch_size=16384).astype(np.float32)
    np.save(work / "deepctr_preds.npy", preds)
    (work / "deepctr_result.json").write_text(json.dumps(
        {"train_seconds": seconds, "cpu_seconds": cpu, "rows": int(len(y)) * spec["epochs"],
         "n_params": int(sum(p.numel() for p in model.parameters()))}))


# ============================================================================ helpers

def _setup_path() -> None:
    sys.path.insert(0, str(REPO / "src"))


def _nn_config(args) -> dict:
    from wbdc.config import load_defaults
    cfg = load_defaults()
    cfg["data"]["seed"] = args.seed
    cfg["nn"]["train"]["progress"] = False
    return cfg


def _table(rows: list[dict], cols: list[str]) -> str:
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    for r in rows:
        out.append("  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(cols, widths)))
    return "\n".join(out)


# ============================================================================ roofline

def matmul_peak_gflops(dtype_name: str, m: int = 4096, k: int = 400, n: int = 1024, reps: int = 30) -> float:
    """GFLOP/s of a (m x k) @ (k x n) matrix product in ``dtype_name`` (fp32 or bf16) with this
    process's torch threads: the ceiling the experts' and towers' products can reach."""
    import torch
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=g).to(dtype), torch.randn(k, n, generator=g).to(dtype)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * m * k * n * reps / (time.perf_counter() - t) / 1e9


def train_flops_per_row(model) -> float:
    """Matrix-product FLOPs of one training row: 2 per weight of every dense layer (linear
    maps, batched expert weights, gates; not the embedding lookups) in the forward pass, times 3
    with the backward pass (gradients of the inputs and of the weights)."""
    import torch
    tables = {id(m.weight) for m in model.modules() if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag))}
    weights = sum(p.numel() for p in model.parameters() if p.requires_grad and p.dim() >= 2 and id(p) not in tables)
    return 6.0 * weights


# ============================================================================ part: compare

def _compare_rows(args):
    """The encoder, training rows (days <= 13), day-14 rows and score function of the store."""
    from wbdc.features.store import FeatureStore
    from wbdc.nn.data import select_features, Encoder
    from wbdc.nn.pipeline import make_score_fn
    from wbdc.paths import Paths

    cfg = _nn_config(args)
    nn = cfg["nn"]
    nn["features"]["dense_dtype"] = "float32"
    store = FeatureStore(Paths.at(args.root))
    sel = select_features(store, nn["features"])
    days = [d for d in store.days if d <= 13]
    enc = Encoder.fit_days(store, days, sel, int(nn["features"]["max_list_len"]), "float32")
    train = enc.encode_days(store, days, labels=True)
    valid = enc.encode_days(store, [14], labels=True)
    return cfg, store, sel, enc, train, valid, make_score_fn(valid)


def ours_worker(args, out: Path) -> None:
    """One of our MMoE variants (``--precisions`` holds one value) trained in this fresh process:
    each variant starts from the same clean allocator and thread pools, as the stage does (a
    second model trained in the same process ran up to 25% slower, whichever came first)."""
    _setup_path()
    from wbdc.nn.pipeline import new_trainer

    cfg, store, _, enc, train, valid, score = _compare_rows(args)
    cfg["nn"]["train"]["precision"] = args.precisions
    trainer = new_trainer("mmoe", enc, store, cfg, train)
    fit = trainer.fit(train, float(args.epochs))
    peak = matmul_peak_gflops(trainer.precision)
    scores = score(trainer.predict(valid))
    out.write_text(json.dumps({
        "model": "ours MMoE" + ("" if args.precisions == "fp32" else f" {args.precisions}"),
        "gflops": train_flops_per_row(trainer.model) * fit.samples_per_s / 1e9, "peak_gflops": peak,
        "precision": trainer.precision, "rows_per_s": fit.samples_per_s, "train_s": fit.train_seconds,
        "rows_per_cpu_s": fit.samples / fit.cpu_seconds,
        "scores": {k: float(v) for k, v in scores.items()},
        "n_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)}))


def part_compare(args) -> dict:
    _setup_path()
    from wbdc.nn.trainer import available_threads

    cfg, store, sel, enc, train, valid, score = _compare_rows(args)
    nn = cfg["nn"]
    threads = available_threads()
    print(f"[bench_nn] {len(train):,} training rows, {len(valid):,} day-14 rows, "
          f"{len(sel.categorical)} ids, {len(sel.dense)} dense, {len(sel.bags)} multi-hot, "
          f"{len(sel.pretrained)} pretrained; {threads} threads", file=sys.stderr)

    # ours, at fp32 (the default) and with the bf16 forward pass (nn.train.precision), each in
    # a fresh process like DeepCTR's
    variants = []
    if args.precisions is None:
        from wbdc.nn.trainer import cpu_has_native_bf16
        args.precisions = "fp32,bf16" if cpu_has_native_bf16() else "fp32"
    for precision in args.precisions.split(","):
        with tempfile.TemporaryDirectory(prefix="bench_nn_ours_") as tmp:
            res_path = Path(tmp) / "result.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--root", args.root,
                   "--epochs", str(args.epochs), "--seed", str(args.seed), "--precisions", precision,
                   "--ours-worker", str(res_path)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise SystemExit(f"our MMoE ({precision}) failed:\n{r.stderr[-3000:]}")
            variants.append(json.loads(res_path.read_text()))
    ours = variants[0]

    # DeepCTR-Torch on the same encoded rows
    bags, tables = enc.side_tables(store)
    mm = nn["mmoe"]
    with tempfile.TemporaryDirectory(prefix="bench_nn_") as tmp:
        work = Path(tmp)
        for name, arr in (("train", train), ("valid", valid)):
            block = {"cat": arr.cat.numpy(), "dense": arr.dense.numpy()}
            if name == "train":
                block["labels"] = arr.labels.numpy()
            for b in bags:
                block[b.name] = b.lists.numpy()[arr.keys[:, b.key_slot].numpy()]
            for t in tables:
                block[t.name] = t.matrix.numpy()[arr.keys[:, t.key_slot].numpy()]
            np.savez(work / f"{name}.npz", **block)
        spec = {"threads": threads, "seed": args.seed, "emb_dim": int(nn["embedding"]["dim"]),
                "cat_names": sel.categorical, "cat_cards": enc.cat_cardinalities,
                "bags": {b.name: [b.n_tokens, int(b.lists.shape[1])] for b in bags},
                "dense_blocks": {"dense": len(sel.dense),
                                 **{t.name: int(t.matrix.shape[1]) for t in tables}},
                "n_experts": int(mm["n_experts"]), "expert_dims": list(mm["expert_dims"]),
                "tower_dims": list(mm["tower_dims"]), "lr": float(nn["train"]["lr"]),
                "batch_size": int(nn["train"]["batch_size"]), "epochs": int(args.epochs)}
        if not spec["dense_blocks"]["dense"]:
            del spec["dense_blocks"]["dense"]
        (work / "spec.json").write_text(json.dumps(spec))
        cmd = [args.deepctr_python, str(Path(__file__).resolve()), "--deepctr-worker", str(work)]
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if r.returncode != 0:
            raise SystemExit(f"DeepCTR worker failed:\n{r.stderr[-3000:]}")
        res = json.loads((work / "deepctr_result.json").read_text())
        preds = np.load(work / "deepctr_preds.npy")
    theirs = {"model": "DeepCTR-Torch MMOE", "rows_per_s": res["rows"] / res["train_seconds"],
              "rows_per_cpu_s": res["rows"] / res["cpu_seconds"],
              "train_s": res["train_seconds"], "scores": score(preds), "n_params": res["n_params"]}

    rows = []
    for r in (*variants, theirs):
        rows.append({"model": r["model"], "params": f"{r['n_params']:,}",
                     "train rows/s": f"{r['rows_per_s']:,.0f}",
                     "rows per CPU-s": f"{r['rows_per_cpu_s']:,.0f}",
                     "train s": f"{r['train_s']:.1f}",
                     "day-14 weighted uAUC": f"{r['scores']['weighted']:.5f}",
                     **{a: f"{r['scores'][a]:.4f}" for a in ACTION_NAMES[:4]}})
    print(f"\nMMoE, {args.epochs:g} epoch(s) on {len(train):,} rows, batch "
          f"{spec['batch_size']}, {threads} threads\n")
    print(_table(rows, list(rows[0])))
    print()
    for v in variants:
        print(f"{v['model']}: {v['gflops']:.1f} GFLOP/s in the dense layers' matrix products, "
              f"{v['gflops'] / v['peak_gflops']:.0%} of the {v['peak_gflops']:.0f} GFLOP/s that a "
              f"4096x400 @ 400x1024 {v['precision']} product reaches in this run")
    for v in variants:
        speed = v["rows_per_s"] / theirs["rows_per_s"]
        speed_cpu = v["rows_per_cpu_s"] / theirs["rows_per_cpu_s"]
        gain = v["scores"]["weighted"] - theirs["scores"]["weighted"]
        v.update(speed_ratio=speed, speed_ratio_cpu=speed_cpu, uauc_diff=gain)
        print(f"throughput ratio {v['model']} / DeepCTR: {speed:.2f}x wall, {speed_cpu:.2f}x per "
              f"CPU-second; weighted uAUC difference: {gain:+.5f}")
    return {"ours": ours, "variants": variants, "deepctr": theirs, "speed_ratio": ours["speed_ratio"],
            "speed_ratio_cpu": ours["speed_ratio_cpu"], "uauc_diff": ours["uauc_diff"],
            "train_rows": len(train), "threads": threads}


# ============================================================================ part: epoch

FULL_WIDTHS = {  # preliminary-round sizes (FACTS.md) for when no feature store is given
    "cat_cards": [20001, 106445, 18790, 25161, 17502, 4],
    "bags": [(14257, 16), (331, 11)],
    "pretrained": [(106445, 32), (106445, 32), (18790, 16)],
    "n_dense": 220,
}


def _widths_from_store(root: str, cfg: dict) -> dict | None:
    from wbdc.features.store import FeatureStore
    from wbdc.nn.data import Encoder, select_features
    from wbdc.paths import Paths

    try:
        store = FeatureStore(Paths.at(root))
    except FileNotFoundError:
        return None
    sel = select_features(store, cfg["nn"]["features"])
    enc = Encoder.fit_days(store, [d for d in store.days if d <= 13][-1:], sel,
                           int(cfg["nn"]["features"]["max_list_len"]))
    bags, tables = enc.side_tables(store)
    full = FULL_WIDTHS
    cards = []  # cardinalities at full scale for the ids the store provides
    by_name = dict(zip(["userid", "feedid", "authorid", "bgm_song_id", "bgm_singer_id", "device"],
                       full["cat_cards"]))
    for c, card in zip(sel.categorical, enc.cat_cardinalities):
        cards.append(by_name.get(c, card))
    return {"cat_cards": cards,
            "bags": [(max(b.n_tokens, nt), int(b.lists.shape[1]))
                     for b, (nt, _) in zip(bags, full["bags"] + [(1000, 8)] * len(bags))],
            "pretrained": [(106445 if t.name.startswith("feed") else 18790, int(t.matrix.shape[1]))
                           for t in tables],
            "n_dense": len(sel.dense)}


def part_epoch(args) -> dict:
    _setup_path()
    import torch
    from wbdc.nn.data import EncodedArrays
    from wbdc.nn.inputs import BagField, InputLayer, PretrainedTable
    from wbdc.nn.losses import build_balancer
    from wbdc.nn.models import build_model
    from wbdc.nn.trainer import TrainConfig, Trainer, seed_everything

    cfg = _nn_config(args)
    nn = cfg["nn"]
    widths = (_widths_from_store(args.root, cfg) if args.root else None)
    source = "feature store under --root" if widths else "full-scale defaults"
    widths = widths or FULL_WIDTHS
    n = int(args.rows)
    g = torch.Generator().manual_seed(args.seed)
    dense_dtype = getattr(torch, nn["features"].get("dense_dtype", "float32"))
    print(f"[bench_nn] random tensors: {n:,} rows, ids {widths['cat_cards']}, bags "
          f"{widths['bags']}, pretrained {widths['pretrained']}, {widths['n_dense']} dense "
          f"({dense_dtype}); widths from the {source}", file=sys.stderr)
    cat = torch.stack([torch.randint(0, c, (n,), generator=g, dtype=torch.int32)
                       for c in widths["cat_cards"]], 1)
    n_feeds, n_authors = 106445, 18790
    keys = torch.stack([torch.randint(0, n_feeds, (n,), generator=g, dtype=torch.int32),
                        torch.randint(0, n_authors, (n,), generator=g, dtype=torch.int32)], 1)
    dense = torch.randn(n, widths["n_dense"], generator=g).to(dense_dtype)
    labels = (torch.rand(n, 7, generator=g) < 0.02).to(torch.uint8)
    data = EncodedArrays(cat, keys, dense, labels, np.zeros(n, np.int32), np.zeros(n, np.int32))
    bags = [BagField(f"bag{i}", torch.randint(0, nt, (n_feeds, w), generator=g, dtype=torch.int32), nt, 0)
            for i, (nt, w) in enumerate(widths["bags"])]
    tables = [PretrainedTable(f"pre{i}", torch.randn(rows, dim, generator=g), 0 if rows == n_feeds else 1)
              for i, (rows, dim) in enumerate(widths["pretrained"])]
    results = {}
    if args.precisions is None:
        from wbdc.nn.trainer import cpu_has_native_bf16
        args.precisions = "fp32,bf16" if cpu_has_native_bf16() else "fp32"
    for arch, precision in ((a, pr) for a in args.archs.split(",") for pr in args.precisions.split(",")):
        nn["train"]["precision"] = precision
        seed_everything(args.seed, nn.get("threads", "auto"))
        emb = nn["embedding"]
        inputs = InputLayer(widths["cat_cards"], int(emb["dim"]), widths["n_dense"], bags, tables,
                            int(emb["bag_dim"]), bool(emb["pretrained_trainable"]), bool(emb["sparse"]))
        model = build_model(arch, inputs, 7, nn[arch])
        trainer = Trainer(model, build_balancer(nn["loss"]),
                          TrainConfig.from_dict({**nn["train"], "seed": args.seed, "progress": True}))
        fit = trainer.fit(data, epochs=args.epochs)
        peak = matmul_peak_gflops(trainer.precision)
        results[f"{arch} {trainer.precision}"] = {
                         "gflops": train_flops_per_row(model) * fit.samples_per_s / 1e9, "peak": peak,
                         "seconds_per_epoch": fit.train_seconds / fit.epochs_run,
                         "cpu_seconds_per_epoch": fit.cpu_seconds / fit.epochs_run,
                         "rows_per_s": fit.samples_per_s, "input_dim": inputs.output_dim,
                         "n_params": sum(p.numel() for p in model.parameters() if p.requires_grad)}
        del trainer, model, inputs
    rows = [{"arch": a, "input width": r["input_dim"], "trainable params": f"{r['n_params']:,}",
             "rows/s": f"{r['rows_per_s']:,.0f}",
             "s per epoch": f"{r['seconds_per_epoch']:.1f}",
             "CPU-s per epoch": f"{r['cpu_seconds_per_epoch']:.1f}",
             "min per epoch": f"{r['seconds_per_epoch'] / 60:.2f}",
             "GFLOP/s (dense layers)": f"{r['gflops']:.1f}",
             "matmul peak GFLOP/s": f"{r['peak']:.1f}",
             "share of peak": f"{r['gflops'] / r['peak']:.0%}"} for a, r in results.items()]
    print(f"\nOne training epoch on {n:,} random rows ({torch.get_num_threads()} threads, "
          f"batch {nn['train']['batch_size']}, embedding sparse={nn['embedding']['sparse']})\n")
    print(_table(rows, list(rows[0])))
    return {"rows": n, "source": source, "results": results}


# ============================================================================ main

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=None, help="artifact root holding features/ (stage features)")
    p.add_argument("--part", choices=("compare", "epoch", "all"), default="all")
    p.add_argument("--epochs", type=float, default=1.0, help="training epochs (compare: per model)")
    p.add_argument("--precisions", default=None,
                   help="our MMoE's nn.train.precision values to run (compare; default: fp32, plus bf16 "
                        "where the CPU has native bf16 matrix instructions -- elsewhere bf16 is emulated, "
                        "about 80x slower than fp32 on an AVX2-only CPU)")
    p.add_argument("--rows", type=int, default=6_700_000, help="rows of the random epoch set")
    p.add_argument("--archs", default="mmoe,ple", help="architectures timed by --part epoch")
    p.add_argument("--seed", type=int, default=2021)
    p.add_argument("--deepctr-python", default=DEEPCTR_PYTHON,
                   help="interpreter that has deepctr-torch installed (default: %(default)s)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--deepctr-worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--ours-worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.deepctr_worker:
        deepctr_worker(Path(args.deepctr_worker))
        return
    if args.ours_worker:
        ours_worker(args, Path(args.ours_worker))
        return
    out = {}
    if args.part in ("compare", "all"):
        if not args.root:
            p.error("--part compare needs --root with features/ built")
        out["compare"] = part_compare(args)
    if args.part in ("epoch", "all"):
        out["epoch"] = part_epoch(args)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
