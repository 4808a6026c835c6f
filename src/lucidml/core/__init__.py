"""Shared machinery used by every system; knows nothing about any single system."""
