import { Histogram } from "prom-client";
import { registry } from "../../util/metrics-registry.ts";

/** Recorded by the ClickHouse sink wherever it runs (a pipeline worker's values are merged into /metrics). */
export const sinkBatchRows = new Histogram({
  name: "tributary_sink_batch_rows",
  help: "Rows per ClickHouse insert",
  labelNames: ["table"] as const,
  buckets: [1, 10, 100, 1000, 5000, 10_000, 25_000, 50_000, 100_000],
  registers: [registry],
});

export const sinkFlushDuration = new Histogram({
  name: "tributary_sink_flush_duration_seconds",
  help: "Time to insert one batch into ClickHouse, retries included",
  labelNames: ["table"] as const,
  buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
  registers: [registry],
});
