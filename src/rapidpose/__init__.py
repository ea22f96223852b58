"""rapidpose: fast, exact 2D human pose estimation with ViTPose."""
from rapidpose.errors import CheckpointError, DownloadError, InputError, MissingDependencyError, RapidPoseError
from rapidpose.results import Poses
from rapidpose.skeletons import COCO, Skeleton, get_skeleton

__version__ = "0.1.0"


def __getattr__(name):
    # torch-backed pieces load lazily so `import rapidpose` needs only the lean core
    if name == "PoseEstimator":
        from rapidpose.topdown.estimator import PoseEstimator
        return PoseEstimator
    if name == "load_model":
        from rapidpose.model.weights import load_model
        return load_model
    if name == "load_detector":
        from rapidpose.detect import load_detector
        return load_detector
    if name == "predict_photos":
        from rapidpose.photos.pipeline import predict_photos
        return predict_photos
    raise AttributeError(f"module 'rapidpose' has no attribute '{name}'")


__all__ = ["PoseEstimator", "Poses", "predict_photos", "load_model", "load_detector", "Skeleton", "COCO", "get_skeleton",
           "RapidPoseError", "InputError", "CheckpointError", "DownloadError", "MissingDependencyError"]
