"""The node's one configuration file (YAML), checked at start: every mistake is one line.

```yaml
pacs:
  url: http://pacs.example.org:8042      # Orthanc's REST root (its /changes feed)
  dicomweb: /dicom-web                   # DICOMweb root below url (QIDO/WADO/STOW)
  username: mammolens
  password_env: MAMMOLENS_PACS_PASSWORD  # the password from the environment, never in the file
bundles:
  - {name: abnormality, path: /models/abnormality, heatmap: true}
  - {name: density, path: /models/density}
aggregation: {method: max}               # max | mean | fitted (params: fit_aggregator's JSON); default: each bundle's own
state: /var/lib/mammolens/node.sqlite
```
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from mammolens.utils.configuration import from_dict, load_yaml
from mammolens.utils.errors import ConfigError


@dataclass
class PacsConfig:
    url: str = ""
    dicomweb: str = "/dicom-web"
    username: str = ""
    password: str = ""  # prefer password_env: a file with a password in it gets copied around
    password_env: str = ""
    timeout_s: float = 30.0


@dataclass
class BundleConfig:
    name: str = ""
    path: Path = Path()
    heatmap: bool = False  # write a parametric map and an overlay per view from this bundle


@dataclass
class AggregationConfig:
    method: str | None = None  # the exam room's AGGREGATORS; None: each bundle's own (max without one)
    params: dict[str, Any] | None = None  # method "fitted": fit_aggregator's JSON


@dataclass
class NodeConfig:
    pacs: PacsConfig = field(default_factory=PacsConfig)
    bundles: list[BundleConfig] = field(default_factory=list)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    state: Path = Path("mammolens-node.sqlite")
    spool: Path | None = None  # where fetched instances wait for decoding (default: beside the state)
    poll_s: float = 1.0  # how often /changes is read when there is nothing new
    backoff_s: float = 1.0  # first wait after the PACS failed to answer; doubles up to backoff_max_s
    backoff_max_s: float = 60.0
    max_attempts: int = 3  # a study failing this often (node or PACS errors) is marked failed for good
    start: Literal["now", "beginning"] = "now"  # first start: only studies stable from now on, or the PACS's whole feed
    secondary_capture: bool = True  # the overlay for viewers without parametric map support

    @property
    def auth(self) -> tuple[str, str] | None:
        if not self.pacs.username:
            return None
        password = os.environ.get(self.pacs.password_env, "") if self.pacs.password_env else self.pacs.password
        return self.pacs.username, password

    @property
    def dicomweb_url(self) -> str:
        return self.pacs.url.rstrip("/") + "/" + self.pacs.dicomweb.strip("/")


def _mistakes(config: NodeConfig) -> list[str]:
    """Every problem of a parsed config, one line each."""
    from mammolens.evaluate.exams import AGGREGATORS

    out = []
    url = urlparse(config.pacs.url)
    if url.scheme not in ("http", "https") or not url.netloc:
        out.append(f"pacs.url: {config.pacs.url!r} is not an http(s) URL such as http://pacs:8042")
    if config.pacs.password and config.pacs.password_env:
        out.append("pacs: give password or password_env, not both")
    if config.pacs.password_env and config.pacs.password_env not in os.environ:
        out.append(f"pacs.password_env: the environment variable {config.pacs.password_env} is not set")
    if (config.pacs.password or config.pacs.password_env) and not config.pacs.username:
        out.append("pacs.username: a password is given but no username")
    if not config.bundles:
        out.append("bundles: name at least one bundle ({name: ..., path: ...})")
    names = [b.name for b in config.bundles]
    for i, bundle in enumerate(config.bundles):
        if not bundle.name:
            out.append(f"bundles[{i}].name: missing")
        elif bundle.name in names[:i]:
            out.append(f"bundles[{i}].name: {bundle.name!r} is used twice")
        if not bundle.path.is_dir():
            out.append(f"bundles[{i}].path: {bundle.path} is not a bundle folder")
    if config.aggregation.method is not None and config.aggregation.method not in AGGREGATORS:
        out.append(f"aggregation.method: unknown {config.aggregation.method!r}; known: {', '.join(AGGREGATORS)}")
    elif config.aggregation.method == "fitted" and not config.aggregation.params:
        out.append("aggregation.params: method 'fitted' needs the parameters fit_aggregator wrote")
    for key in ("poll_s", "backoff_s", "backoff_max_s"):
        if not getattr(config, key) > 0:
            out.append(f"{key}: must be > 0, got {getattr(config, key)}")
    if config.max_attempts < 1:
        out.append(f"max_attempts: must be >= 1, got {config.max_attempts}")
    if not config.state.parent.is_dir():
        out.append(f"state: folder {config.state.parent} does not exist")
    return out


def load_config(path: str | Path) -> NodeConfig:
    """The checked config; all mistakes at once in one ConfigError (``.lines``: one per mistake)."""
    config = from_dict(NodeConfig, load_yaml(path))
    base = Path(path).resolve().parent
    config.state = config.state if config.state.is_absolute() else base / config.state
    for bundle in config.bundles:
        bundle.path = bundle.path if bundle.path.is_absolute() else base / bundle.path
    if config.spool is None:
        config.spool = config.state.with_suffix(".spool")
    mistakes = _mistakes(config)
    if mistakes:
        error = ConfigError("; ".join(mistakes), path=path)
        error.lines = [f"{path}: {m}" for m in mistakes]
        raise error
    return config
