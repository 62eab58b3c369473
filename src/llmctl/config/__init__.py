"""The config pipeline: read YAML with marks, prepare, validate, locate errors; the cache."""
