"""Measuring models: COCO keypoint evaluation (coco) and speed per stage and batch size (speed)."""
