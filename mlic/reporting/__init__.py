"""Reading runs: `mlic analyze` (figures and error analysis), `mlic report` (one HTML page), `mlic tables` (the
report's tables, run and rendered)."""
