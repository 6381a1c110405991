"""Runtime: load an artifact folder and generate."""
