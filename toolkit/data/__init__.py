"""Datasets: ImageFolder classification (Imagenette by default), NIfTI segmentation, synthetic."""
