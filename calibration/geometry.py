"""Image <-> ground geometry for the onboard runtime (numpy + OpenCV, no torch).

Conventions (used by every function here):

* **World frame**: a local ENU tangent plane in metres, ``x`` east, ``y`` north, ``z`` up (convert map pixels through
  the geotransform and the CRS to ENU before calling; heights in the same vertical datum as the DEM).
* **Camera frame**: OpenCV's, ``x`` image right, ``y`` image down, ``z`` along the optical axis. Pixels follow
  OpenCV's convention (pixel centre at integer coordinates).
* **Attitude** ``(yaw, pitch, roll)`` in degrees: intrinsic Z-Y-X (aerospace) Euler angles, relative to NED, of the
  camera "body" frame whose ``x`` axis points to the image top, ``y`` to the image right and ``z`` along the optical
  axis, i.e. the attitude of an aircraft whose nose points to the top of the image and whose belly looks along the
  optical axis. A nadir camera whose image top points north has ``yaw = pitch = roll = 0``. ``yaw`` is clockwise from
  north in ``(-180, 180]``; ``pitch > 0`` tilts the optical axis towards the image top's direction; ``roll > 0``
  tilts it towards the image left (right wing down). This choice keeps the nadir case far from the Euler singularity
  (which is at an optical axis in the horizontal plane). DJI gimbal angles (optical-axis frame, pitch -90 = nadir)
  convert with :func:`rotation_from_dji_gimbal`; for zero roll, DJI ``(yaw, pitch, 0)`` = ours ``(yaw, pitch + 90, 0)``.
* **Covariance** of a pose estimate: 6x6 over ``[east, north, up, roll, pitch, yaw]`` in metres and radians, from
  Gauss-Newton: ``sigma^2 (J^T J)^-1`` with ``J`` the Jacobian of the pixel residuals and ``sigma^2`` their variance
  ``sum r^2 / (2N - 6)``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from calibration.camera_info import CameraInfo

logger = logging.getLogger(__name__)

#: A DEM sampler: ``heights = dem(east, north)`` for ``(N,)`` float64 arrays in the ENU frame; NaN where unknown.
DemSampler = Callable[[np.ndarray, np.ndarray], np.ndarray]

ENU_FROM_NED = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
_BODY_FROM_CAM = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # x_B = image up, y_B = right
_DJI_FROM_CAM = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # x = optical axis, y = right, z = down


# ------------------------------------------------------------------------------------------------ rotations
def _rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rot_y(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rotation_from_ypr(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """``(3, 3)`` float64 rotation ENU <- camera (OpenCV axes) for the module's attitude convention."""
    y, p, r = np.radians([yaw_deg, pitch_deg, roll_deg])
    return ENU_FROM_NED @ _rot_z(y) @ _rot_y(p) @ _rot_x(r) @ _BODY_FROM_CAM


def ypr_from_rotation(R_world_from_cam: np.ndarray) -> tuple[float, float, float]:
    """``(yaw, pitch, roll)`` in degrees of a ``(3, 3)`` ENU <- camera rotation; inverts :func:`rotation_from_ypr`."""
    R = ENU_FROM_NED.T @ np.asarray(R_world_from_cam, np.float64) @ _BODY_FROM_CAM.T  # NED <- body
    pitch = np.arcsin(np.clip(-R[2, 0], -1.0, 1.0))
    yaw = np.arctan2(R[1, 0], R[0, 0])
    roll = np.arctan2(R[2, 1], R[2, 2])
    yaw_deg = float(np.degrees(yaw))
    if yaw_deg <= -180.0:
        yaw_deg += 360.0
    return yaw_deg, float(np.degrees(pitch)), float(np.degrees(roll))


def rotation_from_dji_gimbal(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """``(3, 3)`` rotation ENU <- camera from DJI XMP gimbal angles.

    DJI's gimbal angles are Z-Y-X Euler angles relative to NED of a frame whose ``x`` is the optical axis, ``y`` the
    image right and ``z`` the image down (pitch 0 looks at the horizon, -90 straight down; yaw clockwise from north).
    """
    y, p, r = np.radians([yaw_deg, pitch_deg, roll_deg])
    return ENU_FROM_NED @ _rot_z(y) @ _rot_y(p) @ _rot_x(r) @ _DJI_FROM_CAM


# ---------------------------------------------------------------------------------------------------- pose
@dataclass(frozen=True, eq=False)
class CameraPose:
    """Camera pose in the ENU world frame.

    Attributes:
        R_world_from_cam: ``(3, 3)`` float64 rotation ENU <- camera (OpenCV axes).
        position: ``(3,)`` float64 camera centre ``(east, north, up)`` in metres.
    """

    R_world_from_cam: np.ndarray
    position: np.ndarray

    def __post_init__(self) -> None:
        R = np.array(self.R_world_from_cam, dtype=np.float64)
        C = np.array(self.position, dtype=np.float64).ravel()
        if R.shape != (3, 3) or not np.allclose(R @ R.T, np.eye(3), atol=1e-6) or np.linalg.det(R) < 0:
            raise ValueError(f"CameraPose.R_world_from_cam must be a (3, 3) rotation, got {R.tolist()}")
        if C.shape != (3,) or not np.all(np.isfinite(C)):
            raise ValueError(f"CameraPose.position must be 3 finite numbers, got {C.tolist()}")
        R.flags.writeable = False
        C.flags.writeable = False
        object.__setattr__(self, "R_world_from_cam", R)
        object.__setattr__(self, "position", C)

    @classmethod
    def from_ypr(cls, position: np.ndarray, yaw_deg: float, pitch_deg: float, roll_deg: float) -> CameraPose:
        """Pose from a camera centre ``(3,)`` ENU and the module's attitude angles (degrees)."""
        return cls(rotation_from_ypr(yaw_deg, pitch_deg, roll_deg), position)

    @classmethod
    def from_rvec_tvec(cls, rvec: np.ndarray, tvec: np.ndarray) -> CameraPose:
        """Pose from OpenCV's world -> camera ``rvec`` and ``tvec`` (3 values each)."""
        R_cw, _ = cv2.Rodrigues(np.asarray(rvec, np.float64).reshape(3, 1))
        t = np.asarray(tvec, np.float64).reshape(3)
        return cls(R_cw.T, -R_cw.T @ t)

    @property
    def ypr_deg(self) -> tuple[float, float, float]:
        """``(yaw, pitch, roll)`` in degrees."""
        return ypr_from_rotation(self.R_world_from_cam)

    @property
    def rvec_tvec(self) -> tuple[np.ndarray, np.ndarray]:
        """OpenCV world -> camera ``rvec`` ``(3,)`` and ``tvec`` ``(3,)``."""
        R_cw = self.R_world_from_cam.T
        rvec, _ = cv2.Rodrigues(R_cw)
        return rvec.ravel(), -R_cw @ self.position

    def to_camera(self, points_world: np.ndarray) -> np.ndarray:
        """``(N, 3)`` world points -> ``(N, 3)`` camera-frame coordinates."""
        pts = np.asarray(points_world, np.float64).reshape(-1, 3)
        return (pts - self.position) @ self.R_world_from_cam


@dataclass(frozen=True, eq=False)
class PoseEstimate:
    """A camera pose recovered from image <-> ground correspondences.

    Attributes:
        pose: the camera pose.
        altitude_agl_m: camera height above the ground below it (DEM at the camera's east/north, else the ground
            plane height, else the median height of the 3-D ground points).
        ground_height_m: that ground height.
        covariance: ``(6, 6)`` over ``[east, north, up, roll, pitch, yaw]`` (m, rad).
        rms_px: RMS reprojection error of the points used (undistorted pixels).
        sigma_px: standard deviation of one residual coordinate, ``sqrt(sum r^2 / (2N - 6))``; scales the covariance.
        residuals_px: ``(M, 2)`` residuals (projected - observed) of the points used.
        used: ``(N,)`` bool mask of the input points used (RANSAC inliers with a known height).
        method: ``"IPPE"`` (planar points) or ``"SQPNP"`` (non-planar), refined by Levenberg-Marquardt.
    """

    pose: CameraPose
    altitude_agl_m: float
    ground_height_m: float
    covariance: np.ndarray
    rms_px: float
    sigma_px: float
    residuals_px: np.ndarray = field(repr=False)
    used: np.ndarray = field(repr=False)
    method: str = "IPPE"

    @property
    def position(self) -> np.ndarray:
        """Camera centre ``(3,)`` ENU in metres."""
        return self.pose.position

    @property
    def yaw_deg(self) -> float:
        """Yaw, degrees clockwise from north."""
        return self.pose.ypr_deg[0]

    @property
    def pitch_deg(self) -> float:
        """Pitch in degrees (0 = nadir)."""
        return self.pose.ypr_deg[1]

    @property
    def roll_deg(self) -> float:
        """Roll in degrees."""
        return self.pose.ypr_deg[2]

    @property
    def std(self) -> np.ndarray:
        """``(6,)`` standard deviations ``[east, north, up (m), roll, pitch, yaw (deg)]``."""
        s = np.sqrt(np.clip(np.diag(self.covariance), 0.0, None))
        return np.concatenate([s[:3], np.degrees(s[3:])])


@dataclass(frozen=True)
class PoseConfig:
    """Settings of :func:`estimate_pose`.

    Attributes:
        min_points: fewest correspondences (>= 4; IPPE needs 4 coplanar points and the covariance 2N - 6 > 0).
        ransac_threshold_px: when set, reject outliers first with ``cv2.solvePnPRansac`` at this reprojection error
            (undistorted pixels); None trusts every correspondence.
        ransac_confidence: RANSAC confidence.
        ransac_iterations: RANSAC iteration cap.
        planar_tolerance_m: points whose RMS distance from their best-fit plane is below this are treated as planar.
        max_condition: give up (ValueError) when ``J^T J`` is worse conditioned than this (degenerate geometry).
    """

    min_points: int = 6
    ransac_threshold_px: float | None = None
    ransac_confidence: float = 0.999
    ransac_iterations: int = 1000
    planar_tolerance_m: float = 1e-6
    max_condition: float = 1e14

    def __post_init__(self) -> None:
        if self.min_points < 4:
            raise ValueError(f"min_points must be >= 4, got {self.min_points}")
        if self.ransac_threshold_px is not None and not self.ransac_threshold_px > 0:
            raise ValueError(f"ransac_threshold_px must be > 0 or None, got {self.ransac_threshold_px}")
        if not 0 < self.ransac_confidence < 1:
            raise ValueError(f"ransac_confidence must be in (0, 1), got {self.ransac_confidence}")
        if self.ransac_iterations < 1 or self.planar_tolerance_m < 0 or self.max_condition <= 1:
            raise ValueError("ransac_iterations must be >= 1, planar_tolerance_m >= 0 and max_condition > 1")


def ground_points_3d(
    ground_points: np.ndarray, dem: DemSampler | None = None, ground_height: float = 0.0
) -> np.ndarray:
    """``(N, 3)`` ENU ground points: 3-D input as is, 2-D ``(east, north)`` get heights from ``dem``/``ground_height``.

    Raises:
        ValueError: on a bad shape, or 3-D points together with a DEM (ambiguous heights).
    """
    pts = np.asarray(ground_points, np.float64)
    if pts.ndim != 2 or pts.shape[1] not in (2, 3):
        raise ValueError(f"ground points must be (N, 2) east/north or (N, 3) east/north/up, got shape {pts.shape}")
    if pts.shape[1] == 3:
        if dem is not None:
            raise ValueError("ground points already have heights (N, 3); give (N, 2) points to use the DEM")
        return pts.copy()
    if dem is None:
        z = np.full(len(pts), float(ground_height))
    else:
        z = np.asarray(dem(pts[:, 0].copy(), pts[:, 1].copy()), np.float64).reshape(-1)
        if z.shape != (len(pts),):
            raise ValueError(f"DEM sampler returned shape {z.shape} for {len(pts)} points")
    return np.column_stack([pts, z])


def estimate_pose(
    image_points: np.ndarray,
    ground_points: np.ndarray,
    camera: CameraInfo,
    *,
    dem: DemSampler | None = None,
    ground_height: float = 0.0,
    config: PoseConfig | None = None,
) -> PoseEstimate:
    """Full 6-DoF camera pose from image <-> ground correspondences.

    Image points are undistorted with ``camera``; planar ground (flat plane, or 3-D points on one plane) is solved
    with ``SOLVEPNP_IPPE`` (both planar solutions are refined by Levenberg-Marquardt and the one with the lower error
    and all points in front of the camera wins), non-planar ground (DEM heights) with ``SOLVEPNP_SQPNP`` + LM.
    Points whose DEM height is NaN are left out (see ``PoseEstimate.used``).

    Args:
        image_points: ``(N, 2)`` pixels in the distorted image described by ``camera``.
        ground_points: ``(N, 2)`` ENU east/north (heights from ``dem`` or ``ground_height``) or ``(N, 3)`` ENU.
        camera: intrinsics at the image's size.
        dem: optional height sampler for 2-D ground points.
        ground_height: height of the flat ground plane when neither 3-D points nor a DEM are given.
        config: settings.

    Returns:
        The pose estimate (see :class:`PoseEstimate`).

    Raises:
        ValueError: on mismatched shapes, too few usable points, or degenerate geometry.
    """
    cfg = config or PoseConfig()
    img = np.asarray(image_points, np.float64)
    if img.ndim != 2 or img.shape[1] != 2:
        raise ValueError(f"image points must be (N, 2), got shape {img.shape}")
    world = ground_points_3d(ground_points, dem, ground_height)
    if len(world) != len(img):
        raise ValueError(f"{len(img)} image points but {len(world)} ground points")
    used = np.all(np.isfinite(world), axis=1) & np.all(np.isfinite(img), axis=1)
    if (~used).any():
        logger.info("pose: %d of %d points have no height or coordinates; left out", int((~used).sum()), len(used))
    if used.sum() < cfg.min_points:
        raise ValueError(f"pose needs at least {cfg.min_points} usable correspondences, got {int(used.sum())}")
    K = camera.K
    ideal = undistort_pixels(img, camera)
    origin = world[used].mean(axis=0)
    obj = world - origin  # conditioning: solve in a frame centred on the points
    if cfg.ransac_threshold_px is not None:
        idx = np.flatnonzero(used)
        ok, _r, _t, inl = cv2.solvePnPRansac(
            obj[idx],
            ideal[idx],
            K,
            None,
            iterationsCount=cfg.ransac_iterations,
            reprojectionError=cfg.ransac_threshold_px,
            confidence=cfg.ransac_confidence,
            flags=cv2.SOLVEPNP_AP3P,
        )
        if not ok or inl is None or len(inl) < cfg.min_points:
            raise ValueError(
                f"RANSAC found {0 if inl is None else len(inl)} inliers of {len(idx)} (need {cfg.min_points})"
            )
        mask = np.zeros(len(used), bool)
        mask[idx[inl.ravel()]] = True
        used = mask
    o, q = obj[used], ideal[used]
    spread = np.linalg.svd(o - o.mean(axis=0), compute_uv=False)
    if spread[1] <= 1e-9 * max(spread[0], 1e-300):
        raise ValueError(f"the {len(o)} ground points are collinear (or identical): the pose is undetermined")
    planar = _is_planar(o, cfg.planar_tolerance_m)
    method = "IPPE" if planar else "SQPNP"
    rvec, tvec = _solve_pnp(o, q, K, planar)
    pose_c = CameraPose.from_rvec_tvec(rvec, tvec)
    pose = CameraPose(pose_c.R_world_from_cam, pose_c.position + origin)
    proj = _project_ideal(world[used], pose, K)
    residuals = proj - ideal[used]
    n = len(residuals)
    dof = 2 * n - 6
    sigma2 = float(np.sum(residuals**2) / dof)
    cov = _pose_covariance(world[used], pose, K, sigma2, cfg.max_condition)
    if dem is not None:
        ground = float(np.asarray(dem(pose.position[:1].copy(), pose.position[1:2].copy()), np.float64).ravel()[0])
        if not np.isfinite(ground):
            raise ValueError(
                f"DEM has no height below the camera at east={pose.position[0]:.2f} north={pose.position[1]:.2f}"
            )
    elif np.asarray(ground_points).shape[1] == 2:
        ground = float(ground_height)
    else:
        ground = float(np.median(world[used, 2]))
    return PoseEstimate(
        pose=pose,
        altitude_agl_m=float(pose.position[2] - ground),
        ground_height_m=ground,
        covariance=cov,
        rms_px=float(np.sqrt(np.mean(np.sum(residuals**2, axis=1)))),
        sigma_px=float(np.sqrt(sigma2)),
        residuals_px=residuals,
        used=used,
        method=method,
    )


def _is_planar(points: np.ndarray, tolerance_m: float) -> bool:
    """True when ``(N, 3)`` centred points lie on one plane within ``tolerance_m`` RMS."""
    s = np.linalg.svd(points - points.mean(axis=0), compute_uv=False)
    return bool(s[-1] / np.sqrt(len(points)) <= tolerance_m)


def _solve_pnp(obj: np.ndarray, img: np.ndarray, K: np.ndarray, planar: bool) -> tuple[np.ndarray, np.ndarray]:
    """World -> camera ``rvec, tvec`` for ideal (undistorted) pixels, best candidate after LM refinement."""
    flag = cv2.SOLVEPNP_IPPE if planar else cv2.SOLVEPNP_SQPNP
    try:
        n_sol, rvecs, tvecs, _errs = cv2.solvePnPGeneric(obj, img, K, None, flags=flag)
    except cv2.error as exc:
        raise ValueError(f"solvePnP ({'IPPE' if planar else 'SQPNP'}) failed for {len(obj)} points: {exc}") from exc
    if n_sol == 0:
        raise ValueError(f"solvePnP ({'IPPE' if planar else 'SQPNP'}) found no pose for {len(obj)} points")
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for rvec0, tvec0 in zip(rvecs, tvecs, strict=True):
        rvec, tvec = cv2.solvePnPRefineLM(obj, img, K, None, rvec0.copy(), tvec0.copy())
        if not (np.all(np.isfinite(rvec)) and np.all(np.isfinite(tvec))):
            continue
        pose = CameraPose.from_rvec_tvec(rvec, tvec)
        if np.any(pose.to_camera(obj)[:, 2] <= 0):
            continue  # the mirror solution puts points behind the camera
        err = float(np.sum((_project_ideal(obj, pose, K) - img) ** 2))
        if best is None or err < best[0]:
            best = (err, rvec, tvec)
    if best is None:
        raise ValueError("no PnP solution has every ground point in front of the camera")
    return best[1].ravel(), best[2].ravel()


def _project_ideal(points_world: np.ndarray, pose: CameraPose, K: np.ndarray) -> np.ndarray:
    """Distortion-free pinhole projection ``(N, 3)`` -> ``(N, 2)``."""
    pc = pose.to_camera(points_world)
    uv = pc[:, :2] / pc[:, 2:3]
    return uv @ K[:2, :2].T + K[:2, 2]


def _pose_from_params(x: np.ndarray) -> CameraPose:
    """``[east, north, up, roll, pitch, yaw]`` (m, rad) -> pose."""
    return CameraPose.from_ypr(x[:3], *np.degrees([x[5], x[4], x[3]]))


def _pose_covariance(
    world: np.ndarray, pose: CameraPose, K: np.ndarray, sigma2: float, max_condition: float
) -> np.ndarray:
    """Gauss-Newton covariance ``sigma2 (J^T J)^-1`` over ``[east, north, up, roll, pitch, yaw]`` (m, rad)."""
    yaw, pitch, roll = np.radians(pose.ypr_deg)
    x0 = np.array([*pose.position, roll, pitch, yaw])
    depth = float(np.median(pose.to_camera(world)[:, 2]))
    steps = np.array([1e-6 * max(depth, 1.0)] * 3 + [1e-7] * 3)
    J = np.empty((2 * len(world), 6))
    for k in range(6):
        dx = np.zeros(6)
        dx[k] = steps[k]
        plus = _project_ideal(world, _pose_from_params(x0 + dx), K)
        minus = _project_ideal(world, _pose_from_params(x0 - dx), K)
        J[:, k] = ((plus - minus) / (2 * steps[k])).ravel()
    JtJ = J.T @ J
    cond = np.linalg.cond(JtJ)
    if not np.isfinite(cond) or cond > max_condition:
        raise ValueError(f"degenerate geometry: J^T J condition number {cond:.3g} (points nearly collinear?)")
    return sigma2 * np.linalg.inv(JtJ)


# ------------------------------------------------------------------------------------------- projections
def undistort_pixels(pixels: np.ndarray, camera: CameraInfo) -> np.ndarray:
    """``(N, 2)`` distorted pixels -> ``(N, 2)`` ideal pixels of a distortion-free camera with the same ``K``."""
    pts = np.asarray(pixels, np.float64).reshape(-1, 1, 2)
    if len(pts) == 0:
        return np.zeros((0, 2))
    if camera.is_fisheye:
        out = cv2.fisheye.undistortPoints(pts, camera.K, camera.D, P=camera.K)
    else:
        crit = (cv2.TERM_CRITERIA_COUNT + cv2.TERM_CRITERIA_EPS, 50, 1e-10)
        out = cv2.undistortPointsIter(pts, camera.K, camera.D, None, camera.K, crit)
    return out.reshape(-1, 2)


def pixels_to_rays(pixels: np.ndarray, camera: CameraInfo) -> np.ndarray:
    """``(N, 2)`` distorted pixels -> ``(N, 3)`` unit rays in the camera frame."""
    ideal = undistort_pixels(pixels, camera)
    xy = (ideal - camera.K[:2, 2]) @ np.linalg.inv(camera.K[:2, :2]).T
    rays = np.column_stack([xy, np.ones(len(xy))])
    return rays / np.linalg.norm(rays, axis=1, keepdims=True)


def project_to_image(points_world: np.ndarray, pose: CameraPose, camera: CameraInfo) -> np.ndarray:
    """``(N, 3)`` ENU points -> ``(N, 2)`` distorted pixels; NaN for points at or behind the camera plane."""
    pts = np.asarray(points_world, np.float64).reshape(-1, 3)
    rvec, tvec = pose.rvec_tvec
    if camera.is_fisheye:
        out, _ = cv2.fisheye.projectPoints(pts.reshape(-1, 1, 3), rvec, tvec, camera.K, camera.D)
    else:
        out, _ = cv2.projectPoints(pts, rvec, tvec, camera.K, camera.D)
    out = out.reshape(-1, 2).astype(np.float64)
    out[pose.to_camera(pts)[:, 2] <= 0] = np.nan
    return out


def image_to_ground(
    pixels: np.ndarray,
    pose: CameraPose,
    camera: CameraInfo,
    *,
    ground_height: float = 0.0,
    dem: DemSampler | None = None,
    max_iterations: int = 30,
    tolerance_m: float = 1e-6,
) -> np.ndarray:
    """Intersect the rays of ``(N, 2)`` distorted pixels with the ground; ``(N, 3)`` ENU points.

    Without ``dem`` the ground is the plane ``up = ground_height``. With ``dem`` the intersection is found by
    fixed-point iteration (intersect with the plane at the current height, sample the DEM there, repeat), which
    converges when the terrain slope seen along the ray is below the ray's elevation (any near-nadir view over
    ordinary terrain).
    Rays that point above the horizon, or do not converge, give NaN.
    """
    rays_w = pixels_to_rays(pixels, camera) @ pose.R_world_from_cam.T
    C = pose.position
    h = np.full(len(rays_w), float(ground_height))
    down = rays_w[:, 2] < -1e-12
    out = np.full((len(rays_w), 3), np.nan)
    if not down.any():
        return out
    idx = np.flatnonzero(down)
    if dem is None:
        s = (h[idx] - C[2]) / rays_w[idx, 2]
        hit = s > 0  # the plane is below the camera
        out[idx[hit]] = C + s[hit, None] * rays_w[idx[hit]]
        return out
    r = rays_w[idx]
    z = np.asarray(dem(np.full(len(idx), C[0]), np.full(len(idx), C[1])), np.float64).reshape(-1)
    converged = np.zeros(len(idx), bool)
    p = np.full((len(idx), 3), np.nan)
    for _ in range(max_iterations):
        s = (z - C[2]) / r[:, 2]
        p = C + s[:, None] * r
        z_new = np.asarray(dem(p[:, 0].copy(), p[:, 1].copy()), np.float64).reshape(-1)
        converged = np.abs(z_new - z) < tolerance_m
        z = z_new
        if np.all(converged | ~np.isfinite(z)):
            break
    p[~converged | (s <= 0)] = np.nan  # converged points lie on their ray, within tolerance_m of the DEM height
    out[idx] = p
    return out


# ------------------------------------------------------------------------------------- GSD and undistortion
def ground_sampling_distance(camera: CameraInfo, altitude_m: float) -> tuple[float, float]:
    """Nadir ground sampling distance ``(metres per pixel along x, along y)`` at the principal point: ``h / f``."""
    if not altitude_m > 0:
        raise ValueError(f"altitude must be > 0 m, got {altitude_m}")
    return altitude_m / camera.fx, altitude_m / camera.fy


def gsd_at_pixels(
    pixels: np.ndarray,
    pose: CameraPose,
    camera: CameraInfo,
    *,
    ground_height: float = 0.0,
    dem: DemSampler | None = None,
) -> np.ndarray:
    """Ground distance covered by one pixel step along x and along y at ``(N, 2)`` pixels; ``(N, 2)`` metres.

    Uses :func:`image_to_ground` at ``p - 0.5`` and ``p + 0.5`` per axis, so it accounts for tilt, terrain and lens
    distortion. NaN where a ray misses the ground.
    """
    p = np.asarray(pixels, np.float64).reshape(-1, 2)
    out = np.empty((len(p), 2))
    for axis in (0, 1):
        d = np.zeros(2)
        d[axis] = 0.5
        a = image_to_ground(p - d, pose, camera, ground_height=ground_height, dem=dem)
        b = image_to_ground(p + d, pose, camera, ground_height=ground_height, dem=dem)
        out[:, axis] = np.linalg.norm(b - a, axis=1)
    return out


@dataclass(frozen=True, eq=False)
class UndistortMaps:
    """Remap tables from the distorted image to the rectified one (read-only, shared by the cache).

    Attributes:
        map1: first ``cv2.remap`` map (``(H, W, 2)`` int16 for CV_16SC2, ``(H, W)`` float32 for CV_32FC1).
        map2: second map (``(H, W)`` uint16 or float32).
        rectified: intrinsics of the rectified image (``K = P[:3, :3]``, no distortion).
    """

    map1: np.ndarray
    map2: np.ndarray
    rectified: CameraInfo


def undistortion_maps(
    camera: CameraInfo, width: int | None = None, height: int | None = None, map_type: int = cv2.CV_16SC2
) -> UndistortMaps:
    """Cached undistortion maps for ``camera`` at ``width x height`` (default: the camera's size).

    A different size scales the intrinsics first (:meth:`CameraInfo.scaled`, uniform resize only). The rectified
    image uses ``P[:3, :3]`` and ``R`` (ROS image_proc semantics). Results are cached per (camera, size, map type).
    """
    w = camera.width if width is None else int(width)
    h = camera.height if height is None else int(height)
    return _cached_maps(camera, w, h, int(map_type))


@functools.lru_cache(maxsize=16)
def _cached_maps(camera: CameraInfo, width: int, height: int, map_type: int) -> UndistortMaps:
    cam = camera if camera.size == (width, height) else camera.scaled(width, height)
    new_K = cam.P[:3, :3]
    if cam.is_fisheye:
        m1, m2 = cv2.fisheye.initUndistortRectifyMap(cam.K, cam.D, cam.R, new_K, (width, height), map_type)
    else:
        m1, m2 = cv2.initUndistortRectifyMap(cam.K, cam.D, cam.R, new_K, (width, height), map_type)
    m1.flags.writeable = False
    m2.flags.writeable = False
    rectified = CameraInfo(width, height, new_K, np.zeros(5), "plumb_bob", None, cam.P, cam.camera_name)
    logger.debug("built undistortion maps for %s at %dx%d", cam.camera_name, width, height)
    return UndistortMaps(m1, m2, rectified)


def undistort_image(image: np.ndarray, camera: CameraInfo, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Rectify an ``(H, W[, C])`` image with cached maps (see :func:`undistortion_maps`)."""
    h, w = image.shape[:2]
    maps = undistortion_maps(camera, w, h)
    return cv2.remap(image, maps.map1, maps.map2, interpolation, borderMode=cv2.BORDER_CONSTANT)
