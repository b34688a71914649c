"""Corpora that train.py can read besides the bundled text: planted.py, a synthetic world with known groups."""
