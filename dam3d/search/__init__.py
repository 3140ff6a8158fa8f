"""Searching an index: the index itself, the query path (cutout + embed of a photo) and the web app."""
