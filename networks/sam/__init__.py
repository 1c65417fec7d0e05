"""The SAM family: prompted segmenters on frozen SAM / SAM 2 image encoders, with adapters."""
