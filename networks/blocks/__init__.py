"""Shared building blocks; a block moves here the moment a second network needs it."""
