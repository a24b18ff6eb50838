"""Report writers: CSV, HTML, paper tables and baseline comparison.

Generated run folders (``reports/<run-id>/``) are written beside this package and ignored by git.
"""
