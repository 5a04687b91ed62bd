"""Tables, plots and markdown reports built from tidy result rows (the only place rows are pivoted)."""
