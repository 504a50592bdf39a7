"""Developer tools (schemas, benchmark, demo). Never imported by the functions or the layer."""
