"""Generator families and the shared mechanisms they are built from (contract, KV cache)."""
