"""``sttr bench``: time ST-TR training steps and inference on random skeletons."""
from __future__ import annotations

import time


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="time training steps and inference on random input",
        description="Build S-TR or T-TR, run training steps (forward, backward, SGD) and one "
                    "inference pass on random skeletons, and print parameters, times and "
                    "samples/s. The first step includes warm-up and is not counted.")
    parser.add_argument("--stream", choices=("spatial", "temporal"), default="spatial")
    parser.add_argument("--modality", choices=("joint", "joint_bone"), default="joint",
                        help="joint: 3 channels, 64 base channels; joint_bone: 6 and 128")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--frames", type=int, default=300, help="T, divisible by 4")
    parser.add_argument("--num-classes", type=int, default=60)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(run=run)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device(name: str):
    """The torch device ``--device`` names, refused in one line if this machine has none."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"--device {name!r} is not a device name (cpu, cuda, cuda:1, ...)") from error
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device {name}: this machine has no CUDA GPU that PyTorch can use "
                             f"(torch {torch.__version__}); use --device cpu")
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {name}: this machine has {count} CUDA GPU(s), "
                             f"cuda:0 to cuda:{count - 1}")
    elif device.type != "cpu":
        raise ValueError(f"--device {name}: sttr bench runs on cpu or cuda")
    return device


def run(args) -> int:
    import torch

    from ..model import STTR
    from ..ops import available_backends

    for option, value, least in (("--batch-size", args.batch_size, 1), ("--frames", args.frames, 4),
                                 ("--num-classes", args.num_classes, 1), ("--steps", args.steps, 0)):
        if value < least:
            raise ValueError(f"{option} must be at least {least}, got {value}")
    device = _device(args.device)
    if args.backend != "auto" and args.backend not in available_backends():
        raise ValueError(f"--backend {args.backend}: unknown or unavailable here; expected auto or "
                         f"one of {', '.join(available_backends())}")
    torch.manual_seed(args.seed)
    in_channels, base = (3, 64) if args.modality == "joint" else (6, 128)
    model = STTR(num_classes=args.num_classes, stream=args.stream, in_channels=in_channels,
                 base_channels=base, backend=args.backend).to(device)
    x = torch.randn(args.batch_size, in_channels, args.frames, 25, 2, device=device)
    labels = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"ST-TR {args.stream} stream, {args.modality}: {parameters:,} parameters on {device}")
    print(f"input {tuple(x.shape)} (N, C, T, V, M)")
    model.train()
    timed = 0.0
    for step in range(args.steps + 1):
        _sync(device)
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _sync(device)
        seconds = time.perf_counter() - start
        timed += seconds if step else 0.0
        print(f"train step {step}{' (warm-up)' if step == 0 else ''}: loss {loss.item():.4f}, "
              f"{seconds:.3f} s")
    if args.steps:
        print(f"training: {args.batch_size * args.steps / timed:.2f} samples/s")
    model.eval()
    with torch.no_grad():
        start = time.perf_counter()
        logits = model(x)
        _sync(device)
    seconds = time.perf_counter() - start
    print(f"inference: logits {tuple(logits.shape)}, {seconds:.3f} s, "
          f"{args.batch_size / seconds:.2f} samples/s")
    if not torch.isfinite(logits).all():
        print("error: non-finite logits")
        return 1
    return 0
