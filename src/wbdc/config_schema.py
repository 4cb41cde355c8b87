"""The declared configuration: one typed dataclass per config section.

The default VALUES live in ``configs/<section>.yaml`` (commented, user-facing); the declarations
here say which keys exist and what type each takes.  ``wbdc.config`` checks the defaults, every
``--config`` file and every ``--set`` against them, so a typo or a wrong type is a one-line
error naming the key (and the closest valid key), never a silent no-op.  A key in a YAML file
that is not declared here, or a declared key missing from the defaults, is an error too (tested),
so the two cannot drift apart.

Types understood by the checker: bool, int, float (an int is accepted and stored as float), str,
``Literal[...]``, ``X | None``, unions, ``list[X]``, ``dict[str, X]``, ``dict[Literal[..], X]`` and
nested dataclasses.  Mapping sections that are open by nature (LightGBM's parameters) declare
their known keys and name a hook that accepts more (``__open_keys__``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

from .nn.archs import ARCHS
from .schema import ACTIONS

Action = Literal["read_comment", "like", "click_avatar", "forward", "favorite", "comment", "follow"]
assert tuple(Action.__args__) == tuple(ACTIONS)  # noqa: S101 - the Literal mirrors schema.ACTIONS
Preset = Literal["tiny", "small", "full", "final"]


# ------------------------------------------------------------------------------ data

@dataclass
class DataConfig:
    data_dir: Union[list[str], str, None]     # folders with the official CSVs (resolved to a list)
    test_file: str
    preset: Preset
    seed: int
    null_world: bool
    truth_dir: Union[str, None]              # day14_prob.csv + test_truth.csv for data_dir folders
    memory_gb: Union[float, Literal["auto"]]


# ------------------------------------------------------------------------------ features

@dataclass
class StatsBlock:
    key: str
    windows: list[Union[int, Literal["all"]]]
    stats: list[Literal["count", "sum", "rate", "play_mean", "stay_mean", "finish_mean", "active_days"]]
    actions: Union[Literal["all", "main"], list[Action]]


@dataclass
class DistinctSpec:
    name: str
    key: str
    of: str
    windows: list[Union[int, Literal["all"]]]


@dataclass
class WindowStatsConfig:
    prior_strength: float
    cold_flags: bool
    keys: dict[str, list[str]]
    blocks: list[StatsBlock]
    same_day: list[str]
    distinct: list[DistinctSpec]


@dataclass
class W2VModelConfig:
    dim: int
    window: int
    epochs: int
    min_count: int
    sg: Literal[0, 1]
    negative: int
    sample: float


@dataclass
class W2VConfig:
    deterministic: Union[bool, Literal["auto"]]
    auto_max_rows: int
    workers: int
    corpus_file: Union[bool, Literal["auto"]]
    max_sentence_len: int
    feed: W2VModelConfig
    author: W2VModelConfig
    epoch_rows: Union[int, None]     # above this many corpus rows, fewer epochs (families.w2v_epochs)
    user_vectors: bool
    feed_columns: int
    action_sims: Union[Literal["all", "main"], list[Action]]
    today_sims: bool


@dataclass
class PCAConfig:
    dim: int
    feed_columns: int
    action_sims: Union[Literal["all", "main"], list[Action]]
    today_sims: bool
    seen_sims: list[Union[int, Literal["all"]]]


@dataclass
class FeaturesConfig:
    seed: Union[int, None]
    days: Union[list[int], None]
    buckets: Union[int, Literal["auto"]]
    first_history_day: int
    window_stats: WindowStatsConfig
    w2v: W2VConfig
    pca: PCAConfig
    today_keep: Union[Literal["auto"], float]
    feed_lists: list[str]


# ------------------------------------------------------------------------------ lgb

@dataclass
class NegRate:
    read_comment: float
    like: float
    click_avatar: float
    forward: float
    favorite: float
    comment: float
    follow: float


def lightgbm_parameter_names() -> set[str]:
    """Every parameter name and alias LightGBM knows (its own table, read lazily)."""
    try:
        from lightgbm.basic import _ConfigAliases
    except ImportError:      # pragma: no cover - lightgbm is pinned in requirements.txt
        return set()
    names: set[str] = set()
    for canonical, aliases in _ConfigAliases._get_all_param_aliases().items():
        names.add(canonical)
        names.update(aliases)
    return names


@dataclass
class LgbParams:
    """The parameters given to ``lightgbm.train``: the declared ones, and any other name LightGBM
    itself knows (``lightgbm_parameter_names``)."""

    __open_keys__ = "lightgbm_parameter_names"

    objective: str
    learning_rate: float
    num_leaves: int
    max_depth: int
    min_data_in_leaf: int
    feature_fraction: float
    bagging_fraction: float
    bagging_freq: int
    lambda_l1: float
    lambda_l2: float
    max_bin: int
    cat_smooth: float
    max_cat_to_onehot: int
    seed: Union[int, None]
    deterministic: bool
    force_col_wise: bool
    verbosity: int
    num_threads: Union[int, None]


@dataclass
class PopularityConfig:
    template: Union[str, None]


@dataclass
class LgbConfig:
    first_day: Union[int, None]
    actions: Union[list[Action], None]
    drop: list[str]
    categorical: list[str]
    neg_rate: NegRate
    calibrate: bool
    round_scaling: Literal["rows", "days"]
    num_boost_round: int
    early_stopping_rounds: int
    dask_eval_every: int             # cluster runs: rounds between the day-14 grid points
    max_train_rows: Union[int, None]  # neg_rate lowered so an action's sample stays under it
    eval_rows: Union[int, None]      # day-14 uAUC every ceil(day-14 rows / eval_rows) rounds
    seeds: Union[list[int], None]    # one model per seed (LightGBM's and the sampling's), averaged
    bin_once: Union[Literal["auto"], bool]   # every action's rows binned once, each cut from them
    online_predict: Literal["refit", "offline", "both"]   # which trees predict the test day
    params: LgbParams


# ------------------------------------------------------------------------------ nn

@dataclass
class NNFeatures:
    categorical: list[str]
    extra_categorical: bool
    dense: Union[Literal["all"], list[str]]
    dense_exclude: list[str]
    multi_hot: list[str]
    max_list_len: int
    dense_dtype: Literal["float16", "float32"]
    pretrained: Union[Literal["all"], list[str]]
    history_len: int
    encoder_cache: bool



@dataclass
class EmbeddingConfig:
    dim: int
    bag_dim: Union[int, None]
    history_dim: int
    interactions: Literal["none", "dot", "content"]
    pretrained_trainable: bool
    sparse: bool


@dataclass
class LossConfig:
    balancing: Literal["equal", "competition", "fixed", "uncertainty"]
    weights: Union[dict[Action, float], None]
    init_log_var: float


@dataclass
class TrainSection:
    batch_size: int
    lr: float
    optimizer: Literal["adam", "adagrad"]
    weight_decay: float
    epochs: float
    max_rows: Union[int, None]
    patience: int
    eval_every_steps: Union[int, Literal["auto"]]
    first_day: Union[int, None]
    neg_rate: Union[Literal["auto"], float, None]
    predict_batch_size: int
    device: Literal["cpu", "cuda", "auto"]
    precision: Literal["auto", "fp32", "bf16"]
    progress: bool
    lr_decay: float
    lr_schedule: Literal["constant", "linear", "cosine"]
    lr_floor: float
    lr_schedule_epochs: float


@dataclass
class StreamSection:
    mode: Literal["auto", "memory", "stream"]
    buffer_rows: int
    prefetch: bool


@dataclass
class OnlineSection:
    epochs: Union[float, None]
    predict: Literal["refit", "offline", "both"]


@dataclass
class DistributedSection:
    lr_scale: Literal["none", "sqrt", "linear"]
    timeout_s: float


@dataclass
class AuxSection:
    tasks: list[Literal["finish_ratio", "log_stay"]]
    weight: float


@dataclass
class GatesConfig:
    all_levels: bool
    max_rows: Union[int, None]


@dataclass
class NNConfigBase:
    """The keys every net shares; each architecture adds its own section (``wbdc.nn.archs``)."""

    seed: Union[int, None]
    seeds: Union[list[int], None]
    funnels: list[str]
    aux: AuxSection
    threads: Union[int, Literal["auto"]]
    deterministic: bool
    features: NNFeatures
    embedding: EmbeddingConfig
    loss: LossConfig
    train: TrainSection
    stream: StreamSection
    distributed: DistributedSection
    online: OnlineSection
    gates: GatesConfig


def _nn_config() -> type:
    """NNConfigBase plus one section per registered architecture (``nn.<arch>``)."""
    from dataclasses import field, make_dataclass

    return make_dataclass("NNConfig", [(name, spec.config, field()) for name, spec in ARCHS.items()],
                          bases=(NNConfigBase,))


NNConfig = _nn_config()
NN_SHARED_KEYS = tuple(NNConfigBase.__dataclass_fields__)


# ------------------------------------------------------------------------------ blend, score

@dataclass
class BlendSearch:
    grid_units: int
    start_step_units: int
    max_evals: int


@dataclass
class SubmitConfig:
    source: str
    decimals: int


@dataclass
class BlendConfig:
    models: Union[list[str], None]
    methods: list[Literal["prob", "rank", "logit"]]
    scope: Literal["equal", "shared", "action"]
    equal_exclude: Union[list[str], None]
    search: BlendSearch
    submit: SubmitConfig


@dataclass
class ClusterConfig:
    address: Union[str, None]        # null | local:N | tcp://HOST:PORT (wbdc.cluster.parse_address)


@dataclass
class ScoreConfig:
    actions: list[Action]
    decimals: int


SECTIONS: dict[str, type] = {
    "blend": BlendConfig,
    "cluster": ClusterConfig,
    "data": DataConfig,
    "features": FeaturesConfig,
    "lgb": LgbConfig,
    "nn": NNConfig,
    "popularity": PopularityConfig,
    "score": ScoreConfig,
}
