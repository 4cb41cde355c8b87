"""Trainer, pipeline and diagnostics on the small fake store (no files besides tmp_path)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from test_nn_fakes import FakeStore, small_nn_config
from wbdc.nn.data import Encoder, select_features
from wbdc.nn.diagnostics import gate_means, write_gate_diagnostics
from wbdc.nn.losses import UncertaintyWeighting, build_balancer, task_bce
from wbdc.nn.pipeline import (build_net, load_checkpoint, make_score_fn, predict_rows, run_offline,
                              run_online, save_checkpoint)
from wbdc.nn.trainer import TrainConfig, Trainer, predict, seed_everything
from wbdc.schema import ACTIONS


@pytest.fixture(scope="module")
def store():
    return FakeStore(rows_per_day=400)


def _setup(store, arch, balancing="competition", sparse=False, **train):
    cfg = small_nn_config(arch, **train)
    cfg["nn"]["embedding"]["sparse"] = sparse
    sel = select_features(store, cfg["nn"]["features"])
    days = [d for d in store.days if d <= 13]
    df = store.load_days(days, sel.columns())
    lab = pd.concat([store.load_labels(d) for d in days], ignore_index=True)
    enc = Encoder.fit(df, store, sel)
    train = enc.encode(df, lab)
    valid = enc.encode(store.load_day(14, sel.columns()), store.load_labels(14))
    seed_everything(11, threads=1)
    model = build_net(arch, enc, store, cfg["nn"])
    balancer = build_balancer({"balancing": balancing, "init_log_var": 0.0})
    trainer = Trainer(model, balancer, TrainConfig.from_dict({**cfg["nn"]["train"], "seed": 11}))
    return cfg, enc, train, valid, trainer


def _full_loss(trainer, data) -> float:
    with torch.no_grad():
        trainer.model.eval()
        b = data.batch(torch.arange(len(data)))
        return float(trainer.balancer(task_bce(trainer.model(b), b["labels"])))


@pytest.mark.parametrize("arch", ["sb", "mmoe", "ple"])
def test_a_few_steps_lower_the_loss(store, arch):
    _, _, train, _, trainer = _setup(store, arch)
    before = _full_loss(trainer, train)
    trainer.fit(train, epochs=1.0)
    after = _full_loss(trainer, train)
    assert after < before - 0.05 * before, (before, after)


@pytest.mark.parametrize("arch", ["sb", "mmoe", "ple"])
def test_predictions_are_probabilities_one_row_per_input(store, arch):
    _, _, train, valid, trainer = _setup(store, arch)
    trainer.fit(train, epochs=0.5)
    p = trainer.predict(valid)
    assert p.shape == (len(valid), len(ACTIONS)) and p.dtype == np.float32
    assert np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()


def test_dot_interactions_go_through_build_net_and_train(store):
    cfg = small_nn_config("mmoe")
    cfg["nn"]["embedding"]["interactions"] = "dot"
    _, enc, train, _, plain = _setup(store, "mmoe")
    model = build_net("mmoe", enc, store, cfg["nn"])
    fields = model.inputs.n_cat + len(model.inputs.bags)          # bag_dim == dim in the config
    assert model.inputs.output_dim == plain.model.inputs.output_dim + fields * (fields - 1) // 2
    trainer = Trainer(model, build_balancer({"balancing": "competition", "init_log_var": 0.0}),
                      TrainConfig.from_dict({**cfg["nn"]["train"], "seed": 11}))
    before = _full_loss(trainer, train)
    trainer.fit(train, epochs=1.0)
    assert _full_loss(trainer, train) < 0.95 * before


def test_content_interaction_goes_through_build_net_and_train(store):
    cfg = small_nn_config("mmoe")
    cfg["nn"]["embedding"]["interactions"] = "content"
    _, enc, train, _, plain = _setup(store, "mmoe")
    model = build_net("mmoe", enc, store, cfg["nn"])
    assert model.inputs.user_slot == list(enc.selection.categorical).index("userid")
    assert model.inputs.output_dim == plain.model.inputs.output_dim + int(cfg["nn"]["embedding"]["dim"])
    trainer = Trainer(model, build_balancer({"balancing": "competition", "init_log_var": 0.0}),
                      TrainConfig.from_dict({**cfg["nn"]["train"], "seed": 11}))
    before = _full_loss(trainer, train)
    trainer.fit(train, epochs=1.0)
    assert _full_loss(trainer, train) < 0.95 * before
    from types import SimpleNamespace
    from wbdc.config import ConfigError
    from wbdc.nn.pipeline import user_slot
    no_user = SimpleNamespace(selection=SimpleNamespace(categorical=["feedid", "authorid"]))
    assert user_slot(no_user, "dot") is None
    with pytest.raises(ConfigError, match="userid"):
        user_slot(no_user, "content")


def test_same_seed_gives_identical_predictions(store):
    preds = []
    for _ in range(2):
        _, _, train, valid, trainer = _setup(store, "ple")
        trainer.fit(train, epochs=1.0)
        preds.append(trainer.predict(valid))
    np.testing.assert_array_equal(preds[0], preds[1])
    _, _, train, valid, trainer = _setup(store, "ple", seed=3)   # another shuffle seed
    trainer.cfg.seed = 3
    trainer.generator.manual_seed(3)
    trainer.fit(train, epochs=1.0)
    assert not np.array_equal(trainer.predict(valid), preds[0])


def test_unseen_ids_map_to_the_reserved_index_and_predict(store):
    cfg, enc, train, _, trainer = _setup(store, "mmoe")
    trainer.fit(train, epochs=0.5)
    day15 = store.load_day(15, enc.selection.columns())
    seen_users = set(store.load_days([d for d in store.days if d <= 13])["userid"])
    cold = ~day15["userid"].isin(seen_users).to_numpy()
    assert cold.any()
    arr = enc.encode(day15)
    u = enc.selection.categorical.index("userid")
    assert (arr.cat[torch.from_numpy(cold), u] == 0).all()
    assert (arr.cat[torch.from_numpy(~cold), u] > 0).all()
    # an id far outside anything the tables hold must not index out of range either
    day15.loc[:, "feedid"] = 2_000_000_000
    day15.loc[:, "authorid"] = 123456789
    p = predict_rows(trainer.model, enc, day15)
    assert len(p) == len(day15) and p[list(ACTIONS)].notna().all().all()


def test_uncertainty_log_variances_are_learned_by_the_trainer(store):
    # at a constant rate: one short epoch of an annealed rate moves the log-variances too little
    _, _, train, _, trainer = _setup(store, "sb", balancing="uncertainty", lr_schedule="constant")
    assert isinstance(trainer.balancer, UncertaintyWeighting)
    trainer.fit(train, epochs=1.0)
    s = trainer.balancer.log_var.detach()
    assert (s.abs() > 1e-3).all()
    # rare actions have the smallest BCE, so their log-variance falls furthest
    assert float(s[ACTIONS.index("comment")]) < float(s[ACTIONS.index("read_comment")])


def test_early_stopping_keeps_the_best_state(store):
    """The best epoch is forced before the last (scripted validation scores): training stops after
    `patience` epochs without gain and the model is rolled back to the best epoch's state."""
    _, _, train, valid, trainer = _setup(store, "mmoe", epochs=3, patience=1, lr=0.05)
    real = make_score_fn(valid)
    scripted = iter([0.60, 0.70, 0.65, 0.99, 0.99, 0.99])
    seen = []

    def score_fn(preds):
        seen.append(np.array(preds, copy=True))
        return {**real(preds), "weighted": next(scripted)}
    res = trainer.fit(train, epochs=6, valid=valid, score_fn=score_fn)
    scores = [h["valid_weighted"] for h in res.history]
    assert scores == [0.60, 0.70, 0.65]                 # stopped one epoch after the best
    assert res.best_score == 0.70 and res.best_epoch == res.history[1]["epochs"] == 2
    assert res.epochs_run == 3
    np.testing.assert_array_equal(res.best_preds, seen[1])
    assert not np.array_equal(seen[1], seen[2])          # the last epoch did change the model
    np.testing.assert_array_equal(trainer.predict(valid), seen[1])   # best state restored


def test_each_half_keeps_its_own_best_epoch(store):
    """With the halves scored at every evaluation, each half keeps the evaluation it prefers
    (the first maximum of its own weighted uAUC) and that evaluation's predictions, while the
    state restored (and the online epoch count) stays the all-users choice."""
    _, _, train, valid, trainer = _setup(store, "mmoe", patience=3, lr=0.05, eval_every_steps=2)
    score_fn = make_score_fn(valid, 5)
    res = trainer.fit(train, epochs=2, valid=valid, score_fn=score_fn)
    assert len(res.history) >= 4
    for h in ("A", "B"):
        curve = [r[f"valid_{h}/weighted"] for r in res.history if f"valid_{h}/weighted" in r]
        k = int(np.argmax(curve))
        assert res.half_best[h]["score"] == curve[k]
        assert res.half_best[h]["epoch"] == pytest.approx(res.history[k]["epochs"], abs=1e-4)
        assert score_fn(res.half_best[h]["preds"])[f"{h}/weighted"] == curve[k]
    all_curve = [r["valid_weighted"] for r in res.history]
    assert res.best_epoch == pytest.approx(res.history[int(np.argmax(all_curve))]["epochs"], abs=1e-4)
    assert "A/like" not in res.best_scores and set(ACTIONS) <= set(res.best_scores)
    # without halves nothing is kept per half
    _, _, train, valid, trainer = _setup(store, "sb", epochs=1)
    assert trainer.fit(train, epochs=0.5, valid=valid, score_fn=make_score_fn(valid)).half_best == {}


def test_fractional_epochs_and_step_evaluation(store):
    _, _, train, valid, trainer = _setup(store, "sb", eval_every_steps=5)
    steps_per_epoch = int(np.ceil(len(train) / trainer.cfg.batch_size))
    res = trainer.fit(train, epochs=0.5, valid=valid, score_fn=make_score_fn(valid))
    assert res.steps == round(0.5 * steps_per_epoch)
    expected = list(range(5, res.steps + 1, 5))
    assert len(expected) >= 2, "the fixture must give at least two step evaluations"
    steps = [h["step"] for h in res.history]
    assert steps[:len(expected)] == expected and set(steps) <= {*expected, res.steps}
    assert res.samples_per_s > 0


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_offline_then_online_pipeline_and_checkpoint(store, tmp_path, precision):
    # a reloaded checkpoint predicts in the precision it was trained in
    cfg = small_nn_config("ple", epochs=2, precision=precision)
    off = run_offline(store, "ple", cfg)
    assert off.fit.precision == precision
    assert list(off.preds.columns) == ["userid", "feedid", *ACTIONS]
    assert off.preds["userid"].tolist() == store.load_day(14)["userid"].tolist()
    assert 0.5 < off.fit.best_scores["weighted"] <= 1.0
    assert set(ACTIONS) <= set(off.fit.best_scores)
    # the honest score is cross-fitted from each half's own best-epoch predictions
    from wbdc.metrics import crossfit_scores, split_halves
    labels = store.load_labels(14)
    halves = split_halves(int(cfg["data"]["seed"]), off.preds["userid"].to_numpy())
    assert off.scores == pytest.approx(crossfit_scores(labels, off.half_preds["A"],
                                                       off.half_preds["B"], halves))
    assert set(off.half_epochs) == {"A", "B"}
    # gate diagnostics: one row per (level, action), each a distribution over own + shared experts
    g = off.gates
    assert len(g) == 2 * len(ACTIONS)
    np.testing.assert_allclose(g.drop(columns=["level", "action"]).sum(1), 1.0, rtol=1e-5)
    files = write_gate_diagnostics(g, tmp_path, "test")
    assert [f.name for f in files] == ["gates.csv", "gates.png"]
    assert pd.read_csv(files[0]).shape == g.shape
    assert files[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    save_checkpoint(tmp_path / "ck.pt", "ple", off, cfg["nn"])
    model, enc = load_checkpoint(tmp_path / "ck.pt", store)
    again = predict_rows(model, enc, store.load_day(14, enc.selection.columns()))
    np.testing.assert_allclose(again[list(ACTIONS)].to_numpy(), off.preds[list(ACTIONS)].to_numpy(),
                               rtol=0, atol=1e-6)

    on = run_online(store, "ple", cfg, epochs=off.fit.best_epoch)
    assert on.preds["feedid"].tolist() == store.load_day(15)["feedid"].tolist()
    assert on.n_train == sum(len(store.load_day(d)) for d in store.days if d <= 14)


def test_shared_bottom_has_no_gate_report(store, tmp_path):
    _, _, _, valid, trainer = _setup(store, "sb")
    g = gate_means(trainer.model, valid)
    assert g.empty and write_gate_diagnostics(g, tmp_path) == []


def test_gate_means_over_the_first_rows_only(store):
    """``max_rows``: the gate means of the first whole batches holding that many rows, the same
    as the means over those rows alone; without it, every row."""
    _, _, _, valid, trainer = _setup(store, "ple")
    n = len(valid)
    every = gate_means(trainer.model, valid, batch_size=100)
    assert every.attrs["rows"] == n and n > 300
    head = gate_means(trainer.model, valid, batch_size=100, max_rows=250)   # 3 batches: 300 rows
    alone = gate_means(trainer.model, valid.take(torch.arange(300)), batch_size=100)
    assert head.attrs["rows"] == 300
    slots = [c for c in head.columns if c not in ("level", "action")]
    np.testing.assert_allclose(head[slots].to_numpy(), alone[slots].to_numpy(), rtol=1e-12)
    assert not np.allclose(head[slots].to_numpy(), every[slots].to_numpy(), rtol=0, atol=1e-9)


def test_sparse_adam_trains_and_leaves_rows_outside_the_batch_alone(store):
    _, _, train, _, trainer = _setup(store, "sb", sparse=True)
    emb = trainer.model.inputs.cat_embedding
    assert [type(o).__name__ for o in trainer.optimizer.optimizers] == ["Adam", "SparseAdam"]
    before = emb.weight.detach().clone()
    idx = torch.arange(64)
    batch = train.batch(idx)
    trainer.train_step(batch)
    rows = (batch["cat"] + trainer.model.inputs.cat_offsets).unique().long()
    untouched = torch.ones(len(before), dtype=torch.bool)
    untouched[rows] = False
    assert torch.equal(emb.weight.detach()[untouched], before[untouched])
    assert not torch.equal(emb.weight.detach()[rows], before[rows])


def test_adagrad_with_sparse_embeddings_trains(store):
    _, _, train, _, trainer = _setup(store, "mmoe", sparse=True, optimizer="adagrad", lr=0.05)
    before = _full_loss(trainer, train)
    trainer.fit(train, epochs=1.0)
    assert _full_loss(trainer, train) < before
    emb = trainer.model.inputs.cat_embedding
    assert emb.sparse


def test_device_choice_is_checked():
    import torch

    from wbdc.nn.trainer import resolve_device
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")


def test_bf16_precision_trains_and_predicts_close_to_fp32(store):
    _, _, train, valid, trainer = _setup(store, "mmoe", precision="bf16")
    before = _full_loss(trainer, train)
    trainer.fit(train, epochs=1.0)
    assert _full_loss(trainer, train) < 0.95 * before
    p16 = trainer.predict(valid)
    assert p16.dtype == np.float32 and np.isfinite(p16).all() and ((p16 >= 0) & (p16 <= 1)).all()
    p32 = predict(trainer.model, valid, precision="fp32")
    assert np.abs(p16 - p32).max() < 0.05          # same weights, only the matmul precision differs
    assert trainer.model.inputs.output_dim > 0 and next(trainer.model.parameters()).dtype == torch.float32


def test_unknown_precision_is_refused(store):
    with pytest.raises(ValueError, match="nn.train.precision"):
        _setup(store, "sb", precision="fp8")


def test_auto_precision_is_bf16_only_with_native_bf16_or_a_gpu(monkeypatch):
    from wbdc.nn import trainer as tr
    avx2 = "processor\t: 0\nflags\t\t: fpu sse avx avx2 fma\n"
    bf16 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
    amx = "processor\t: 0\nflags\t\t: fpu avx2 amx_tile amx_bf16\n"
    assert not tr.cpu_has_native_bf16(avx2)
    assert tr.cpu_has_native_bf16(bf16) and tr.cpu_has_native_bf16(amx)
    monkeypatch.setattr(tr, "cpu_has_native_bf16", lambda cpuinfo=None: False)
    assert tr.resolve_precision("auto", "cpu") == "fp32"
    assert tr.resolve_precision("auto", "cuda") == "bf16"
    monkeypatch.setattr(tr, "cpu_has_native_bf16", lambda cpuinfo=None: True)
    assert tr.resolve_precision("auto", "cpu") == "bf16"
    assert tr.resolve_precision("fp32", "cpu") == "fp32" and tr.resolve_precision("bf16", "cpu") == "bf16"


def test_auto_evaluation_schedule_grows_with_the_epoch():
    from wbdc.nn.trainer import eval_schedule
    assert eval_schedule("auto", 1, 900_000, 220) == (0, 1)            # small: epoch ends
    assert eval_schedule("auto", 1, 6_300_000, 1_538) == (513, 3)      # full: 3 per epoch
    assert eval_schedule("auto", 2, 60_000_000, 14_649) == (3_663, 8)  # final: 4 per epoch
    assert eval_schedule(5, 2, 10**8, 100) == (5, 2) and eval_schedule(0, 0, 10, 1) == (0, 1)
    with pytest.raises(ValueError, match="eval_every_steps"):
        eval_schedule(-1, 1, 10, 1)


def test_auto_schedule_evaluates_inside_the_epoch(store, monkeypatch):
    from wbdc.nn import trainer as tr
    monkeypatch.setattr(tr, "AUTO_EVAL_ROWS", 1000)     # the fake store's epoch counts as "large"
    _, _, train, valid, trainer = _setup(store, "sb", eval_every_steps="auto", patience=1)
    from wbdc.nn.pipeline import make_score_fn
    fit = trainer.fit(train, epochs=1.0, valid=valid, score_fn=make_score_fn(valid))
    evals = [h for h in fit.history if "valid_weighted" in h]
    assert len(evals) == min(4, len(train) // 1000) and fit.evals_per_epoch > 1


def test_max_rows_cuts_the_offline_epochs_to_one_at_the_final_rounds_size():
    """``nn.train.max_rows``: the offline fit sees at most that many rows over its epochs, never
    less than one epoch nor more than ``epochs``; the default leaves tiny..full alone."""
    from wbdc.config import ConfigError, load_defaults
    from wbdc.nn.trainer import offline_epochs
    default = load_defaults()["nn"]["train"]
    assert default["max_rows"] == 32_000_000 and default["epochs"] == 4
    assert offline_epochs(default, 6_300_000) == 4.0           # full: unchanged
    assert offline_epochs(default, 62_677_325) == 1.0          # final: one epoch
    assert offline_epochs(default, 10_000_000) == 3.2          # in between: the share that fits
    assert offline_epochs({**default, "epochs": 0.5}, 62_677_325) == 0.5
    assert offline_epochs({**default, "max_rows": None}, 10**9) == 4.0
    for bad in (0, -5, 2.5, True, "many"):
        with pytest.raises(ConfigError, match=r"^nn\.train\.max_rows: expected a positive row count or null, got "):
            offline_epochs({**default, "max_rows": bad}, 10)


def test_an_offline_fit_over_max_rows_trains_one_epoch_and_says_so(store, capsys):
    cfg = small_nn_config("sb", epochs=3, max_rows=100, eval_every_steps=0, patience=5, neg_rate=None)
    res = run_offline(store, "sb", cfg)
    n = res.n_train
    assert n > 100 and res.fit.epochs_run == 1.0
    assert len([h for h in res.fit.history if "valid_weighted" in h]) == 1
    err = capsys.readouterr().err
    assert f"{n:,} training rows: at most 1 epoch instead of 3 (nn.train.max_rows=100)" in err
    # neg_rate auto: the one epoch is cut to max_rows by down-sampling the rows with no action
    cfg["nn"]["train"].update(neg_rate="auto", max_rows=n * 2 // 3)
    res = run_offline(store, "sb", cfg)
    assert abs(res.n_train - n * 2 // 3) <= 1 and res.fit.epochs_run == 1.0
    assert res.fit.samples == res.n_train
    assert "per pass (nn.train.neg_rate auto: one epoch of" in capsys.readouterr().err
    cfg["nn"]["train"]["max_rows"] = None                       # the cap off: every epoch runs
    res = run_offline(store, "sb", cfg)
    assert res.fit.epochs_run == 3.0 and res.n_train == n


def test_lr_decay_scales_every_learning_rate_between_epochs_only(store):
    from wbdc.config import ConfigError
    lrs = {}
    for decay in (1.0, 0.5):
        _, _, train, _, trainer = _setup(store, "sb", lr=0.01, lr_decay=decay, epochs=3,
                                         lr_schedule="constant")
        seen = []
        step = trainer.train_step

        def spy(batch, step=step, trainer=trainer, seen=seen):
            seen.append(trainer.optimizer.optimizers[0].param_groups[0]["lr"])
            return step(batch)

        trainer.train_step = spy
        fit = trainer.fit(train, 3)
        per_epoch = -(-len(train) // 256)
        assert fit.steps == 3 * per_epoch
        lrs[decay] = sorted(set(seen), reverse=True)
        # each epoch trains at one rate; no decay after the last epoch
        assert [seen[0], seen[per_epoch], seen[-1]] == pytest.approx(
            [0.01, 0.01 * decay, 0.01 * decay ** 2])
        assert trainer.optimizer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.01 * decay ** 2)
    assert lrs[1.0] == [0.01] and lrs[0.5] == pytest.approx([0.01, 0.005, 0.0025])
    cfg = small_nn_config("sb")
    for bad in (0, 1.5, True, "x"):
        with pytest.raises(ConfigError, match=r"^nn.train.lr_decay: expected a factor in \(0, 1\], got "):
            TrainConfig.from_dict({**cfg["nn"]["train"], "lr_decay": bad, "seed": 1})


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_lr_schedule_anneals_step_by_step_to_the_floor_then_holds(store, kind):
    from wbdc.config import ConfigError
    _, _, train, _, trainer = _setup(store, "sb", lr=0.01, lr_schedule=kind, lr_floor=0.1,
                                     lr_schedule_epochs=1.0, epochs=2)
    seen = []
    step = trainer.train_step

    def spy(batch):
        seen.append([g["lr"] for o in trainer.optimizer.optimizers for g in o.param_groups])
        return step(batch)

    trainer.train_step = spy
    fit = trainer.fit(train, 2)
    per_epoch = -(-len(train) // 256)
    assert fit.steps == len(seen) == 2 * per_epoch
    first = [s[0] for s in seen]
    assert first[0] == pytest.approx(0.01)                         # the first step at lr
    assert all(a > b for a, b in zip(first[:per_epoch], first[1:per_epoch]))   # falls every step
    mid = per_epoch // 2
    t = mid / per_epoch
    shape = 1 - t if kind == "linear" else 0.5 * (1 + np.cos(np.pi * t))
    assert first[mid] == pytest.approx(0.01 * (0.1 + 0.9 * shape))
    assert first[per_epoch:] == pytest.approx([0.001] * per_epoch)  # the second epoch at the floor
    assert all(len(set(s)) == 1 for s in seen)                     # every group alike
    cfg = small_nn_config("sb")
    for key, bad in (("lr_schedule", "step"), ("lr_floor", 0), ("lr_floor", 2.0),
                     ("lr_schedule_epochs", 0), ("lr_schedule_epochs", "x")):
        with pytest.raises(ConfigError, match=rf"^nn.train.{key}: expected "):
            TrainConfig.from_dict({**cfg["nn"]["train"], key: bad, "seed": 1})


def test_constant_schedule_leaves_the_rate_alone(store):
    _, _, train, _, trainer = _setup(store, "sb", lr=0.01, epochs=2, lr_schedule="constant")
    assert trainer.cfg.lr_schedule == "constant" and trainer.cfg.lr_factor(0.5) == 1.0
    trainer.fit(train, 1.5)
    assert trainer.optimizer.optimizers[0].param_groups[0]["lr"] == 0.01
