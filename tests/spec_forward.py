"""ST-TR written out literally from docs/network.md, reading an STTR's parameters (eval mode only).

Deliberately independent of sttr_fast's code paths: explicit feature indices for every
BatchNorm1d, per-subset graph convolutions, per-head attention loops and the authors' (N'*V, C, 1, T)
token layout for temporal attention. Tests compare the model against it in float64.
"""
import torch
import torch.nn.functional as F


def batch_norm_eval(bn, x, feature_index):
    """Eval-mode BN with per-feature statistics gathered by an explicit feature index tensor."""
    mean, var = bn.running_mean[feature_index], bn.running_var[feature_index]
    weight, bias = bn.weight[feature_index], bn.bias[feature_index]
    return (x - mean) / torch.sqrt(var + bn.eps) * weight + bias


def channel_bn(bn, x):
    return batch_norm_eval(bn, x, torch.arange(x.shape[1])[:, None, None])


def joint_bn(bn, x):
    """BatchNorm1d(C*V) over (N', C*V, T) with feature index c*V + v, on x (N', C, T, V)."""
    c, v = x.shape[1], x.shape[3]
    index = torch.arange(c)[:, None, None] * v + torch.arange(v)[None, None, :]
    return batch_norm_eval(bn, x, index)


def gcn(module, x):
    subsets = module.adjacency * module.mask
    out = sum(F.conv2d(torch.matmul(x, subsets[k]), conv.weight, conv.bias)
              for k, conv in enumerate(module.convs))
    return F.relu(channel_bn(module.bn, out))


def tcn(module, x):
    conv = module.conv
    return F.relu(channel_bn(module.bn, F.conv2d(x, conv.weight, conv.bias, stride=conv.stride,
                                                 padding=conv.padding)))


def shortcut(module, x):
    return F.relu(channel_bn(module.bn, F.conv2d(x, module.conv.weight, module.conv.bias,
                                                 stride=module.conv.stride)))


def heads_attention(q, k, v, num_heads):
    """q, k: (B, dk, L); v: (B, dv, L). Per-head softmax attention, heads concatenated."""
    dkh, dvh = q.shape[1] // num_heads, v.shape[1] // num_heads
    outputs = []
    for h in range(num_heads):
        qh = q[:, h * dkh:(h + 1) * dkh] * dkh ** -0.5
        kh = k[:, h * dkh:(h + 1) * dkh]
        vh = v[:, h * dvh:(h + 1) * dvh]
        probs = torch.softmax(torch.einsum("bdi,bdj->bij", qh, kh), dim=-1)
        outputs.append(torch.einsum("bij,bej->bei", probs, vh))
    return torch.cat(outputs, dim=1)


def ssa(module, x):
    n, _, t, v = x.shape
    qkv = F.conv2d(joint_bn(module.input_bn, x), module.qkv.weight, module.qkv.bias)
    dk, dv = module.dk, module.dv
    # one sequence per (n', t): tokens are joints
    tokens = qkv.permute(0, 2, 1, 3).reshape(n * t, -1, v)
    attended = heads_attention(tokens[:, :dk], tokens[:, dk:2 * dk], tokens[:, 2 * dk:],
                               module.num_heads)
    out = F.conv2d(attended.reshape(n, t, dv, v).permute(0, 2, 1, 3), module.out_proj.weight,
                   module.out_proj.bias)
    if module.in_channels == module.out_channels:
        out = out + x
    return F.relu(channel_bn(module.bn, out))


def tsa(module, x):
    n, c, t, v = x.shape
    normalised = joint_bn(module.input_bn, x)
    tokens = normalised.permute(0, 3, 1, 2).reshape(n * v, c, 1, t)  # the authors' layout
    qkv = F.conv2d(tokens, module.qkv.weight, module.qkv.bias, stride=(1, module.stride))[:, :, 0]
    dk, dv = module.dk, module.dv
    attended = heads_attention(qkv[:, :dk], qkv[:, dk:2 * dk], qkv[:, 2 * dk:], module.num_heads)
    t_out = attended.shape[-1]
    attended = attended.reshape(n, v, dv, t_out).permute(0, 2, 3, 1)
    out = F.conv2d(attended, module.out_proj.weight, module.out_proj.bias)
    out = out + (x if module.down is None else shortcut(module.down, x))
    return F.relu(channel_bn(module.bn, out))


def block(module, x):
    kind = type(module).__name__
    return {"GraphConvolution": gcn, "TemporalConvolution": tcn, "SpatialSelfAttention": ssa,
            "TemporalSelfAttention": tsa}[kind](module, x)


def unit(module, x):
    out = block(module.temporal, block(module.spatial, x))
    if module.shortcut is None:
        return out
    if type(module.shortcut).__name__ == "Identity":
        return out + x
    return out + shortcut(module.shortcut, x)


def sttr_forward(model, x):
    n, c, t, v, m = x.shape
    # data_bn feature index m*V*C + v*C + c
    index = (torch.arange(m)[None, None, :] * v * c + torch.arange(v)[None, :, None] * c
             + torch.arange(c)[:, None, None])  # (C, V, M)
    normalised = batch_norm_eval(model.data_bn, x, index[:, None])  # broadcast over T
    h = torch.stack([normalised[i, ..., p] for i in range(n) for p in range(m)])
    original = torch.stack([x[i, ..., p] for i in range(n) for p in range(m)])
    h = unit(model.stem, h)
    for position, module in enumerate(model.units):
        if position == 3:
            h = torch.cat([h, original], dim=1)
        h = unit(module, h)
    per_person = h.mean(dim=3)                                       # (N', C, T)
    per_sample = torch.stack([per_person[i * m:(i + 1) * m].mean(0) for i in range(n)])
    return F.linear(per_sample.mean(dim=2), model.classifier.weight, model.classifier.bias)
