"""Segmentation family: 2-D U-Net, NIfTI volumes (MSD layout), 3-D Dice, task adapter."""
