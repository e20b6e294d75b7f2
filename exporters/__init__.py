"""Labels and predictions back to GIS: GeoPackage layers, Cloud-Optimized GeoTIFFs and QGIS styles."""
