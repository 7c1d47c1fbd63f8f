"""`dsmooth import-weights`: a foreign PyTorch state dict -> a dsmooth checkpoint."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser(
        "import-weights",
        help="convert a PyTorch state dict (.pt/.pth/.th) into a dsmooth checkpoint",
        description="Read weights safely (torch.load(weights_only=True)), fit them to a "
        "registry architecture (module. prefixes, nested state_dict, Sequential(normalize, "
        "model) keys), and write safetensors + config.json with the normalisation inside. "
        "See docs/models.md.",
    )
    p.add_argument("weights", help="the foreign weights file")
    p.add_argument(
        "--arch",
        default=None,
        help="registry architecture, e.g. cifar_resnet20 (not needed for the official "
        "denoised-smoothing checkpoints, which name theirs)",
    )
    p.add_argument("--mean", default=None, help="input mean: imagenet, cifar10, or R,G,B")
    p.add_argument("--std", default=None, help="input std: imagenet, cifar10, or R,G,B")
    p.add_argument("--num-classes", type=int, default=None, help="default: from the weights")
    p.add_argument(
        "--out",
        required=True,
        help="checkpoint folder, or a single file ending in .safetensors",
    )
    p.add_argument("--half", action="store_true", help="store weights as float16 (half size)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")
    p.add_argument("--note", default=None, help="free text stored in the config (provenance)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    import torch

    from dsmooth.errors import UserError
    from dsmooth.models.checkpoint import save_checkpoint
    from dsmooth.models.config import ModelConfig
    from dsmooth.models.foreign import import_weights

    out = Path(args.out)
    if out.exists() and not args.force:
        raise UserError(f"{out} exists; choose another --out or pass --force.")
    model, config = import_weights(args.weights, args.arch, args.mean, args.std, args.num_classes)
    if args.note:
        config = ModelConfig.from_dict({**config, "note": args.note}, where=str(out))
    save_checkpoint(model, out, config, dtype=torch.float16 if args.half else None)
    shown = {
        k: config[k]
        for k in ("architecture", "kind", "num_classes", "normalization")
        if k in config
    }
    print(f"wrote {out}: {json.dumps(shown)}")
    return 0
