"""Evaluation presets (YAML) shipped as package data; copy one to make your own."""
