"""
Alternatives to steps of the method, kept for comparison and outside it: nothing in the method's files
imports this folder.
"""
