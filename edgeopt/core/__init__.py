"""What every road uses: model I/O, errors, pass base, runtime, graph edits, inspection, scoring, target interface."""
