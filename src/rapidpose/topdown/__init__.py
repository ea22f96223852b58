"""Boxes to crops to keypoints: UDP crops, DARK-UDP decoding, the PoseEstimator, and their torch/GPU versions."""
