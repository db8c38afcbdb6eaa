"""The WAL archive: one layout for every way WAL reaches storage (push, stream), fetch, and the chain check."""
