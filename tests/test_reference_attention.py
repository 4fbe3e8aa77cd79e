"""The reference attention cores and DropAttention (docs/network.md §5-§8), and input validation."""
import re

import pytest
import torch

from sttr_fast import STTR, SpatialSelfAttention, TemporalSelfAttention, ops
from sttr_fast.ops import reference

EPS = 1e-8


def explicit_heads(tokens, key_mask, num_heads, dk, dv):
    """docs/network.md §8 written out: a = exp(s - max s) over all keys,
    out = sum(m a v) / (K + 1e-8 L).

    tokens (B, 2*dk + dv, L), key_mask (B, H, L) or None -> (B, dv, L).
    """
    dkh, dvh = dk // num_heads, dv // num_heads
    outputs = []
    for h in range(num_heads):
        q = tokens[:, h * dkh:(h + 1) * dkh].transpose(1, 2)
        k = tokens[:, dk + h * dkh:dk + (h + 1) * dkh].transpose(1, 2)
        v = tokens[:, 2 * dk + h * dvh:2 * dk + (h + 1) * dvh].transpose(1, 2)
        s = q @ k.transpose(1, 2) * dkh ** -0.5
        a = torch.exp(s - s.amax(dim=-1, keepdim=True))
        total = a.sum(-1, keepdim=True)
        if key_mask is None:
            out = (a @ v) / total
        else:
            kept = a * key_mask[:, h, None, :].to(a.dtype)
            out = (kept @ v) / (kept.sum(-1, keepdim=True) + EPS * total)
        outputs.append(out.transpose(1, 2))
    return torch.cat(outputs, dim=1)


def explicit_spatial(qkv, key_mask, num_heads, dk, dv):
    n, c, t, v = qkv.shape
    tokens = qkv.permute(0, 2, 1, 3).reshape(n * t, c, v)
    mask = None if key_mask is None else key_mask.reshape(n * t, num_heads, v)
    return explicit_heads(tokens, mask, num_heads, dk, dv).reshape(n, t, dv, v).permute(0, 2, 1, 3)


def explicit_temporal(qkv, key_mask, num_heads, dk, dv):
    n, c, t, v = qkv.shape
    tokens = qkv.permute(0, 3, 1, 2).reshape(n * v, c, t)
    mask = None if key_mask is None else key_mask.reshape(n * v, num_heads, t)
    return explicit_heads(tokens, mask, num_heads, dk, dv).reshape(n, v, dv, t).permute(0, 2, 3, 1)


OPS = {
    "spatial": (ops.spatial_attention, explicit_spatial, lambda n, t, h, v: (n, t, h, v)),
    "temporal": (ops.temporal_attention, explicit_temporal, lambda n, t, h, v: (n, v, h, t)),
}
SHAPES = [  # (N', T, V, heads, dkh, dvh)
    (2, 5, 25, 8, 2, 4),
    (3, 7, 11, 2, 1, 3),
    (1, 13, 4, 1, 5, 2),
]


def random_qkv(n, t, v, heads, dkh, dvh, dtype=torch.float64, generator=None):
    dk, dv = heads * dkh, heads * dvh
    return torch.randn(n, 2 * dk + dv, t, v, dtype=dtype, generator=generator) * 2, dk, dv


@pytest.mark.parametrize("kind", OPS)
@pytest.mark.parametrize("shape", SHAPES)
def test_drop_attention_equals_the_explicit_formula(kind, shape):
    op, explicit, mask_shape = OPS[kind]
    generator = torch.Generator().manual_seed(sum(shape))
    qkv, dk, dv = random_qkv(*shape, generator=generator)
    n, t, v, heads = shape[:4]
    mask = torch.rand(mask_shape(n, t, heads, v), generator=generator) < 0.5
    out = op(qkv, heads, dk, dv, key_mask=mask, backend="reference")
    torch.testing.assert_close(out, explicit(qkv, mask, heads, dk, dv), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", OPS)
@pytest.mark.parametrize("path", reference.PATHS)
def test_without_drop_attention_every_path_is_plain_softmax_attention(kind, path):
    _, explicit, _ = OPS[kind]
    core = getattr(reference, f"{kind}_attention")
    qkv, dk, dv = random_qkv(2, 6, 25, 8, 2, 4, generator=torch.Generator().manual_seed(5))
    out = core(qkv, 8, dk, dv, key_mask=None, path=path)
    torch.testing.assert_close(out, explicit(qkv, None, 8, dk, dv), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", OPS)
def test_p_zero_is_plain_softmax_through_the_op(kind):
    op, explicit, _ = OPS[kind]
    qkv, dk, dv = random_qkv(2, 6, 9, 4, 2, 3, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(op(qkv, 4, dk, dv, p=0.0), explicit(qkv, None, 4, dk, dv),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16], ids=str)
@pytest.mark.parametrize("kind", OPS)
def test_all_keys_dropped_gives_zero_and_finite_gradients(kind, dtype):
    """Also in float16, where the 1e-8 of the renormalisation is below the smallest number."""
    op, _, mask_shape = OPS[kind]
    qkv, dk, dv = random_qkv(2, 5, 7, 2, 2, 3, generator=torch.Generator().manual_seed(1))
    qkv = qkv.to(dtype).requires_grad_(True)
    mask = torch.ones(mask_shape(2, 5, 2, 7), dtype=torch.bool)
    if kind == "spatial":
        mask[1, 3] = False       # every joint of one frame, both heads
    else:
        mask[0, 4, 1] = False    # every frame of one joint, head 1
    out = op(qkv, 2, dk, dv, key_mask=mask)
    dropped = out[1, :, 3] if kind == "spatial" else out[0, 3:, :, 4]
    assert torch.equal(dropped, torch.zeros_like(dropped))
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    assert torch.isfinite(qkv.grad).all()
    assert qkv.grad.abs().sum() > 0
    p_one = op(qkv.detach(), 2, dk, dv, p=1.0)
    assert torch.equal(p_one, torch.zeros_like(p_one))


def test_drop_attention_function_renormalises_kept_keys():
    generator = torch.Generator().manual_seed(2)
    probs = torch.softmax(torch.randn(4, 3, 6, 6, dtype=torch.float64, generator=generator), -1)
    mask = torch.rand(4, 3, 6, generator=generator) < 0.6
    out = ops.drop_attention(probs, mask)
    kept = probs * mask[:, :, None, :]
    torch.testing.assert_close(out, kept / (kept.sum(-1, keepdim=True) + EPS), rtol=0, atol=0)
    assert torch.all(out[~mask[:, :, None, :].expand_as(out)] == 0)


def test_key_mask_keeps_one_minus_p_and_follows_the_seed():
    torch.manual_seed(11)
    mask = ops.sample_key_mask((200, 8, 100), 0.3, torch.device("cpu"))
    assert mask.dtype == torch.bool
    assert abs(mask.float().mean().item() - 0.7) < 0.01
    qkv, dk, dv = random_qkv(2, 6, 25, 8, 2, 4)
    torch.manual_seed(4)
    first = ops.spatial_attention(qkv, 8, dk, dv, p=0.5)
    torch.manual_seed(4)
    again = ops.spatial_attention(qkv, 8, dk, dv, p=0.5)
    different = ops.spatial_attention(qkv, 8, dk, dv, p=0.5)
    assert torch.equal(first, again)
    assert not torch.equal(first, different)


@pytest.mark.parametrize("kind", OPS)
@pytest.mark.parametrize("masked,path", [(True, "explicit"), (False, "explicit"), (False, "sdpa")])
def test_gradcheck_reference_cores(kind, masked, path):
    _, _, mask_shape = OPS[kind]
    core = getattr(reference, f"{kind}_attention")
    generator = torch.Generator().manual_seed(6)
    qkv, dk, dv = random_qkv(2, 3, 4, 2, 2, 2, generator=generator)
    mask = (torch.rand(mask_shape(2, 3, 2, 4), generator=generator) < 0.5) if masked else None
    if masked:
        mask[0, 0, 0] = False  # one all-dropped row
    qkv.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: core(x, 2, dk, dv, key_mask=mask, path=path),
                                    (qkv,), eps=1e-6, atol=1e-7)


def test_reference_reads_strided_qkv_without_changes():
    qkv, dk, dv = random_qkv(2, 6, 25, 8, 2, 4, generator=torch.Generator().manual_seed(9))
    channels_last = qkv.contiguous(memory_format=torch.channels_last)
    for op in (ops.spatial_attention, ops.temporal_attention):
        torch.testing.assert_close(op(channels_last, 8, dk, dv), op(qkv, 8, dk, dv),
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("module_cls", [SpatialSelfAttention, TemporalSelfAttention])
def test_drop_attention_is_off_in_eval_and_on_in_training(module_cls):
    torch.manual_seed(0)
    args = (32, 32) if module_cls is SpatialSelfAttention else (32,)
    module = module_cls(*args, num_heads=4, drop_attention=0.5)
    without = module_cls(*args, num_heads=4, drop_attention=0.0)
    without.load_state_dict(module.state_dict())
    x = torch.randn(2, 32, 8, 25)
    module.eval(), without.eval()
    torch.testing.assert_close(module(x), without(x), rtol=0, atol=0)
    module.train(), without.train()
    torch.manual_seed(1)
    dropped = module(x)
    torch.manual_seed(1)
    plain = without(x)
    assert not torch.allclose(dropped, plain, atol=1e-3)


# --- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("call,message", [
    (lambda: ops.spatial_attention(torch.randn(2, 24, 5), 2, 4, 16), "4-D"),
    (lambda: ops.spatial_attention(torch.randn(2, 23, 5, 25), 2, 4, 16), "24 channels"),
    (lambda: ops.temporal_attention(torch.randn(2, 24, 5, 25).int(), 2, 4, 16), "float"),
    (lambda: ops.temporal_attention(torch.randn(2, 27, 5, 25), 2, 5, 17), "divisible by num_heads"),
    (lambda: ops.spatial_attention(torch.randn(2, 24, 5, 25), 2, 4, 16, p=1.5), "[0, 1]"),
    (lambda: ops.spatial_attention(torch.randn(2, 24, 5, 25), 2, 4, 16, backend="cudnn"), "cudnn"),
    (lambda: ops.spatial_attention(torch.randn(2, 24, 5, 25), 2, 4, 16,
                                   key_mask=torch.ones(2, 25, 2, 5, dtype=torch.bool)), "(2, 5, 2, 25)"),
    (lambda: ops.temporal_attention(torch.randn(2, 24, 5, 25), 2, 4, 16,
                                    key_mask=torch.ones(2, 25, 2, 5)), "bool"),
])
def test_ops_reject_bad_input(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


def module_cases():
    ssa = SpatialSelfAttention(16, 32, num_heads=4)
    tsa = TemporalSelfAttention(32, stride=2, num_heads=4)
    model = STTR(num_classes=5, base_channels=16)
    return [
        (ssa, torch.randn(2, 16, 25), "4-D"),
        (ssa, torch.randn(2, 15, 4, 25), "C=16 at axis 1, got 15"),
        (ssa, torch.randn(2, 16, 4, 24), "V=25 at axis 3, got 24"),
        (tsa, torch.randn(2, 32, 5, 25), "T=5 frames must be divisible by stride=2"),
        (model, torch.randn(2, 3, 16, 25), "5-D"),
        (model, torch.randn(2, 6, 16, 25, 2), "C=3 at axis 1, got 6"),
        (model, torch.randn(2, 3, 16, 25, 3), "M=2 at axis 4, got 3"),
        (model, torch.randn(2, 3, 18, 25, 2), "divisible by 4"),
        (model, torch.randint(0, 3, (2, 3, 16, 25, 2)), "floating-point"),
        (model, torch.randn(2, 3, 16, 25, 2, dtype=torch.float64),
         "input is torch.float64 but the module's parameters are torch.float32"),
        (ssa, torch.randn(2, 16, 4, 25, dtype=torch.float16), "input is torch.float16"),
        (model, torch.randn(2, 3, 0, 25, 2), "empty axis (T=0; shape (2, 3, 0, 25, 2))"),
        (model, torch.randn(0, 3, 16, 25, 2), "empty axis (N=0"),
        (tsa, torch.randn(2, 32, 0, 25), "empty axis (T=0"),
    ]


def test_half_activations_are_taken_under_autocast():
    model = STTR(num_classes=5, base_channels=16).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(torch.randn(1, 3, 8, 25, 2)).shape == (1, 5)


@pytest.mark.parametrize("case", range(14))
def test_modules_reject_bad_input(case):
    module, x, message = module_cases()[case]
    with pytest.raises(ValueError, match=re.escape(message)):
        module(x)


def test_modules_reject_a_device_mix():
    with torch.device("meta"):
        model = STTR(num_classes=5, base_channels=16)
        ssa = SpatialSelfAttention(16, 32, num_heads=4)
    with pytest.raises(ValueError, match="input is on cpu but the module's parameters are on meta"):
        model(torch.randn(1, 3, 8, 25, 2))
    with pytest.raises(ValueError, match="input is on cpu but the module's parameters are on meta"):
        ssa(torch.randn(1, 16, 8, 25))


@pytest.mark.parametrize("build, message", [
    (lambda: SpatialSelfAttention(16, 40), "SpatialSelfAttention: out_channels=40 gives keys of 10 "
     "and values of 40 channels, which num_heads=8 must both divide; choose out_channels a "
     "multiple of 4*num_heads = 32"),
    (lambda: TemporalSelfAttention(48, num_heads=8), "TemporalSelfAttention: channels=48"),
    (lambda: SpatialSelfAttention(16, 32, num_heads=0), "num_heads must be an integer >= 1, got 0"),
    (lambda: TemporalSelfAttention(32, stride=0), "stride must be an integer >= 1, got 0"),
    (lambda: SpatialSelfAttention(16, 32, drop_attention=2), "drop_attention must be a number in "
     "[0, 1], got 2"),
    (lambda: STTR(stream="both"), "stream must be one of"),
    # the units get 40 and 80 channels; the error names what the user wrote
    (lambda: STTR(base_channels=20), "STTR: base_channels=20 does not split into num_heads=8 "
     "heads"),
    (lambda: STTR(base_channels=20), "choose a multiple of 2*num_heads = 16, e.g. 16 or 32"),
    (lambda: STTR(base_channels=64.0), "STTR: base_channels must be an integer >= 1, got 64.0"),
    (lambda: STTR(num_heads=True), "STTR: num_heads must be an integer >= 1, got True"),
    (lambda: STTR(num_classes=0), "STTR: num_classes must be an integer >= 1, got 0"),
    (lambda: STTR(dropout=1.0), "STTR: dropout must be a number in [0, 1), got 1.0"),
])
def test_constructor_arguments_are_refused_by_their_names(build, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build()


def test_long_sequences_on_the_cpu_take_padded_sdpa_and_compute_the_same(seed):
    """From CPU_SDPA_MIN_LENGTH tokens the default path is SDPA with q and k zero-padded to v's
    head dim; it must equal the explicit path, output and gradient."""
    _, explicit, _ = OPS["temporal"]
    length = reference.CPU_SDPA_MIN_LENGTH
    qkv, dk, dv = random_qkv(2, length, 3, 2, 2, 5, generator=torch.Generator().manual_seed(seed))
    assert reference.default_path(qkv.device, length, masked=False, needs_grad=True) == "sdpa"
    assert reference.default_path(qkv.device, length - 1, masked=False, needs_grad=True) == "explicit"
    fast = qkv.detach().clone().requires_grad_(True)
    plain = qkv.detach().clone().requires_grad_(True)
    out = reference.temporal_attention(fast, 2, dk, dv)
    expected = explicit(plain, None, 2, dk, dv)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    grad = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(seed + 1))
    out.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(fast.grad, plain.grad, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("kind", OPS)
def test_cpu_inference_takes_blocks_that_compute_the_explicit_path_in_qkvs_layout(kind, monkeypatch):
    """Short sequences in inference on the CPU take the blocked path (default_path); with blocks
    of 3 sequences (the last one partial) it equals the explicit path, in float64 to rounding and
    in bfloat16 within the explicit path's own bfloat16 error, and writes the output in qkv's
    stride order (the modules hand over a transposed projection output)."""
    op, explicit, _ = OPS[kind]
    heads, length = 2, 7
    assert reference.default_path(torch.device("cpu"), length, masked=False, needs_grad=False) == "blocked"
    assert reference.default_path(torch.device("cpu"), length, masked=False, needs_grad=True) == "explicit"
    assert reference.default_path(torch.device("cpu"), length, masked=True, needs_grad=False) == "explicit"
    longest = reference.CPU_BLOCKED_MAX_LENGTH
    assert reference.default_path(torch.device("cpu"), longest - 1, masked=False, needs_grad=False) == "blocked"
    assert reference.default_path(torch.device("cpu"), longest, masked=False, needs_grad=False) == "explicit"
    monkeypatch.setattr(reference, "CPU_BLOCK_BYTES", 3 * heads * length * length * 4)
    generator = torch.Generator().manual_seed(12)
    n, t, v = (2, 8, length) if kind == "spatial" else (2, length, 8)  # 8 sequences per n': 3 + 3 + 2
    qkv, dk, dv = random_qkv(n, t, v, heads, 2, 3, generator=generator)
    qkv = qkv.transpose(2, 3).contiguous().transpose(2, 3)  # frames unit-stride, as the modules pass it
    with torch.no_grad():
        out = op(qkv, heads, dk, dv, backend="reference")
        torch.testing.assert_close(out, explicit(qkv, None, heads, dk, dv), rtol=1e-12, atol=1e-12)
        assert out.stride(2) == 1 and out.stride(3) == t
        low = qkv.to(torch.bfloat16)
        blocked = op(low, heads, dk, dv, backend="reference").double()
        plain = getattr(reference, f"{kind}_attention")(low, heads, dk, dv, path="explicit").double()
    exact = explicit(low.double(), None, heads, dk, dv)
    assert (blocked - exact).norm() <= 2 * (plain - exact).norm() + 1e-3 * exact.norm()


@pytest.mark.parametrize("length", [25, 75])
def test_short_half_precision_rows_take_a_float32_softmax_on_the_cpu(length):
    """reference._probabilities: below CPU_FLOAT32_SOFTMAX_MAX_LENGTH a bf16 softmax on the CPU is
    computed in float32 and rounded once (faster there, and as CUDA's autocast computes it);
    longer rows keep torch's bf16 softmax."""
    generator = torch.Generator().manual_seed(23)
    q, k = (torch.randn(2, 3, 4, length, 8, generator=generator).bfloat16().requires_grad_() for _ in range(2))
    probabilities = reference._probabilities(q, k)
    scores = torch.matmul(q.detach() * 8 ** -0.5, k.detach().transpose(-1, -2))
    short = length < reference.CPU_FLOAT32_SOFTMAX_MAX_LENGTH
    expected = torch.softmax(scores.float(), dim=-1).bfloat16() if short else torch.softmax(scores, dim=-1)
    assert probabilities.dtype == torch.bfloat16 and torch.equal(probabilities.detach(), expected)
    probabilities.square().sum().backward()
    assert torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
@pytest.mark.parametrize("track", [True, False], ids=["tracked", "untracked"])
def test_channels_last_joint_batch_norm_is_the_modules(momentum, track):
    """Channels-last input takes the joint BatchNorm over a view with reordered parameters
    (sttr_fast/attention.py): output, gradients, running statistics and the batch count are what
    BatchNorm1d over (N', C*V, T) gives, in training (two steps) and in eval, and the output stays
    channels-last."""
    from sttr_fast.attention import _channels_last_joint_batch_norm, joint_batch_norm
    generator = torch.Generator().manual_seed(8)
    c, v = 3, 5
    modules = [torch.nn.BatchNorm1d(c * v, momentum=momentum, track_running_stats=track).double()
               for _ in range(2)]
    with torch.no_grad():
        for parameter in modules[0].parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=torch.float64))
    modules[1].load_state_dict(modules[0].state_dict())
    for training in (True, True, False):
        for module in modules:
            module.train(training)
        x = torch.randn(2, c, 4, v, generator=generator, dtype=torch.float64)
        reference_input = x.clone().requires_grad_()
        fast_input = x.contiguous(memory_format=torch.channels_last).requires_grad_()
        expected = joint_batch_norm(modules[0], reference_input).transpose(2, 3)
        out = _channels_last_joint_batch_norm(modules[1], fast_input)
        assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
        weights = torch.randn(x.shape, generator=generator, dtype=torch.float64)
        (expected * weights).sum().backward()
        (out * weights).sum().backward()
        torch.testing.assert_close(fast_input.grad, reference_input.grad, rtol=1e-12, atol=1e-12)
        for (name, a), b in zip(modules[0].named_parameters(), modules[1].parameters()):
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-12, atol=1e-12, msg=name)
        for (name, a), b in zip(modules[0].named_buffers(), modules[1].buffers()):
            torch.testing.assert_close(b, a, rtol=1e-12, atol=0, msg=name)
