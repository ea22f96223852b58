"""Measuring models: COCO keypoint evaluation (coco), speed per stage and batch size (speed), and how far a
backend or precision is from fp32 (agreement)."""
