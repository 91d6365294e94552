"""A small Vision Transformer for benchmarks without torchvision (pre-norm encoder, GELU, class token)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SmallViT(nn.Module):
    """ViT (Dosovitskiy et al., 2021) layout: patch embedding, class token, learned positions, pre-norm
    encoder layers, a linear head on the class token (``self.head``).

    Examples:
        >>> vit = SmallViT(image=16, patch=8, layers=1, width=16, heads=2, classes=5)
        >>> vit(torch.randn(1, 3, 16, 16)).shape
        torch.Size([1, 5])
    """

    def __init__(
        self, image: int = 64, patch: int = 8, layers: int = 4, width: int = 128, heads: int = 4, classes=1000
    ) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, width, patch, patch)
        tokens = (image // patch) ** 2 + 1
        self.cls = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, tokens, width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            width, heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)
        nn.init.normal_(self.head.weight, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        z = self.embed(x).flatten(2).transpose(1, 2)
        z = torch.cat([self.cls.expand(z.shape[0], -1, -1), z], 1) + self.pos
        return self.head(self.norm(self.encoder(z))[:, 0])
