"""Data: the formats (`formats/`, one module each, and their registry), the shared dataset types, loading by
config (`registry`), data checks, the demo corpus and mosaics, the decoded-image cache, transforms and the
training pipeline."""
