"""`make demo`: the worker on the local stack with sample data, checked end to end.

1. Re-creates the demo's topics and streams (config/demo.yaml), so every run starts clean.
2. Starts the worker (`python -m worker run`) and waits until /readyz answers 200.
3. Feeds ~3,000 profiles and their segment qualifications, attribute and identity
   changes, deletions and a few bad events, computing meanwhile what the worker must
   send (CONTRACT sections 2 and 3).
4. Waits until the worker has handled every event (/metrics) and measures events/s.
5. Reads both streams and the dead-letter topic back and compares them with the
   expectation, record by record.
6. Stops the worker and deletes the demo's topics and streams, also on failure or Ctrl-C.

The feed comes in three waves (profiles, then qualifications, then profile changes),
each one handled completely before the next is produced: the two input topics are not
ordered against each other, so an attribute change racing a segment entry of the same
profile could be exported or not. Inside a wave, one profile's events share a
partition and keep their order, so the expectation is certain.

Environment: KAFKA_BOOTSTRAP (127.0.0.1:9092), KINESIS_ENDPOINT (http://127.0.0.1:4567).
Exit code 0 when the streams and the dead-letter topic hold exactly what was expected.

Run from the repository root as `python -m deploy.local.demo` (`make demo` does).
The modules, in the order of a run:

- `config`: settings, constants and the configuration file;
- `admin`: the demo's Kafka topics and Kinesis streams;
- `process`: the worker process, its log and readiness;
- `feed`: the sample events, and what they must cause by the reference model
  (the `reference` package at the repository root, also used by the unit tests);
- `waves`: producing a wave and waiting until the worker has handled it;
- `observe`: the worker's metrics, the streams and the dead letters read back;
- `report`: the comparison of what arrived with what was expected;
- `__main__`: the whole run, and its clean-up.
"""
