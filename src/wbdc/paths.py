"""Where every artifact lives, relative to an artifact root (the repo by default)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    root: Path

    @classmethod
    def at(cls, root: str | Path) -> "Paths":
        return cls(Path(root).resolve())

    # data/
    @property
    def data(self) -> Path:
        return self.root / "data"

    def synthetic_world(self, preset: str, seed: int, null: bool = False) -> Path:
        """``<preset>_seed<seed>``; the null world (labels independent of everything) lives
        in ``<preset>_seed<seed>_null`` so it never overwrites the normal one."""
        return self.data / "synthetic" / f"{preset}_seed{seed}{'_null' if null else ''}"

    def synthetic_raw(self, preset: str, seed: int, null: bool = False) -> Path:
        return self.synthetic_world(preset, seed, null) / "wechat_algo_data1"

    def synthetic_truth(self, preset: str, seed: int, null: bool = False) -> Path:
        return self.synthetic_world(preset, seed, null) / "truth"

    def world_of(self, data: dict) -> Path:
        """The synthetic world the ``data`` config section selects (preset, seed, null_world)."""
        return self.synthetic_world(str(data["preset"]), int(data["seed"]),
                                    bool(data.get("null_world", False)))

    @property
    def prepared(self) -> Path:
        return self.data / "prepared"

    # features/
    @property
    def features(self) -> Path:
        return self.root / "features"

    # models/
    @property
    def models(self) -> Path:
        return self.root / "models"

    def model(self, name: str) -> Path:
        return self.models / name

    # ensemble/ and submissions/
    @property
    def ensemble(self) -> Path:
        return self.root / "ensemble"

    @property
    def submissions(self) -> Path:
        return self.root / "submissions"
