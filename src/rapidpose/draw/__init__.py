"""Drawing: skeletons, boxes, labels and heatmaps planned once, drawn with cv2 (cpu) or by a Triton kernel (gpu)."""
