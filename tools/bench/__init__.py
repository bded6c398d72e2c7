"""`bitnet bench`: tokens/s, memory and energy of GGUF models, measured with llama-bench.

One `llama-bench` process runs per (model, thread count), so that its peak resident memory
(`ru_maxrss` of the reaped child) belongs to that model alone. It runs with `-o jsonl
--progress`: every "prompt run k/R" / "generation run k/R" line on its stderr and every result
line on its stdout is an event at which we read the energy counters (RAPL) and the child's CPU
time (/proc). The intervals that start at a timed run are the timed part of a test, so each
test gets the energy (or CPU time, for the estimate) of its own timed repetitions: no model
loading, warm-up or depth fill. Tokens/s statistics come from llama-bench's own per-repetition
samples (`samples_ts`).

One module per job:

* `options`     — what to measure (BenchOptions, the option parsers) and each model's facts;
* `llama_bench` — its command line, its output and the events of one process;
* `stats`       — tokens/s statistics, per-test timed windows, energy and the bandwidth bound;
* `run`         — the benchmark itself: run_bench() returns the report;
* `compare`     — `--compare`: one checkpoint converted to several types;
* `report`      — the report's JSON Schema (report.schema.json, documented in docs/bench.md)
                  and its views: table, CSV and plot.

Energy: measured (RAPL) or estimated, see `energy.py`; memory-bandwidth bound: `bandwidth.py`.
Library code: nothing here prints. This package imports nothing itself, so that a command can
load only the modules it needs.
"""
