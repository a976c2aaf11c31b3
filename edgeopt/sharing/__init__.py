"""The weight-sharing road: codebook clustering, cross-layer sharing and low-rank factors, with a report."""
