"""`dsmooth export`: denoiser (+ classifier) as ONNX, TorchScript or Keras 3, checked."""

from __future__ import annotations

from dsmooth.cli.commands import common
from dsmooth.cli.options import add_options
from dsmooth.errors import UserError


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export denoiser (+ classifier) as ONNX, TorchScript or Keras 3 (.keras)",
        description="Write classifier(denoiser(x)) (or either alone) in another format, reload "
        "it, and check its outputs against PyTorch's on random noisy images (largest "
        "difference <= 1e-4 times the output scale; otherwise nothing is written). Inputs are "
        "float [0,1] images: NCHW for ONNX and TorchScript, NHWC for Keras. Keras export "
        "covers DnCNN-family denoisers and small CNNs; it is also checked under Keras' "
        "TensorFlow backend when TensorFlow is installed (docs/sources.md).",
    )
    p.add_argument("--denoiser", default=None, help="denoiser to export (any PyTorch source)")
    p.add_argument(
        "--classifier",
        default=None,
        help="classifier to export behind the denoiser (any PyTorch source)",
    )
    add_options(p, common.DENOISER_SIGMA_OPTIONS)
    p.add_argument("--format", required=True, choices=("onnx", "torchscript", "keras"), dest="fmt")
    p.add_argument("--out", required=True, help="output file (.onnx, .pt, .keras)")
    p.add_argument(
        "--input-shape",
        default="3,32,32",
        help="C,H,W of the images used to trace and check (default 3,32,32)",
    )
    p.add_argument(
        "--no-tensorflow-check",
        action="store_true",
        help="Keras: skip the check under the TensorFlow backend",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from torch import nn

    from dsmooth.cli.commands.serve import parse_shape
    from dsmooth.deploy.export import export, report_text
    from dsmooth.pipeline.compose import compose
    from dsmooth.sigma import check_sigma
    from dsmooth.sources import load_model

    if not args.denoiser and not args.classifier:
        raise UserError("give --denoiser, --classifier, or both.")
    if args.sigma is not None:
        check_sigma(args.sigma)
    shape = parse_shape(args.input_shape)
    denoiser = load_model(args.denoiser, role="denoiser") if args.denoiser else None
    classifier = load_model(args.classifier, role="classifier") if args.classifier else None
    for name, m in (("denoiser", denoiser), ("classifier", classifier)):
        if m is not None and not isinstance(m, nn.Module):
            raise UserError(f"the {name} is black-box here; only PyTorch models can be exported.")
    denoiser = common.prepare_denoiser(denoiser, args.sigma, args.strict)  # at --sigma
    model = denoiser if classifier is None else compose(classifier, denoiser)
    check_tf = False if args.no_tensorflow_check else None
    print(report_text(export(model, args.out, args.fmt, shape, check_tf)))
    return 0
