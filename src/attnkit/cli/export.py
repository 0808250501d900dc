"""``attnkit export g2p --onnx FOLDER``: a G2P model as ONNX graphs, for ONNX Runtime."""

from __future__ import annotations

__all__ = ["add_export_parser", "export"]


def add_export_parser(sub) -> None:
    from .options import add_trust_flag, positive

    kinds = sub.add_parser("export", help="write a model in another format (G2P: ONNX)").add_subparsers(
        dest="exported", required=True
    )
    p = kinds.add_parser(
        "g2p",
        help="a G2P model as ONNX graphs (encoder and decoder step), for ONNX Runtime",
        description=(
            "Write a G2P model (an RNN with Luong attention, or an ensemble of them) to the folder --onnx: "
            "encoder.onnx (letters -> memory and the decoder's first state), step.onnx (one decoder step: "
            "previous phoneme and state -> log-probabilities, attention weights, next state) and g2p.json "
            "(the vocabularies, the length cap, the tensors' names). Batch and word length are dynamic. "
            "Pronounce with attnkit.tasks.g2p.onnx_export.OnnxG2P(FOLDER). Needs the onnx extra: "
            "pip install 'attnkit[onnx]'."
        ),
    )
    p.add_argument("--onnx", metavar="FOLDER", required=True, help="the folder to write (made if it is not there)")
    p.add_argument(
        "--model",
        help="fast (default: the shipped fast model), accurate (the shipped ensemble of three), or a G2P checkpoint "
        "or run folder",
    )
    p.add_argument("--opset", type=positive, help="the ONNX opset, 18 or newer (default: torch's exporter's)")
    p.add_argument("--force", action="store_true", help="overwrite the files of an earlier export in FOLDER")
    add_trust_flag(p)


def export(args) -> int:
    from ..errors import AttentionError
    from ..tasks.g2p import G2P, onnx_export
    from . import progress
    from .options import check_folder

    folder = check_folder(args.onnx, "--onnx")
    there = [folder / name for name in onnx_export.FILES if (folder / name).exists()]
    if there and not args.force:  # before the model loads
        raise AttentionError(f"--onnx: {str(there[0])!r} already exists; add --force to overwrite it")
    onnx_export.require("onnx", "onnxscript")
    onnx_export.check_opset(args.opset, "--opset")
    g2p = G2P.load(args.model, trust_unchecked=args.trust_unchecked)
    with progress.spinner("exporting to ONNX"):
        paths = onnx_export.export(g2p, folder, opset=args.opset, force=args.force)
    for path in paths:
        print(path)
    return 0
