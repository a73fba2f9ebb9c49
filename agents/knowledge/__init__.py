"""Context and memory: retrieval over a tenant's documents, conversation, scratchpad and
long-term memory with a freeze switch. A nested app (label ``knowledge``)."""
