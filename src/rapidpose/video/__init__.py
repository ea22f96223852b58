"""Video: frame sources, GPU decoding, tracking, smoothing, the frame pipeline, the mp4 writer and per-frame records."""
