"""Camera calibration for TopicGeo Edge (torch-free: numpy, OpenCV, PyYAML; Pillow for EXIF).

Modules:
    camera_info: ``CameraInfo`` and ROS camera_info YAML read/write, scaling for resized images.
    board, calibrate: chessboard / ChArUco detection and intrinsic calibration (pinhole or fisheye).
    exif: EXIF and DJI XMP metadata, intrinsics from metadata (resize-aware).
    geometry: undistortion maps, GSD, image <-> ground projection and the 6-DoF pose from ground points.
    cli: the ``edge-calibrate`` command.

Only ``camera_info`` is imported here; import the others explicitly.
"""

from calibration.camera_info import CameraInfo, read_camera_info, write_camera_info

__all__ = ["CameraInfo", "read_camera_info", "write_camera_info"]
