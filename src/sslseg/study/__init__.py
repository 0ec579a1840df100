"""Studies: grid of pretrainings × label fractions × seeds, results store, analysis and report."""
