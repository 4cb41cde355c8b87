"""wbdc.metrics: exact agreement with a per-user sklearn reference, properties, errors."""
from __future__ import annotations

import warnings

import numba
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from wbdc.metrics import (UAUCWarning, group_by_user, per_user_auc, uauc, warm_up,
                          weighted_uauc)
from wbdc.schema import ACTION_WEIGHTS, ACTIONS


def reference_uauc(labels, preds, userids) -> float:
    """Plain definition: sklearn's AUC on each user with both classes, then the mean."""
    labels, preds, userids = map(np.asarray, (labels, preds, userids))
    aucs = []
    for u in pd.unique(userids):
        m = userids == u
        if 0 < labels[m].sum() < m.sum():
            aucs.append(roc_auc_score(labels[m], preds[m]))
    return float(np.mean(aucs)) if aucs else float("nan")


def random_case(seed: int, n: int = 3000, decimals: int = 1, n_users: int = 250):
    """Heavy ties, single-row users, all-positive and all-negative users, scattered ids."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(10**6, n_users, replace=False) - 5000       # non-contiguous, some < 0
    sizes = 1 + rng.poisson(rng.lognormal(1.5, 1.0, n_users))    # skewed, some single-row
    userids = np.repeat(ids, sizes)
    rate = rng.choice([0.0, 0.05, 0.3, 0.7, 1.0], n_users)       # all-neg / all-pos users too
    labels = (rng.random(len(userids)) < np.repeat(rate, sizes)).astype(np.int8)
    preds = np.round(rng.random(len(userids)) * 0.6 + 0.3 * labels, decimals)
    perm = rng.permutation(len(userids))                         # users not contiguous
    return labels[perm], preds[perm], userids[perm]


@pytest.fixture(scope="module", autouse=True)
def _compiled():
    warm_up()


# ------------------------------------------------------------------------------ exact values

def test_hand_built_values():
    #            user 7: pos .9 beats neg .5, ties neg .9 -> (1 + .5) / 2 = .75
    #            user 3: pos .2 below neg .3 -> 0;  user 5 all negative; user 9 single row
    userids = np.array([7, 3, 7, 5, 7, 3, 5, 9])
    labels = np.array([1, 0, 0, 0, 0, 1, 0, 1])
    preds = np.array([.9, .3, .5, .1, .9, .2, .4, .6])
    assert uauc(labels, preds, userids) == pytest.approx(0.375, abs=1e-15)
    ids, aucs = per_user_auc(labels, preds, userids)
    np.testing.assert_array_equal(ids, [3, 5, 7, 9])
    np.testing.assert_array_equal(aucs, [0.0, np.nan, 0.75, np.nan])


def test_all_ties_in_a_user_is_one_half():
    assert uauc([1, 0, 0, 1, 0], [.5] * 5, [1] * 5) == 0.5


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("decimals", [1, 2])
def test_agrees_with_sklearn_reference(seed, decimals):
    labels, preds, userids = random_case(seed, decimals=decimals)
    assert abs(uauc(labels, preds, userids) - reference_uauc(labels, preds, userids)) < 1e-9


def test_per_user_auc_matches_sklearn_per_user():
    labels, preds, userids = random_case(11)
    ids, aucs = per_user_auc(labels, preds, userids)
    np.testing.assert_array_equal(ids, np.unique(userids))
    for u, a in zip(ids, aucs):
        m = userids == u
        if 0 < labels[m].sum() < m.sum():
            assert abs(a - roc_auc_score(labels[m], preds[m])) < 1e-12
        else:
            assert np.isnan(a)


@pytest.mark.parametrize("kind", ["sorted", "int64_huge", "uint64_top", "string", "float", "bool_labels",
                                  "float32_preds", "float_labels"])
def test_input_kinds_agree(kind):
    labels, preds, userids = random_case(3, n_users=80)
    expected = reference_uauc(labels, preds, userids)
    if kind == "sorted":                      # rows already grouped: no reordering path
        o = np.argsort(userids, kind="stable")
        labels, preds, userids = labels[o], preds[o], userids[o]
        assert group_by_user(userids).order is None
    elif kind == "int64_huge":                # id range far beyond the counting-sort limit
        userids = userids.astype(np.int64) * 10**12
    elif kind == "uint64_top":                # near the top of uint64: no overflow on the way
        userids = np.uint64(2**64 - 1) - (userids - userids.min()).astype(np.uint64)
    elif kind == "string":
        userids = np.array([f"u{u}" for u in userids], dtype=object)
    elif kind == "float":
        userids = userids.astype(np.float64)
    elif kind == "bool_labels":
        labels = labels.astype(bool)
    elif kind == "float32_preds":
        preds = preds.astype(np.float32)
        expected = reference_uauc(labels, preds, userids)
    elif kind == "float_labels":
        labels = labels.astype(np.float64)
    assert abs(uauc(labels, preds, userids) - expected) < 1e-9


def test_group_by_user_structure():
    userids = np.array([5, 2, 5, 9, 2, 5])
    g = group_by_user(userids)
    np.testing.assert_array_equal(g.user_ids, [2, 5, 9])
    np.testing.assert_array_equal(g.offsets, [0, 2, 5, 6])
    np.testing.assert_array_equal(g.order, [1, 4, 0, 2, 5, 3])   # stable within a user
    np.testing.assert_array_equal(g.sizes, [2, 3, 1])
    assert (g.n_rows, g.n_users) == (6, 3)
    g2 = group_by_user(np.array(["b", "a", "b"], dtype=object))
    np.testing.assert_array_equal(g2.order, [1, 0, 2])
    np.testing.assert_array_equal(g2.user_ids, ["a", "b"])


def test_groups_reuse_gives_same_result():
    labels, preds, userids = random_case(4)
    g = group_by_user(userids)
    assert uauc(labels, preds, groups=g) == uauc(labels, preds, userids)
    assert uauc(labels, preds, userids, groups=g) == uauc(labels, preds, userids)
    np.testing.assert_array_equal(per_user_auc(labels, preds, groups=g)[1],
                                  per_user_auc(labels, preds, userids)[1])


def test_deterministic_across_thread_counts():
    labels, preds, userids = random_case(5, n=20000, n_users=2000)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = per_user_auc(labels, preds, userids)[1]
        numba.set_num_threads(before)
        many = per_user_auc(labels, preds, userids)[1]
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(one, many)


# ------------------------------------------------------------------------------ weighted

def _seven(seed: int, n: int = 2000):
    rng = np.random.default_rng(seed)
    userids = rng.integers(0, 120, n) * 3 + 1
    labels = {a: (rng.random(n) < r).astype(np.int8)
              for a, r in zip(ACTIONS, [.3, .25, .15, .1, .08, .06, .05])}
    preds = {a: np.round(rng.random(n) * 0.7 + 0.3 * labels[a], 2) for a in ACTIONS}
    return labels, preds, userids


def test_weighted_matches_reference_and_weights():
    labels, preds, userids = _seven(0)
    out = weighted_uauc(labels, preds, userids)
    assert list(out) == [*ACTIONS, "weighted"]
    ref = {a: reference_uauc(labels[a], preds[a], userids) for a in ACTIONS}
    for a in ACTIONS:
        assert abs(out[a] - ref[a]) < 1e-9
    expected = sum(ACTION_WEIGHTS[a] * ref[a] for a in ACTIONS) / sum(ACTION_WEIGHTS.values())
    assert abs(out["weighted"] - expected) < 1e-9
    assert sum(ACTION_WEIGHTS.values()) == 13


def test_weighted_accepts_dataframes_and_scores_common_actions_only():
    labels, preds, userids = _seven(1)
    lab = pd.DataFrame(labels).assign(userid=userids, device=1)
    pr = pd.DataFrame({a: preds[a] for a in ("like", "read_comment", "follow")},
                      index=np.arange(len(userids)) + 100)      # index is ignored: positional
    out = weighted_uauc(lab, pr, lab["userid"])
    assert list(out) == ["read_comment", "like", "follow", "weighted"]
    ref = {a: reference_uauc(labels[a], preds[a], userids) for a in ("read_comment", "like",
                                                                     "follow")}
    assert abs(out["weighted"] - (4 * ref["read_comment"] + 3 * ref["like"] + ref["follow"]) / 8
               ) < 1e-9


def test_action_without_valid_user_is_nan_and_weights_renormalise():
    labels, preds, userids = _seven(2)
    labels["forward"] = np.zeros_like(labels["forward"])
    labels["comment"] = np.ones_like(labels["comment"])
    with pytest.warns(UAUCWarning) as rec:
        out = weighted_uauc(labels, preds, userids)
    messages = [str(w.message) for w in rec]
    assert any("uauc[forward]: no user has both" in m for m in messages)
    assert any("uauc[comment]: no user has both" in m for m in messages)
    assert any("averaged over 5 of 7 actions" in m for m in messages)
    assert np.isnan(out["forward"]) and np.isnan(out["comment"])
    kept = [a for a in ACTIONS if a not in ("forward", "comment")]
    expected = sum(ACTION_WEIGHTS[a] * out[a] for a in kept) / sum(ACTION_WEIGHTS[a] for a in kept)
    assert out["weighted"] == pytest.approx(expected, abs=1e-15)


def test_no_valid_user_at_all():
    with pytest.warns(UAUCWarning, match="no user has both"):
        assert np.isnan(uauc([0, 0, 1], [.1, .2, .3], [1, 1, 2]))
    with pytest.warns(UAUCWarning):
        out = weighted_uauc({"like": [1, 1]}, {"like": [.2, .3]}, [4, 4])
    assert np.isnan(out["like"]) and np.isnan(out["weighted"])
    with pytest.warns(UAUCWarning):
        assert np.isnan(uauc([], [], []))


def test_no_warning_when_all_actions_scored():
    labels, preds, userids = _seven(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        weighted_uauc(labels, preds, userids)


# ------------------------------------------------------------------------------ errors

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_predictions_raise(bad):
    with pytest.raises(ValueError, match=r"uauc: predictions must be finite, found .* at row 1"):
        uauc([0, 1, 1], [.1, bad, .3], [1, 1, 1])
    with pytest.raises(ValueError, match=r"weighted_uauc\[like\]: predictions must be finite"):
        weighted_uauc({"like": [0, 1]}, {"like": [bad, .2]}, [1, 1])


def test_length_mismatches_raise():
    with pytest.raises(ValueError, match="uauc: length mismatch: 3 labels but 2 predictions"):
        uauc([0, 1, 1], [.1, .2], [1, 1, 1])
    with pytest.raises(ValueError, match="uauc: length mismatch: 3 labels/predictions but 2 userids"):
        uauc([0, 1, 1], [.1, .2, .3], [1, 1])
    g = group_by_user([1, 1])
    with pytest.raises(ValueError, match="groups were built on 2 rows"):
        uauc([0, 1, 1], [.1, .2, .3], groups=g)
    with pytest.raises(ValueError, match="weighted_uauc: length mismatch: read_comment has 2 rows "
                                         "but like has 3"):
        weighted_uauc({"read_comment": [0, 1], "like": [0, 1, 0]},
                      {"read_comment": [.1, .2], "like": [.1, .2, .3]}, [1, 1])


def test_bad_labels_and_arguments_raise():
    with pytest.raises(ValueError, match=r"labels must be 0 or 1, found 2 at row 2"):
        uauc([0, 1, 2], [.1, .2, .3], [1, 1, 1])
    with pytest.raises(ValueError, match=r"labels must be 0 or 1, found 0.5 at row 0"):
        uauc([0.5, 1, 0], [.1, .2, .3], [1, 1, 1])
    with pytest.raises(ValueError, match="give userids or groups="):
        uauc([0, 1], [.1, .2])
    with pytest.raises(ValueError, match="no action .* is present in both"):
        weighted_uauc({"like": [0, 1]}, {"follow": [.1, .2]}, [1, 1])
    with pytest.raises(ValueError, match="userids contain NaN"):
        uauc([0, 1], [.1, .2], [1.0, np.nan])


# ------------------------------------------------------------------------------ properties

def cases(min_rows: int = 1):
    """Small tables over few users and a coarse prediction grid (many ties)."""
    return st.integers(min_rows, 60).flatmap(lambda n: st.tuples(
        st.lists(st.integers(0, 1), min_size=n, max_size=n),
        st.lists(st.sampled_from([0.0, 0.1, 0.2, 0.5, 0.7, 0.9, 1.0]), min_size=n, max_size=n),
        st.lists(st.sampled_from([-3, 0, 4, 17, 1000]), min_size=n, max_size=n),
    ))


def _nan_equal(a: float, b: float, tol: float = 1e-9) -> bool:
    return (np.isnan(a) and np.isnan(b)) or abs(a - b) <= tol


quiet = pytest.mark.filterwarnings("ignore::wbdc.metrics.UAUCWarning")
prop = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@quiet
@prop
@given(cases())
def test_property_agrees_with_reference(case):
    y, p, u = map(np.asarray, case)
    assert _nan_equal(uauc(y, p, u), reference_uauc(y, p, u))


@quiet
@prop
@given(cases(), st.randoms(use_true_random=False))
def test_property_row_permutation_invariant(case, rnd):
    y, p, u = map(np.asarray, case)
    perm = np.array(rnd.sample(range(len(y)), len(y)))
    a, b = uauc(y, p, u), uauc(y[perm], p[perm], u[perm])
    assert (np.isnan(a) and np.isnan(b)) or a == b      # exact: same per-user integers


@quiet
@prop
@given(cases(), st.dictionaries(st.sampled_from([-3, 0, 4, 17, 1000]),
                                st.tuples(st.integers(-4, 4), st.integers(-50, 50))))
def test_property_monotone_transform_within_users(case, transforms):
    """Any strictly increasing map applied per user (here 2**k * p + b) leaves uAUC alone."""
    y, p, u = map(np.asarray, case)
    q = p.copy()
    for user, (k, b) in transforms.items():
        m = u == user
        q[m] = np.cbrt(p[m]) * 2.0 ** k + b
    assert _nan_equal(uauc(y, q, u), uauc(y, p, u), tol=0)


@prop
@given(cases(min_rows=2))
def test_property_negated_predictions_give_one_minus(case):
    y, p, u = map(np.asarray, case)
    valid = [user for user in np.unique(u) if 0 < y[u == user].sum() < (u == user).sum()]
    keep = np.isin(u, valid)                        # keep only users with both classes
    assume(keep.any())
    y, p, u = y[keep], p[keep], u[keep]
    assert abs(uauc(y, -p, u) - (1.0 - uauc(y, p, u))) < 1e-12


# ------------------------------------------------------------------------------ user halves

def test_user_halves_are_seeded_order_free_halves():
    from wbdc.metrics import user_halves
    ids = np.arange(11) * 7
    a = user_halves(ids, 4)
    assert a.sum() == 5
    np.testing.assert_array_equal(a, user_halves(ids, 4))
    # the split depends on the set of ids, not their order
    perm = np.random.default_rng(0).permutation(11)
    np.testing.assert_array_equal(user_halves(ids[perm], 4), a[perm])
    assert not np.array_equal(user_halves(np.arange(1000), 4), user_halves(np.arange(1000), 5))
    with pytest.raises(ValueError, match="distinct"):
        user_halves(np.array([1, 1, 2]), 0)


def test_split_halves_rows_follow_their_user():
    from wbdc.metrics import split_halves
    rng = np.random.default_rng(3)
    users = rng.integers(0, 50, 600)
    h = split_halves(9, users)
    a_users = set(h.groups.user_ids[h.in_a].tolist())
    assert h.row_in_a.tolist() == [u in a_users for u in users]
    assert len(a_users) == len(np.unique(users)) // 2


def test_uauc_by_half_and_crossfit_scores_by_hand():
    from wbdc.metrics import crossfit_scores, split_halves, uauc_by_half, weighted_uauc_by_half
    rng = np.random.default_rng(5)
    users = rng.integers(0, 80, 3000)
    labels = {a: (rng.random(3000) < 0.3).astype(np.int8) for a in ACTIONS}
    sel_a = {a: rng.random(3000) + 0.5 * labels[a] for a in ACTIONS}
    sel_b = {a: rng.random(3000) for a in ACTIONS}
    h = split_halves(2, users)
    ra = h.row_in_a
    y = labels["like"]
    by = uauc_by_half(y, sel_a["like"], h)
    assert by["all"] == pytest.approx(uauc(y, sel_a["like"], users))
    assert by["A"] == pytest.approx(uauc(y[ra], sel_a["like"][ra], users[ra]))
    assert by["B"] == pytest.approx(uauc(y[~ra], sel_a["like"][~ra], users[~ra]))
    wb = weighted_uauc_by_half(labels, sel_a, h)
    assert wb["all"]["weighted"] == pytest.approx(weighted_uauc(labels, sel_a, users)["weighted"])
    cf = crossfit_scores(labels, sel_a, sel_b, h)
    for a in ACTIONS:
        on_b = uauc(labels[a][~ra], sel_a[a][~ra], users[~ra])
        on_a = uauc(labels[a][ra], sel_b[a][ra], users[ra])
        assert cf[a] == pytest.approx((on_a + on_b) / 2)
    sub_a = {a: v[~ra] for a, v in sel_a.items()}
    sub_b = {a: v[ra] for a, v in sel_b.items()}
    lab_b = {a: v[~ra] for a, v in labels.items()}
    lab_a = {a: v[ra] for a, v in labels.items()}
    assert cf["weighted"] == pytest.approx(
        (weighted_uauc(lab_b, sub_a, users[~ra])["weighted"]
         + weighted_uauc(lab_a, sub_b, users[ra])["weighted"]) / 2)
