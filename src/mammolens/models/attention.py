"""CNN encoder + LSTM decoder with additive attention over the feature grid (seed 003).

For ``steps`` steps the LSTM looks at the grid through Bahdanau attention (a softmax over grid
cells given its hidden state) and reads the attended context; the final hidden state is the
image's feature vector. The attention weights of the last forward pass are kept in
``model.last_attention`` (B, steps, h, w), a built-in "where it looked" map.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from mammolens.models.adapters import backbone_in_chans, make_input_adapter
from mammolens.models.backbones import BACKBONES, TimmBackbone
from mammolens.models.base import MammoModel
from mammolens.models.heads import make_head
from mammolens.models.options import require_int
from mammolens.models.registry import MODELS, Pretrained
from mammolens.models.scratch import ScratchEncoder
from mammolens.utils.errors import ConfigError

# timm backbones whose last spatial map is the whole trunk (VGG's conv-MLP would sit unused).
ENCODERS = tuple(b for b in BACKBONES if b != "vgg16")


class AttentionLSTM(nn.Module):
    """(B, C, h, w) grid -> (B, hidden) final LSTM state and (B, steps, h*w) attention weights."""

    def __init__(self, channels: int, hidden: int, attn_dim: int, steps: int) -> None:
        super().__init__()
        self.steps = require_int(steps, "steps", minimum=1)
        require_int(hidden, "lstm_hidden", minimum=1)
        require_int(attn_dim, "attn_dim", minimum=1)
        # Initial state from the mean feature, as in show-attend-tell, so step 1 already knows the image.
        self.init_h = nn.Linear(channels, hidden)
        self.init_c = nn.Linear(channels, hidden)
        self.key = nn.Linear(channels, attn_dim)
        self.query = nn.Linear(hidden, attn_dim, bias=False)
        self.score = nn.Linear(attn_dim, 1)
        self.cell = nn.LSTMCell(channels, hidden)

    def forward(self, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cells = grid.flatten(2).transpose(1, 2)  # (B, N, C)
        mean = cells.mean(dim=1)
        h, c = torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean))
        keys = self.key(cells)  # (B, N, A), fixed over steps
        weights = []
        for _ in range(self.steps):
            energy = self.score(torch.tanh(keys + self.query(h).unsqueeze(1))).squeeze(-1)  # (B, N)
            alpha = energy.softmax(dim=1)
            context = torch.bmm(alpha.unsqueeze(1), cells).squeeze(1)  # (B, C)
            h, c = self.cell(context, (h, c))
            weights.append(alpha)
        return h, torch.stack(weights, dim=1)


class AttentionModel(MammoModel):
    def __init__(
        self,
        num_classes: int,
        in_chans: int,
        encoder: str,
        encoder_depth: int,
        encoder_width: int,
        input_adapter: str,
        normalize: bool,
        steps: int,
        lstm_hidden: int,
        attn_dim: int,
        hidden: int,
        dropout: float,
    ) -> None:
        super().__init__({})
        if encoder == "scratch":
            self.adapter: nn.Module = nn.Identity()
            self.encoder: nn.Module = ScratchEncoder(in_chans, encoder_depth, encoder_width)
            channels = self.encoder.out_channels
        elif encoder in ENCODERS:
            self.adapter = make_input_adapter(input_adapter, in_chans)
            self.encoder = TimmBackbone(encoder, backbone_in_chans(input_adapter, in_chans), normalize)
            channels = self.encoder.model.num_features  # channels of the spatial map, before any pre-logits
        else:
            raise ConfigError(
                f"model option 'encoder' must be 'scratch' or one of {', '.join(ENCODERS)}; got {encoder!r}"
            )
        self.decoder = AttentionLSTM(channels, lstm_hidden, attn_dim, steps)
        self.num_features = lstm_hidden
        self.head = make_head(lstm_hidden, num_classes, hidden=hidden, dropout=dropout)
        self.last_attention: torch.Tensor | None = None
        self.pretrained_from: dict[str, str] = {}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.adapter(x)
        grid = self.encoder.forward_map(x) if isinstance(self.encoder, TimmBackbone) else self.encoder(x)
        state, weights = self.decoder(grid)
        self.last_attention = weights.detach().view(grid.shape[0], -1, *grid.shape[2:])
        return state

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def backbone_blocks(self) -> list[nn.Module]:
        """Adapter (if learnable), encoder stages, then the attention decoder: everything before the
        final hidden state, which is this model's pooled feature vector."""
        stages = self.encoder.stages() if isinstance(self.encoder, TimmBackbone) else list(self.encoder)
        learnable_adapter = [self.adapter] if list(self.adapter.parameters()) else []
        return learnable_adapter + stages + [self.decoder]

    def head_modules(self) -> list[nn.Module]:
        return [self.head]

    def cam_target_layers(self) -> dict[str, nn.Module]:
        if isinstance(self.encoder, TimmBackbone):
            return {self.encoder.arch: self.encoder.cam_layer()}
        return {"encoder": self.encoder[-1]}

    def load_pretrained(self, pretrained: Pretrained, *, trust_pickle: bool = False) -> None:
        if not isinstance(self.encoder, TimmBackbone):
            raise ConfigError(
                "the attention model's 'scratch' encoder takes no pretrained weights; use pretrained=None "
                f"or encoder= one of {', '.join(ENCODERS)}"
            )
        if isinstance(pretrained, Mapping):
            raise ConfigError("pretrained for the attention model is 'imagenet' or one weights file, not a mapping")
        self.pretrained_from[self.encoder.arch] = self.encoder.load_pretrained(pretrained, trust_pickle=trust_pickle)


@MODELS.register("attention")
def attention(
    num_classes: int,
    in_chans: int = 1,
    encoder: str = "scratch",
    encoder_depth: int = 4,
    encoder_width: int = 32,
    input_adapter: str = "conv",
    normalize: bool = False,
    steps: int = 4,
    lstm_hidden: int = 256,
    attn_dim: int = 128,
    hidden: int = 0,
    dropout: float = 0.3,
) -> AttentionModel:
    return AttentionModel(
        num_classes, in_chans, encoder, encoder_depth, encoder_width, input_adapter, normalize,
        steps, lstm_hidden, attn_dim, hidden, dropout,
    )  # fmt: skip
