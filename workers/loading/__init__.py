"""From a model id to a warm pipeline on this worker's device: device and dtype, sources and digests, single
files, the pipeline cache."""
