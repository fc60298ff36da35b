"""Events in, rollups out: the Bytewax dataflow from Redis Streams to TimescaleDB.

Owns the stream source, the windowed aggregation, the rollup sink and the dead-letter stream.
Every Bytewax import of the project lives in this package, so the engine stays replaceable.
"""
