"""Datasets (helsinki, csv, hf), the demo corpus, data checks, the decoded-image cache and transforms."""
