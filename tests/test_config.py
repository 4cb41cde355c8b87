"""Configuration: one typed declaration (wbdc.config_schema) that refuses what it does not know.

Covers issue 12 item 2: unknown keys in --set / --config / a YAML file are one-line errors naming
the key and the closest valid one; wrong types are one-line errors; every documented --set example
resolves and changes the value it names; YAML files and the declaration agree key for key; the
library reads no defaults of its own (TrainConfig refuses unknown keys).
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from wbdc.config import (ConfigError, apply_set, check_tree, closest_key, data_dirs, declared_keys,
                         default_config, load_defaults, resolve_argv)

REPO = Path(__file__).resolve().parents[1]

# Where a user reads a --set example: README, docs, --help texts and docstrings, the YAML comments.
DOC_FILES = [REPO / "README.md", REPO / "run_all.sh", *sorted((REPO / "docs").glob("*.md")),
             *sorted((REPO / "configs").glob("*.yaml")), *sorted((REPO / "src").rglob("*.py")),
             *sorted((REPO / "benchmarks").glob("*.py"))]
SET_RE = re.compile(r"--set[ =]([a-z_]+(?:\.[a-z0-9_]+)+)=([^\s`\"')\]]+)")


def documented_set_examples() -> list[tuple[str, str, str]]:
    out = set()
    for f in DOC_FILES:
        for key, value in SET_RE.findall(f.read_text(errors="replace")):
            if key.startswith("section."):     # the placeholder "section.key=value"
                continue
            out.add((str(f.relative_to(REPO)), key, value))
    return sorted(out)


def _get(cfg: dict, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def test_the_docs_hold_set_examples():
    examples = documented_set_examples()
    files = {f for f, _, _ in examples}
    assert len(examples) >= 6, examples
    assert "README.md" in files and "run_all.sh" in files and "src/wbdc/config.py" in files


@pytest.mark.parametrize("where,key,value", documented_set_examples())
def test_every_documented_set_example_resolves_and_takes_effect(where, key, value):
    cfg = resolve_argv(["--set", f"{key}={value}"])
    assert _get(cfg, key) == yaml.safe_load(value), f"{where}: --set {key}={value} had no effect"


@pytest.mark.parametrize("assignment,message", [
    ("nn.epochs=3", "--set: unknown key nn.epochs; did you mean nn.train.epochs?"),
    ("lgb.num_leaves=63", "--set: unknown key lgb.num_leaves; did you mean lgb.params.num_leaves?"),
    ("nn.train.epoch=3", "--set: unknown key nn.train.epoch; did you mean nn.train.epochs?"),
    ("nnn.train.epochs=3", "--set: unknown key nnn.train.epochs; did you mean nn.train.epochs?"),
    ("nn.mmoe.n_expert=2", "--set: unknown key nn.mmoe.n_expert; did you mean nn.mmoe.n_experts?"),
    ("nn.train.epochs=abc", "--set: nn.train.epochs: expected "),
    ("nn.mmoe.n_experts=2.5", "--set: nn.mmoe.n_experts: expected an integer, got 2.5"),
    ("data.preset=huge", "--set: data.preset: expected 'tiny' | 'small' | 'full'"),
    ("data.memory_gb=big", "--set: data.memory_gb: expected a number or 'auto', got 'big'"),
    ("nn.train.epochs", "--set expects SECTION.KEY=VALUE, got 'nn.train.epochs'"),
])
def test_bad_set_is_a_one_line_error_naming_the_key(assignment, message):
    with pytest.raises(ConfigError) as e:
        resolve_argv(["--set", assignment])
    text = str(e.value)
    assert "\n" not in text
    assert text.startswith(message), text


def test_lightgbm_params_accept_any_lightgbm_parameter_and_nothing_else():
    cfg = resolve_argv(["--set", "lgb.params.min_data_in_leaf=7", "--set", "lgb.params.lambda_l2=0.5"])
    assert cfg["lgb"]["params"]["min_data_in_leaf"] == 7 and cfg["lgb"]["params"]["lambda_l2"] == 0.5
    # undeclared names LightGBM knows (a parameter and an alias) pass through LightGBM's own table
    cfg = resolve_argv(["--set", "lgb.params.min_sum_hessian_in_leaf=0.01", "--set", "lgb.params.subsample_freq=2"])
    assert cfg["lgb"]["params"]["min_sum_hessian_in_leaf"] == 0.01 and cfg["lgb"]["params"]["subsample_freq"] == 2
    with pytest.raises(ConfigError, match=r"unknown key lgb\.params\.num_leafs; did you mean "
                                          r"lgb\.params\.num_leaves\?"):
        resolve_argv(["--set", "lgb.params.num_leafs=7"])


def test_resolving_the_defaults_imports_neither_lightgbm_nor_pandas():
    """run_all.sh resolves the config in a stamp check before and after every stage: the defaults
    (every lgb.params key declared) must not pay for lightgbm's or pandas' imports."""
    code = ("import sys; sys.path.insert(0, 'src'); from wbdc.config import resolve_argv; resolve_argv([]); "
            "import wbdc.pipeline, wbdc.cli; print(sorted(m for m in ('lightgbm', 'pandas', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out


def test_a_partial_section_keeps_its_other_keys():
    base = default_config()
    cfg = resolve_argv(["--set", "nn.train={epochs: 2}"])
    assert cfg["nn"]["train"]["epochs"] == 2
    assert {k: v for k, v in cfg["nn"]["train"].items() if k != "epochs"} == \
        {k: v for k, v in base["nn"]["train"].items() if k != "epochs"}


def test_config_file_deep_merges_and_refuses_typos(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("nn:\n  train:\n    epochs: 2\nlgb:\n  params:\n    num_leaves: 31\n")
    cfg = resolve_argv(["--config", str(good)])
    base = default_config()
    assert cfg["nn"]["train"]["epochs"] == 2 and cfg["lgb"]["params"]["num_leaves"] == 31
    assert cfg["nn"]["train"]["lr"] == base["nn"]["train"]["lr"]          # the rest kept
    # --set wins over --config
    assert resolve_argv(["--config", str(good), "--set", "nn.train.epochs=5"])["nn"]["train"]["epochs"] == 5
    bad = tmp_path / "bad.yaml"
    bad.write_text("nn:\n  train:\n    epoch: 2\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(bad))}: unknown key nn.train.epoch; "
                                          r"did you mean nn.train.epochs\?$"):
        resolve_argv(["--config", str(bad)])
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("nn:\n  train:\n    epochs: many\n")
    with pytest.raises(ConfigError, match=r"wrong.yaml: nn.train.epochs: expected"):
        resolve_argv(["--config", str(wrong)])
    broken = tmp_path / "broken.yaml"
    broken.write_text("nn: [\n")
    with pytest.raises(ConfigError, match=r"broken.yaml.*not valid YAML"):
        resolve_argv(["--config", str(broken)])


def test_yaml_defaults_and_the_declaration_agree_key_for_key(tmp_path):
    """Every declared leaf has a default in configs/*.yaml and every YAML key is declared."""
    cfg = load_defaults()

    declared = set(declared_keys())
    sections = {k for k in declared if any(other.startswith(k + ".") for other in declared)}
    declared_leaves = declared - sections

    def leaves(node, prefix=""):
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and (key in sections or key == "lgb.params"):
                yield from leaves(v, key + ".")
            else:
                yield key
    yaml_keys = set(leaves(cfg))
    # lgb.params is open to any LightGBM parameter; everything else must be declared
    assert {k for k in yaml_keys if not k.startswith("lgb.params.")} <= declared
    assert declared_leaves - yaml_keys == set()
    # a YAML file with a typo, or a missing key, is refused naming the file
    for f in (REPO / "configs").glob("*.yaml"):
        (tmp_path / f.name).write_text(f.read_text())
    nn_yaml = tmp_path / "nn.yaml"
    nn_yaml.write_text(nn_yaml.read_text().replace("  epochs:", "  epoch:", 1))
    with pytest.raises(ConfigError, match=r"unknown key nn.train.epoch; did you mean nn.train.epochs"):
        load_defaults(tmp_path)
    nn_yaml.write_text(nn_yaml.read_text().replace("  epoch:", "  # epoch:", 1))
    with pytest.raises(ConfigError, match=r"nn.train.epochs"):
        load_defaults(tmp_path)


def test_check_tree_refuses_unknown_sections():
    with pytest.raises(ConfigError, match="unknown key nnn; did you mean nn"):
        check_tree({"nnn": {}})
    assert closest_key("blend.search.max_eval") == "blend.search.max_evals"


def test_train_config_refuses_unknown_keys_and_has_no_defaults_of_its_own():
    from wbdc.nn.trainer import TrainConfig
    train = {**default_config()["nn"]["train"], "seed": 0}
    TrainConfig.from_dict(train)
    with pytest.raises(ValueError, match="nn.train: unknown key 'bogus'"):
        TrainConfig.from_dict({**train, "bogus": 1})
    missing = dict(train)
    missing.pop("lr")
    with pytest.raises((TypeError, KeyError, ValueError)):
        TrainConfig.from_dict(missing)


def test_data_dirs_normalise_lists_and_comma_lists(tmp_path):
    assert data_dirs(None) is None and data_dirs([]) is None and data_dirs("") is None
    a, b = tmp_path / "a", tmp_path / "b"
    assert data_dirs(f"{a},{b}") == [str(a), str(b)]
    assert data_dirs([str(a), str(b)]) == [str(a), str(b)]
    assert data_dirs("a", base=tmp_path) == [str(a)]
    cfg = resolve_argv(["--data-dir", str(a), "--data-dir", str(b)])
    assert cfg["data"]["data_dir"] == [str(a), str(b)]


def test_stage_cli_refuses_an_unknown_key_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "src" / "stages" / "train_nn.py"), "--arch", "mmoe",
                        "--root", str(tmp_path), "--set", "nn.epochs=3"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == \
        ["error: --set: unknown key nn.epochs; did you mean nn.train.epochs?"]


def test_apply_set_creates_nothing_on_error():
    cfg = default_config()
    before = repr(cfg)
    with pytest.raises(ConfigError):
        apply_set(cfg, "nn.nothing.here=1")
    assert repr(cfg) == before
