"""Scale-out: pose estimation spread over many machines.

- `ray_data.py`: Ray Data. `PosePredictor`, the callable class for `Dataset.map_batches` (one model per
  actor, results as Arrow columns); the dataset of a list of photos, the cluster connection and the
  worker plan that `rapidpose predict --ray` uses. Ray is imported only by the functions that need it
  (extra `ray`).
- `ray_video.py`: videos over a Ray cluster for `rapidpose video --ray`: a worker (actor) per GPU, each
  loading the model once and doing one video after another with video.files.process_file, the outputs
  written where the driver says (storage every node sees).
"""
