"""
Looking at finished runs, outside the method: pictures and their text fallbacks (plots.py), and the
inspection of trained checkpoints and of several seeds' runs (report.py). Nothing in the method's files
imports this folder; it imports them.
"""
