"""Point-cloud data: KiCad (VRML) and pybullet meshes, ModelNet40 / ScanObjectNN / ShapeNet-55 readers,
synthetic primitives, transforms. ``peftkit.data.points.dataset`` registers the datasets."""
