"""The supervisor and its request and stream actors."""
