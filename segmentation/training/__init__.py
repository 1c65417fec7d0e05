"""Training: build a run from a config (build.py), the Trainer loop and its hooks."""
