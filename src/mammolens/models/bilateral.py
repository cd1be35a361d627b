"""The siamese bilateral model: one shared film model reads a film and the same woman's other film.

Input is ``(B, 2, H, W)``: channel 0 the film, channel 1 its partner aligned to it (``data/pairs.py``;
after ``orient`` both chest walls are already on the left). ``forward_features`` runs the shared
film model on each channel and returns ``[f(film), f(partner), paired]``, where ``paired`` is 1
unless the two channels are identical, which is how a film without a partner reaches the model (the
pairing's fallback gives the film itself as partner). ``forward_head`` fuses them:

- ``diff``: ``[f(film), |f(film) - f(partner)|, paired]`` (asymmetry, plus the film's own evidence)
- ``signed``: ``[f(film), f(film) - f(partner), paired]``: ``|.|`` is the same for both films of a
  woman, so it says that one breast differs but not which; the signed difference says which
- ``concat``: ``[f(film), f(partner), paired]``
- ``diff-concat``: ``[f(film), f(partner), |f(film) - f(partner)|, paired]``

Keeping the fusion in the head means a frozen film model's features are computed once per film
and the pair is assembled from them (``train/paired.py``): the feature fast path stays fast, and
the film features are shared with a single-film run of the same film model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from mammolens.models.base import MammoModel
from mammolens.models.heads import make_head
from mammolens.models.options import require_choice
from mammolens.models.registry import MODELS, Pretrained, create_model
from mammolens.utils.errors import ConfigError

FUSIONS = ("diff", "signed", "concat", "diff-concat")


class BilateralModel(MammoModel):
    def __init__(self, film_model: MammoModel, num_classes: int, *, fusion: str = "diff", hidden: int = 256,
                 dropout: float = 0.3) -> None:
        super().__init__({})
        require_choice(fusion, "fusion", FUSIONS)
        self.fusion = fusion
        # The film model's own head is never used: replaced by nothing, so it holds no weights.
        heads = [id(m) for m in film_model.head_modules()]
        for name, child in list(film_model.named_children()):
            if id(child) in heads:
                setattr(film_model, name, nn.Identity())
        self.film_model = film_model
        width = _feature_width(film_model)
        self.num_film_features = width
        fused = {"diff": 2 * width, "signed": 2 * width, "concat": 2 * width, "diff-concat": 3 * width}[fusion] + 1
        self.head = make_head(fused, num_classes, hidden=hidden, dropout=dropout)

    @property
    def pretrained_from(self) -> dict[str, str]:
        return dict(getattr(self.film_model, "pretrained_from", {}) or {})

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 2:
            raise ConfigError(f"the bilateral model takes (B, 2, H, W) film/partner pairs, got {tuple(x.shape)}")
        film, partner = x[:, :1], x[:, 1:]
        paired = (film != partner).flatten(1).any(1, keepdim=True).to(x.dtype)
        return torch.cat([self.film_model.forward_features(film), self.film_model.forward_features(partner), paired], 1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.fuse(features))

    def fuse(self, features: torch.Tensor) -> torch.Tensor:
        """``[f(film), f(partner), paired]`` -> the head's input for this model's fusion."""
        w = self.num_film_features
        a, b, paired = features[:, :w], features[:, w:2 * w], features[:, 2 * w:]
        parts = {"diff": [a, (a - b).abs()], "signed": [a, a - b], "concat": [a, b],
                 "diff-concat": [a, b, (a - b).abs()]}[self.fusion]
        return torch.cat([*parts, paired], 1)

    def backbone_blocks(self) -> list[nn.Module]:
        return self.film_model.backbone_blocks()

    def head_modules(self) -> list[nn.Module]:
        return [self.head]

    def cam_target_layers(self) -> dict[str, nn.Module]:
        # The shared layers run twice per input (film and partner), so a hook would see both.
        raise ConfigError("explanations of the bilateral model are not implemented: its shared layers see two films")

    def load_pretrained(self, pretrained: Pretrained, *, trust_pickle: bool = False) -> None:
        self.film_model.load_pretrained(pretrained, trust_pickle=trust_pickle)


def _feature_width(model: MammoModel) -> int:
    width = getattr(model, "num_features", None)
    if isinstance(width, int):
        return width
    with torch.no_grad():  # a model that does not say: measure it on a small grey image
        return int(model.eval().forward_features(torch.zeros(1, 1, 64, 64)).shape[1])


def bilateral(num_classes: int, in_chans: int = 2, film_model: str = "hybrid-lite",
              film_options: Mapping[str, Any] | None = None, fusion: str = "diff", hidden: int = 256,
              dropout: float = 0.3) -> BilateralModel:
    """A shared ``film_model`` (any registered single-image model, built with ``film_options``) over
    a film and its partner, fused by ``fusion``; needs ``data.pairs.enabled`` (two input channels)."""
    if in_chans != 2:
        raise ConfigError(f"model 'bilateral' reads a film with its partner: set data.pairs.enabled: true "
                          f"(two input channels), got {in_chans} channel(s)")
    if film_model == "bilateral":
        raise ConfigError("model option 'film_model' of 'bilateral' must be a single-film model, not 'bilateral'")
    inner = create_model(film_model, num_classes, in_chans=1, **dict(film_options or {}))
    return BilateralModel(inner, num_classes, fusion=fusion, hidden=hidden, dropout=dropout)


MODELS.add("bilateral", bilateral)
