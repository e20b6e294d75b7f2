"""Active learning: the segmentation model, its versions and inference on tiles."""
