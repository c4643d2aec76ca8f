"""PyTorch ST-GCN-family clip models written for the tests from the spec (docs/stgcn.md),
independently of `conversion/`: their state dicts have the two public checkpoint
layouts, so `conversion.load_stgcn` is tested against them.

Input `(N, C, T, V, M)` as the reference code takes it; output `(N, num_classes)`.
"""

from __future__ import annotations

import torch
from torch import nn

from cojax.graphs import adjacency


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine terms, random edge weights: nothing degenerate."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.2)
        for name, p in module.named_parameters():
            if name.endswith(("graph_attn", "edge_importance.0")) or ".edge_importance." in name:
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=gen))
            elif "edge_importance" in name:
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=gen))
    return module.eval()


# --------------------------------------------------------------------------- continual-skeletons


class GraphConvolution(nn.Module):
    """relu(bn(Σ_k g_conv_k(x @ (A_k ∘ graph_attn_k))) + gcn_residual(x)); with
    `adaptive`, AGCN: A_k + graph_attn_k + softmax_v(θᵀφ / (inter·T)) (per frame when
    `per_frame`, the continual form: T = 1)."""

    def __init__(self, c_in, c_out, a, adaptive=False, per_frame=False):
        super().__init__()
        self.A = nn.Parameter(torch.tensor(a), requires_grad=False)
        self.graph_attn = nn.Parameter(torch.ones_like(self.A))
        k = a.shape[0]
        self.g_conv = nn.ModuleList(nn.Conv2d(c_in, c_out, 1) for _ in range(k))
        self.adaptive, self.per_frame, self.inter = adaptive, per_frame, c_out // 4
        if adaptive:
            self.a_conv = nn.ModuleList(nn.Conv2d(c_in, self.inter, 1) for _ in range(k))
            self.b_conv = nn.ModuleList(nn.Conv2d(c_in, self.inter, 1) for _ in range(k))
        if c_in != c_out:
            self.gcn_residual = nn.Sequential(nn.Conv2d(c_in, c_out, 1), nn.BatchNorm2d(c_out))
        else:
            self.gcn_residual = nn.Identity()
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x):  # (N, C, T, V)
        n, c, t, v = x.shape
        total = 0
        for k in range(len(self.g_conv)):
            if not self.adaptive:
                a = self.A[k] * self.graph_attn[k]
                mixed = torch.einsum("nctv,vw->nctw", x, a)
            else:
                theta, phi = self.a_conv[k](x), self.b_conv[k](x)  # (N, inter, T, V)
                if self.per_frame:
                    logits = torch.einsum("nitv,nitw->ntvw", theta, phi) / self.inter
                    att = torch.softmax(logits, dim=-2)
                else:
                    logits = torch.einsum("nitv,nitw->nvw", theta, phi) / (self.inter * t)
                    att = torch.softmax(logits, dim=-2)[:, None]
                a = self.A[k] + self.graph_attn[k] + att
                mixed = torch.einsum("nctv,ntvw->nctw", x, a)
            total = total + self.g_conv[k](mixed)
        return torch.relu(self.bn(total) + self.gcn_residual(x))


class SpatialAttentionUnit(nn.Module):
    """S-TR's unit: relu(bn(attn_out(MHA over joints of data_bn(x)) [+ x]))."""

    def __init__(self, c_in, c_out, a, heads=8):
        super().__init__()
        v = a.shape[-1]
        self.A = nn.Parameter(torch.tensor(a))
        self.data_bn = nn.BatchNorm1d(c_in * v)
        self.dk, self.dv, self.heads, self.skip = int(c_out * 0.25), c_out, heads, c_in == c_out
        self.attention_conv = nn.Module()
        self.attention_conv.qkv_conv = nn.Conv2d(c_in, 2 * self.dk + self.dv, 1)
        self.attention_conv.attn_out = nn.Conv2d(self.dv, self.dv, 1)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x):  # (N, C, T, V)
        n, c, t, v = x.shape
        z = self.data_bn(x.permute(0, 1, 3, 2).reshape(n, c * v, t))
        z = z.reshape(n, c, v, t).permute(0, 1, 3, 2)
        qkv = self.attention_conv.qkv_conv(z)  # (N, 2dk+dv, T, V)
        q, k, val = torch.split(qkv, [self.dk, self.dk, self.dv], dim=1)
        h = self.heads
        split = lambda y: y.reshape(n, h, y.shape[1] // h, t, v)  # noqa: E731
        q, k, val = split(q) * (self.dk // h) ** -0.5, split(k), split(val)
        weights = torch.softmax(torch.einsum("nhdtv,nhdtw->nhtvw", q, k), dim=-1)
        out = torch.einsum("nhtvw,nhdtw->nhdtv", weights, val).reshape(n, self.dv, t, v)
        y = self.attention_conv.attn_out(out)
        if self.skip:
            y = y + x
        return torch.relu(self.bn(y))


class TemporalConvolution(nn.Module):
    def __init__(self, c_in, c_out, kernel=9, stride=1, padding=4):
        super().__init__()
        self.t_conv = nn.Conv2d(c_in, c_out, (kernel, 1), (stride, 1), (padding, 0))
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x):
        return self.bn(self.t_conv(x))


class Block(nn.Module):
    def __init__(self, c_in, c_out, gcn, stride, residual, mod):
        super().__init__()
        self.gcn = gcn
        self.tcn = TemporalConvolution(c_out, c_out, stride=stride, padding=0 if mod else 4)
        self.shrink = 4 if mod else 0
        self.kind = (
            "none" if not residual else "identity" if c_in == c_out and stride == 1 else "conv"
        )
        if self.kind == "conv":
            self.residual = TemporalConvolution(c_in, c_out, 1, stride, 0)

    def forward(self, x):
        z = self.tcn(self.gcn(x))
        if self.kind == "none":
            return torch.relu(z)
        r = x[:, :, self.shrink : x.shape[2] - self.shrink] if self.shrink else x
        r = r if self.kind == "identity" else self.residual(r)
        return torch.relu(z + r)


class ContinualSkeletonsNet(nn.Module):
    """continual-skeletons' StGcn / AGcn / STr (and * variants) as clip models."""

    def __init__(self, variant, graph, num_classes, widths, strides, mod=False, persons=2,
                 channels=3, first_attention=3, heads=8, per_frame=False):  # fmt: skip
        super().__init__()
        a = adjacency(graph)
        v = a.shape[-1]
        self.data_bn = nn.BatchNorm1d(persons * v * channels)
        self.layers = nn.ModuleDict()
        c_in = channels
        for i, (width, stride) in enumerate(zip(widths, strides)):
            if variant == "s_tr" and i >= first_attention:
                gcn = SpatialAttentionUnit(c_in, width, a, heads)
            else:
                gcn = GraphConvolution(c_in, width, a, variant == "a_gcn", per_frame)
            self.layers[f"layer{i + 1}"] = Block(c_in, width, gcn, stride, i > 0, mod)
            c_in = width
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x):
        n, c, t, v, m = x.shape
        x = self.data_bn(x.permute(0, 4, 3, 1, 2).reshape(n, m * v * c, t))
        x = x.reshape(n, m, v, c, t).permute(0, 1, 3, 4, 2).reshape(n * m, c, t, v)
        for layer in self.layers.values():
            x = layer(x)
        x = x.reshape(n, m, x.shape[1], -1).mean(3).mean(1)
        return self.fc(x)


# --------------------------------------------------------------------------- original ST-GCN


class OriginalBlock(nn.Module):
    def __init__(self, c_in, c_out, k, stride, residual, dropout=0.0):
        super().__init__()
        self.k = k
        self.gcn = nn.Module()
        self.gcn.conv = nn.Conv2d(c_in, c_out * k, 1)
        self.tcn = nn.Sequential(
            nn.BatchNorm2d(c_out), nn.ReLU(), nn.Conv2d(c_out, c_out, (9, 1), (stride, 1), (4, 0)),
            nn.BatchNorm2d(c_out), nn.Dropout(dropout),
        )  # fmt: skip
        self.kind = (
            "none" if not residual else "identity" if c_in == c_out and stride == 1 else "conv"
        )
        if self.kind == "conv":
            self.residual = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, (stride, 1)), nn.BatchNorm2d(c_out)
            )

    def forward(self, x, a):
        res = 0 if self.kind == "none" else x if self.kind == "identity" else self.residual(x)
        y = self.gcn.conv(x)
        n, kc, t, v = y.shape
        y = torch.einsum("nkctv,kvw->nctw", y.view(n, self.k, kc // self.k, t, v), a)
        return torch.relu(self.tcn(y) + res)


class OriginalSTGCN(nn.Module):
    """yysijie/st-gcn's `Model` / mmskeleton's `ST_GCN_18` with edge importance."""

    def __init__(self, graph, num_classes, widths, strides, channels=3):
        super().__init__()
        self.register_buffer("A", torch.tensor(adjacency(graph, "spatial")))
        k, v = self.A.shape[0], self.A.shape[1]
        self.data_bn = nn.BatchNorm1d(channels * v)
        blocks, c_in = [], channels
        for i, (width, stride) in enumerate(zip(widths, strides)):
            blocks.append(OriginalBlock(c_in, width, k, stride, i > 0))
            c_in = width
        self.st_gcn_networks = nn.ModuleList(blocks)
        self.edge_importance = nn.ParameterList(
            nn.Parameter(torch.ones(self.A.shape)) for _ in blocks
        )
        self.fcn = nn.Conv2d(c_in, num_classes, 1)

    def forward(self, x):
        n, c, t, v, m = x.shape
        x = self.data_bn(x.permute(0, 4, 3, 1, 2).reshape(n * m, v * c, t))
        x = x.reshape(n, m, v, c, t).permute(0, 1, 3, 4, 2).reshape(n * m, c, t, v)
        for block, importance in zip(self.st_gcn_networks, self.edge_importance):
            x = block(x, self.A * importance)
        x = nn.functional.avg_pool2d(x, x.shape[2:]).reshape(n, m, -1, 1, 1).mean(dim=1)
        return self.fcn(x).reshape(n, -1)
