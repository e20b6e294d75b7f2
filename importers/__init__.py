"""Import georeferenced rasters into Label Studio as display tiles with a tile registry."""
