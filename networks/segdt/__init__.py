"""The SegDT family: diffusion-transformer segmentation with rectified flow in a latent space."""
