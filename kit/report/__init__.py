"""report.py's figures and tables, one module per figure family."""
