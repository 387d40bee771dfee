"""Shared test set-up: this directory is on sys.path, so every test can import ``hostile``."""
