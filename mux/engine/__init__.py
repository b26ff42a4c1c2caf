"""The engine: runs a plan's attempts against providers through one transport seam."""
