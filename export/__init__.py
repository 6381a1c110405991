"""Capture (torch.export) and backend compilation of the JetSpec graphs."""
