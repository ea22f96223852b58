"""Photo collections at any scale: where a run's photos come from, and its results written as each one finishes.

- `sources.py`: the images of a run, in order: files, folders and globs (`io.expand_paths`) and
  listing files (one path per line).
- `records.py`: the outputs, written as each image finishes: a streamed JSON document, JSON Lines (one
  image per line, flushed), a streamed COCO results array; reading a JSON Lines file back to resume an
  interrupted run.
- `decode.py`: decoding off the critical path: a pool of worker processes (file bytes in, RGB arrays
  out, in input order, EXIF orientation applied) and nvImageCodec's JPEG decoding on the GPU.
"""
