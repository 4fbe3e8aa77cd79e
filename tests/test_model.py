"""The reference ST-TR network against docs/network.md: shapes, parameter counts, the literal
forward."""
import copy

import pytest
import torch

import sttr_fast
from sttr_fast import STTR, Graph, SpatialSelfAttention, TemporalSelfAttention
from spec_forward import sttr_forward

# (stream, in_channels, base_channels) -> the authors' parameter count (docs/network.md §3),
# person_bn included
AUTHORS_PARAMETERS = {
    ("spatial", 3, 64): 3_075_338,
    ("temporal", 3, 64): 1_768_870,
    ("spatial", 6, 128): 12_126_348,
    ("temporal", 6, 128): 6_840_914,
}
PRESETS = list(AUTHORS_PARAMETERS)


def randomise_buffers_and_affine(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Give every BatchNorm non-trivial statistics and every GCN mask random values, so that a
    wrong feature order or a skipped normalisation changes the output."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            f = module.num_features
            module.running_mean.copy_(torch.randn(f, generator=generator) * 0.3)
            module.running_var.copy_(torch.rand(f, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(f, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(f, generator=generator) * 0.2)
        if hasattr(module, "adjacency"):
            module.mask.data.copy_(torch.rand(module.mask.shape, generator=generator) + 0.5)


@pytest.mark.parametrize("stream,in_channels,base", PRESETS)
def test_parameter_count_equals_authors_minus_person_bn(stream, in_channels, base):
    with torch.device("meta"):
        model = STTR(num_classes=60, stream=stream, in_channels=in_channels, base_channels=base)
    count = sum(p.numel() for p in model.parameters())
    assert count == AUTHORS_PARAMETERS[(stream, in_channels, base)] - 2 * 4 * base


@pytest.mark.parametrize("stream,in_channels,base", PRESETS)
def test_block_output_shapes_follow_the_layer_table(stream, in_channels, base):
    n, m, t, v = 1, 2, 300, 25
    with torch.device("meta"):
        model = STTR(num_classes=17, stream=stream, in_channels=in_channels, base_channels=base)
        x = torch.randn(n, in_channels, t, v, m)
    shapes = {}
    hooks = [model.stem.register_forward_hook(lambda mod, i, o: shapes.__setitem__("stem", (i[0].shape, o.shape)))]
    for index, unit in enumerate(model.units):
        hooks.append(unit.register_forward_hook(
            lambda mod, i, o, index=index: shapes.__setitem__(index, (i[0].shape, o.shape))))
    logits = model.eval()(x)
    for hook in hooks:
        hook.remove()
    c1, c2, c3, nm = base, 2 * base, 4 * base, n * m
    assert shapes["stem"] == ((nm, in_channels, t, v), (nm, c1, t, v))
    expected = [(c1, c1, t, t)] * 3 + [(c1 + in_channels, c2, t, t // 2)] + [(c2, c2, t // 2, t // 2)] * 2 \
        + [(c2, c3, t // 2, t // 4)] + [(c3, c3, t // 4, t // 4)] * 2
    for index, (cin, cout, tin, tout) in enumerate(expected):
        assert shapes[index] == ((nm, cin, tin, v), (nm, cout, tout, v)), f"unit {index}"
    assert logits.shape == (n, 17)


@pytest.mark.parametrize("stream", ["spatial", "temporal"])
@pytest.mark.parametrize("in_channels,num_person,frames", [(3, 2, 16), (6, 1, 12), (3, 3, 8)])
def test_forward_equals_the_spec_written_out(stream, in_channels, num_person, frames):
    generator = torch.Generator().manual_seed(hash((stream, in_channels, num_person)) % 2**31)
    model = STTR(num_classes=11, stream=stream, in_channels=in_channels, base_channels=16,
                 num_person=num_person).double().eval()
    with torch.no_grad():
        randomise_buffers_and_affine(model, generator)
        x = torch.randn(2, in_channels, frames, 25, num_person, generator=generator,
                        dtype=torch.float64)
        x[1, ..., -1] = 0  # an absent person still counts in the mean over persons
        torch.testing.assert_close(model(x), sttr_forward(model, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("stream", ["spatial", "temporal"])
def test_channels_last_weights_compute_the_same_network(stream):
    """Fast CPU inference keeps channels-last activations (sttr_fast/inference.py): the graph
    convolutions then take their channels-last order of operations, the attention cores the
    blocked path; the function stays the spec's."""
    generator = torch.Generator().manual_seed(31)
    model = STTR(num_classes=5, stream=stream, base_channels=16).double().eval()
    with torch.no_grad():
        randomise_buffers_and_affine(model, generator)
        x = torch.randn(2, 3, 12, 25, 2, generator=generator, dtype=torch.float64)
        expected = sttr_forward(model, x)
        model = model.to(memory_format=torch.channels_last)
        layouts = []
        for module in model.modules():
            if isinstance(module, sttr_fast.model.GraphConvolution):
                module.register_forward_pre_hook(lambda _, inputs: layouts.append(
                    inputs[0].is_contiguous(memory_format=torch.channels_last)
                    and not inputs[0].is_contiguous()))
        torch.testing.assert_close(model(x), expected, rtol=1e-10, atol=1e-10)
    assert layouts.count(True) >= 3, layouts


@pytest.mark.parametrize("stream", ["spatial", "temporal"])
def test_channels_last_training_step_is_the_same_step(stream):
    """bf16 CPU training runs channels-last (sttr_fast/train/engine.py place_model): every unit then
    gets channels-last activations, the concatenation before unit 3 included, and the training
    step — output, running statistics, every gradient, DropAttention's masks drawn from one
    seed — is the NCHW model's (float64). The attention units stay channels-last inside: their
    joint BatchNorm runs over a view, their cores return channels-last outputs."""
    generator = torch.Generator().manual_seed(5)
    nchw = STTR(num_classes=5, stream=stream, base_channels=16, dropout=0.0).double().train()
    with torch.no_grad():
        randomise_buffers_and_affine(nchw, generator)
    channels_last = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
    assert channels_last.activation_layout() == torch.channels_last
    assert nchw.activation_layout() == torch.contiguous_format
    unit_inputs = []
    for unit in channels_last.units:
        unit.register_forward_pre_hook(lambda _, inputs: unit_inputs.append(
            inputs[0].is_contiguous(memory_format=torch.channels_last) and not inputs[0].is_contiguous()))
    core_outputs = []
    for module in channels_last.modules():
        if isinstance(module, (SpatialSelfAttention, TemporalSelfAttention)):
            module.out_proj.register_forward_pre_hook(lambda _, inputs: core_outputs.append(
                inputs[0].is_contiguous(memory_format=torch.channels_last) and not inputs[0].is_contiguous()))
    x = torch.randn(2, 3, 12, 25, 2, generator=generator, dtype=torch.float64)
    outputs = []
    for model in (nchw, channels_last):
        torch.manual_seed(11)
        out = model(x)
        (out * torch.arange(5, dtype=torch.float64)).sum().backward()
        outputs.append(out)
    assert unit_inputs == [True] * len(channels_last.units)
    assert core_outputs == [True] * 6
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-10, atol=1e-10)
    for (name, a), b in zip(nchw.named_parameters(), channels_last.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-9, atol=1e-10, msg=name)
    for (name, a), b in zip(nchw.named_buffers(), channels_last.buffers()):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10, msg=name)


def test_custom_graph_and_joint_count():
    graph = Graph(5, ((1, 0), (2, 1), (3, 1), (4, 0)))
    model = STTR(num_classes=4, stream="spatial", num_point=5, num_person=1, base_channels=16,
                 graph=graph).double().eval()
    with torch.no_grad():
        randomise_buffers_and_affine(model, torch.Generator().manual_seed(3))
        x = torch.randn(3, 3, 8, 5, 1, dtype=torch.float64)
        torch.testing.assert_close(model(x), sttr_forward(model, x), rtol=1e-10, atol=1e-10)


def test_ntu_graph_partitioning():
    adjacency = sttr_fast.ntu_graph().spatial_adjacency()
    assert adjacency.shape == (3, 25, 25)
    torch.testing.assert_close(adjacency[0], torch.eye(25))
    # inward edge 1 -> 2 (1-based) sits at [j, i] = [1, 0]; every non-empty column sums to 1
    assert adjacency[1][1, 0] > 0 and adjacency[2][0, 1] > 0
    for subset in adjacency[1:]:
        colsum = subset.sum(0)
        assert torch.all(((colsum - 1).abs() < 1e-6) | (colsum == 0))
    # joint 21 (0-based 20) is the centre: nothing points away from it inwards
    assert adjacency[1][:, 20].sum() == 0


def test_gcn_mask_is_not_multiplied_in_place():
    model = STTR(num_classes=3, base_channels=16, num_person=1)
    gcn = model.stem.spatial
    before = gcn.adjacency.clone()
    with torch.no_grad():
        gcn.mask.mul_(3.0)
    model(torch.randn(1, 3, 8, 25, 1))
    model(torch.randn(1, 3, 8, 25, 1))
    torch.testing.assert_close(gcn.adjacency, before, rtol=0, atol=0)


def test_training_step_updates_every_parameter():
    torch.manual_seed(0)
    for stream in ("spatial", "temporal"):
        model = STTR(num_classes=5, stream=stream, base_channels=16, num_person=2)
        x = torch.randn(2, 3, 16, 25, 2)
        torch.nn.functional.cross_entropy(model(x), torch.tensor([1, 4])).backward()
        no_grad = [name for name, p in model.named_parameters()
                   if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
        assert no_grad == [], f"{stream}: parameters without a finite non-zero gradient: {no_grad}"


def test_state_dict_has_no_graph_buffers():
    keys = STTR(base_channels=16).state_dict().keys()
    assert not [k for k in keys if k.endswith("adjacency")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_dropout_is_nn_dropouts_function(dtype):
    """The CPU's dropout (sttr_fast.model.Dropout): each element kept with probability 1 - p and
    scaled by exactly 1 / (1 - p), the others zero, the gradient through the same mask, a seed
    repeats the mask, and eval mode is the identity."""
    dropout = sttr_fast.model.Dropout(0.3)
    x = (torch.rand(1000, 1000, generator=torch.Generator().manual_seed(2)) + 1).to(dtype).requires_grad_(True)
    torch.manual_seed(7)
    y = dropout(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.005   # 1e6 draws: the standard error is 5e-4
    expected = x.detach() * torch.tensor(1 / 0.7, dtype=dtype)
    assert torch.equal(y.detach()[kept], expected[kept])
    y.sum().backward()
    assert torch.equal(x.grad, torch.where(kept, torch.tensor(1 / 0.7, dtype=dtype), torch.tensor(0, dtype=dtype)))
    torch.manual_seed(7)
    assert torch.equal(dropout(x).detach(), y.detach())
    channels_last = x.detach()[None, None].expand(2, 3, 1000, 1000).contiguous(memory_format=torch.channels_last)
    assert dropout(channels_last).is_contiguous(memory_format=torch.channels_last)  # no layout change
    assert dropout.eval()(x) is x
