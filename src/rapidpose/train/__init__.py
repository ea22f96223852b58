"""Training ViTPose with the official recipe: data, targets, augmentation, the trainer.

- `data.py`: a COCO-format keypoint file -> people to train on, the keypoint set read from its category.
- `targets.py`: UDP Gaussian heatmap targets and the weighted MSE loss.
- `augment.py`: flip, half-body, scale and rotation as the official pipeline draws them; the UDP warp.
- `recipe.py`: AdamW with layer-wise lr decay, the warm-up and step schedule, per model size.
- `trainer.py`: `train(TrainOptions(...))`, what `rapidpose train` runs.
"""
from rapidpose.train.trainer import TrainOptions, TrainResult, train

__all__ = ["TrainOptions", "TrainResult", "train"]
