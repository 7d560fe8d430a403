"""Tools built on the engine: efficiency benchmarks, sweeps and reports. One module per tool."""
