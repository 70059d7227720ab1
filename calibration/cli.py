"""``edge-calibrate``: camera_info YAML from board views (images or a video) or from a frame's EXIF/XMP.

Usage::

    edge-calibrate --images DIR --board chessboard:9x6:25 [--model fisheye] --out camera.yaml [--corners-png PATH]
    edge-calibrate --video FILE --board charuco:7x5:40:30:DICT_5X5_100 --every 15 --out camera.yaml
    edge-calibrate from-exif IMAGE --out camera.yaml [--sensor-width-mm W | --use-35mm]
                   [--original-size WxH] [--crop X,Y,W,H] [--stretch]

Exit status: 0 on success, 1 when the input is unusable (the reason is printed), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}")
    return int(parts[0]), int(parts[1])


def _crop(text: str) -> tuple[int, int, int, int]:
    parts = text.split(",")
    if len(parts) != 4 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected X,Y,W,H in captured pixels, got {text!r}")
    x, y, w, h = (int(p) for p in parts)
    return x, y, w, h


def build_board_parser() -> argparse.ArgumentParser:
    """Parser of the board-calibration form."""
    p = argparse.ArgumentParser(
        prog="edge-calibrate",
        description="Calibrate camera intrinsics from board views and write ROS camera_info YAML. "
        "Use 'edge-calibrate from-exif IMAGE --out camera.yaml' to build it from EXIF/XMP instead.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", type=Path, help="folder of board images (one camera, one resolution)")
    src.add_argument("--video", type=Path, help="video file of the board; frames are sampled")
    p.add_argument(
        "--board",
        required=True,
        help="chessboard:COLSxROWS:SQUARE_MM (inner corners) or charuco:COLSxROWS:SQUARE_MM:MARKER_MM[:DICT[:legacy]]",
    )
    p.add_argument("--model", choices=("pinhole", "fisheye"), default="pinhole", help="lens model (default pinhole)")
    p.add_argument("--out", type=Path, required=True, help="camera_info YAML to write")
    p.add_argument("--corners-png", type=Path, help="write a picture of the detected corners here")
    p.add_argument("--camera-name", default="camera", help="camera_name in the YAML")
    p.add_argument("--every", type=int, default=15, help="video: use every n-th frame (default 15)")
    p.add_argument("--max-frames", type=int, default=200, help="video: at most this many sampled frames")
    p.add_argument("--blur-threshold", type=float, default=100.0, help="min variance of Laplacian on the board")
    p.add_argument("--min-views", type=int, default=5, help="fewest accepted views (default 5)")
    p.add_argument("--alpha", type=float, default=0.0, help="P's free scaling / fisheye balance in [0, 1]")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def build_exif_parser() -> argparse.ArgumentParser:
    """Parser of the ``from-exif`` form."""
    p = argparse.ArgumentParser(
        prog="edge-calibrate from-exif",
        description="Build camera_info YAML (pinhole, no distortion) from a JPEG's EXIF/XMP: DJI "
        "CalibratedFocalLength/CalibratedOpticalCenter, or EXIF focal length with --sensor-width-mm or --use-35mm; "
        "scaled to the stored pixels when the frame was resized after capture.",
    )
    p.add_argument("image", type=Path, help="JPEG frame")
    p.add_argument("--out", type=Path, required=True, help="camera_info YAML to write")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--sensor-width-mm", type=float, help="sensor width imaged by the captured frame's width")
    how.add_argument("--use-35mm", action="store_true", help="use FocalLengthIn35mmFilm (approximate)")
    p.add_argument("--original-size", type=_size, help="captured size WxH when the metadata does not state it")
    p.add_argument("--crop", type=_crop, help="window X,Y,W,H of the captured frame that the stored image shows")
    p.add_argument("--stretch", action="store_true", help="the whole frame was resized to another aspect ratio")
    p.add_argument("--camera-name", help="camera_name in the YAML (default make_model)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _run_board(args: argparse.Namespace) -> int:
    from calibration.board import DetectionConfig, parse_board
    from calibration.calibrate import CalibrationConfig, calibrate_images, calibrate_video, write_corners_png
    from calibration.camera_info import write_camera_info

    config = CalibrationConfig(
        board=parse_board(args.board),
        model=args.model,
        detection=DetectionConfig(blur_threshold=args.blur_threshold),
        min_views=args.min_views,
        camera_name=args.camera_name,
        alpha=args.alpha,
        video_every=args.every,
        video_max_frames=args.max_frames,
    )
    result = calibrate_images(args.images, config) if args.images else calibrate_video(args.video, config)
    print(result.summary())
    write_camera_info(args.out, result.camera)
    print(f"wrote {args.out}")
    if args.corners_png:
        write_corners_png(args.corners_png, result)
        print(f"wrote {args.corners_png}")
    return 0


def _run_exif(args: argparse.Namespace) -> int:
    from calibration.camera_info import write_camera_info
    from calibration.exif import camera_from_metadata, read_metadata

    meta = read_metadata(args.image)
    try:
        cam = camera_from_metadata(
            meta,
            sensor_width_mm=args.sensor_width_mm,
            use_35mm_equivalent=args.use_35mm,
            original_size=args.original_size,
            crop=args.crop,
            allow_anisotropic=args.stretch,
            camera_name=args.camera_name,
        )
    except ValueError as exc:
        hint = {
            "cropped and/or stretched": "--crop X,Y,W,H and/or --stretch",
            "no calibrated focal length": "--sensor-width-mm W or --use-35mm",
            "principal point": "--original-size WxH",
        }
        options = [v for k, v in hint.items() if k in str(exc)]
        raise ValueError(f"{exc} (options: {options[0]})" if options else str(exc)) from exc
    print(f"{meta.path.name}: {meta.make} {meta.model}, stored {meta.width}x{meta.height}", end="")
    if meta.original_width is not None:
        print(f", captured {meta.original_width}x{meta.original_height} ({meta.original_size_source})", end="")
    print()
    for label, value in (
        ("relative altitude (m)", meta.relative_altitude_m),
        ("gimbal yaw/pitch/roll (deg)", (meta.gimbal_yaw_deg, meta.gimbal_pitch_deg, meta.gimbal_roll_deg)),
        ("focal length (mm), 35 mm equiv.", (meta.focal_length_mm, meta.focal_length_35mm)),
    ):
        print(f"  {label}: {value}")
    print(f"fx={cam.fx:.3f} fy={cam.fy:.3f} cx={cam.cx:.3f} cy={cam.cy:.3f} ({cam.width}x{cam.height})")
    write_camera_info(args.out, cam)
    print(f"wrote {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``edge-calibrate``; returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "from-exif":
        args = build_exif_parser().parse_args(args_list[1:])
        run = _run_exif
    else:
        args = build_board_parser().parse_args(args_list)
        run = _run_board
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"edge-calibrate: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
