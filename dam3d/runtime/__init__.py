"""The chunk-job runtime: what is pending (plan), running a chunk with each asset's failure alone (chunk), atomic writes, job threads and GPUs, batched inference, the backend registries."""
